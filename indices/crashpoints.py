"""Named points in the index writers where a test can stop a real process and kill it.

With ``GEOGUIDE_PAUSE_AT=<name>`` (comma-separated names allowed) in its environment, a process
that reaches ``reached(name)`` (the first time: a calibration stored after an update writes a
manifest again) creates the file named by ``GEOGUIDE_PAUSE_FILE`` (containing the
point's name) and waits while that file exists, so a test can send it SIGKILL at exactly that
moment of a build, add, remove, filter or compact, or delete the file to let it go on
(``tests/unit/test_index_segments.py``). Without the variable it costs one dictionary lookup. Points: ``write:refs``, ``write:vectors`` (a data folder half
written), ``manifest:before`` / ``manifest:after`` (every file but the manifest written / the
manifest swapped, old files not yet deleted), ``stale:partial`` (one stale file deleted of
several), ``filter:evidence`` (``removed.csv`` written, the removal not yet applied).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV_AT = "GEOGUIDE_PAUSE_AT"
ENV_FILE = "GEOGUIDE_PAUSE_FILE"


_paused: set[str] = set()  # each point pauses once per process: the first time is the update's own


def reached(name: str) -> None:
    wanted = os.environ.get(ENV_AT)
    if not wanted or name not in wanted.split(",") or name in _paused:
        return
    _paused.add(name)
    marker = Path(os.environ.get(ENV_FILE) or f".geoguide-paused-{os.getpid()}")
    marker.write_text(name)
    deadline = time.monotonic() + 600
    while marker.exists() and time.monotonic() < deadline:  # the test kills us here, or lets us go on
        time.sleep(0.02)
