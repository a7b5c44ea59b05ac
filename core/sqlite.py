"""One SQLite file shared by threads and processes: the response cache (``agent/backends/cache.py``)
and the OCR cache (``tools/read_text.py``) open theirs here.

WAL journal (readers never wait for the writer), one connection used under the caller's lock
(``check_same_thread=False``), autocommit, a 30 s busy timeout for the other processes of a pooled
run, and the parent folder made on first use.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def open_shared(path: str | Path, schema: str) -> sqlite3.Connection:
    """Open (creating) ``path`` in WAL mode and run ``schema`` (``CREATE TABLE IF NOT EXISTS ...``
    statements, ``;``-separated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=30.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)
    return db


_warned: set[str] = set()
_warned_lock = threading.Lock()


@contextlib.contextmanager
def unless_disk_full(path: str | Path, what: str) -> Iterator[None]:
    """Around a cache write: a full disk skips the write (said once per file, with the space
    free) instead of failing the run; the cache is an optimisation, the answer is not."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as e:
        from geoguide.core.atomic import free_bytes, space_error

        if space_error(e, path) is None:
            raise
        with _warned_lock:
            first = str(path) not in _warned
            _warned.add(str(path))
        if first:
            log.warning("no space left for the %s %s (%.1f MB free): going on without caching until there is room",
                        what, path, free_bytes(Path(path).parent) / 1e6)
