"""Files geoguide derives once from installed files and keeps in the user's cache.

A cold ``geoguide locate`` must answer in about two seconds (issue 24), but some inputs are slow to
read in the form a package ships them: GeoNames' cities as a 20 MB JSON file (0.7 s to parse, every
process), EfficientNet-Lite0 as a torch checkpoint (1.5-4.5 s to import torch). Each is converted
once into a form that loads in milliseconds (a compact ``.npz``, an ONNX graph) and kept under
``$XDG_CACHE_HOME/geoguide/derived/``, named by a hash of the sources' paths, sizes and mtimes and
of the converter's version, so an upgraded package or a new converter makes a new file rather than
reading a stale one (the stale one is deleted). Writes are atomic: two processes deriving the same file at once both finish,
and the second rename wins with identical bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/geoguide`` (``~/.cache/geoguide``): the response, OCR and derived caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geoguide"


def derived_path(kind: str, sources: Sequence[Path], version: str, suffix: str) -> Path:
    """Where the file derived from ``sources`` by converter ``kind`` at ``version`` is kept."""
    h = hashlib.sha256(f"{kind}\0{version}".encode())
    for source in sources:
        st = source.stat()
        h.update(f"\0{source.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return cache_root() / "derived" / f"{kind}-{h.hexdigest()[:16]}{suffix}"


def derived(kind: str, sources: Sequence[Path], version: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """The cached file derived from ``sources``, made by ``make(temporary_path)`` when missing.

    Raises OSError when the cache cannot be written (read-only home, full disk); callers fall back
    to reading the sources directly, slower but the same.
    """
    path = derived_path(kind, sources, version, suffix)
    if not path.is_file():
        from geoguide.core.atomic import atomic_path  # numpy: not for `--help`, which reaches cache_root

        with atomic_path(path, suffix=suffix) as tmp:
            make(tmp)
        for stale in path.parent.glob(f"{kind}-*{suffix}"):  # made from older sources: never read again
            if stale != path and len(stale.name) == len(path.name):
                stale.unlink(missing_ok=True)
    return path
