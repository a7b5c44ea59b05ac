"""Files geoguide derives once from installed files and keeps in the user's cache.

A cold ``geoguide locate`` must answer in about two seconds (issue 24), but some inputs are slow to
read in the form a package ships them: GeoNames' cities as a 20 MB JSON file (0.7 s to parse, every
process), EfficientNet-Lite0 as a torch checkpoint (1.5-4.5 s to import torch). Each is converted
once into a form that loads in milliseconds (a compact ``.npz``, an ONNX graph) and kept under
``$XDG_CACHE_HOME/geoguide/derived/``, named by a hash of the sources' paths, sizes and mtimes and
of the converter's version, so an upgraded package or a new converter makes a new file rather than
reading a stale one (the stale one is deleted; copies made from other source files are left alone). Writes are atomic: two processes deriving the same file at once both finish,
and the second rename wins with identical bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/geoguide`` (``~/.cache/geoguide``): the response, OCR and derived caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geoguide"


def derived_path(kind: str, sources: Sequence[Path], version: str, suffix: str) -> Path:
    """Where the file derived from ``sources`` by converter ``kind`` at ``version`` is kept:
    ``KIND-WHERE-WHAT``, WHERE a hash of the sources' paths (another checkpoint, another install
    sharing the cache: another file, left alone), WHAT of their sizes, mtimes and the version."""
    where = hashlib.sha256(kind.encode())
    what = hashlib.sha256(version.encode())
    for source in sources:
        st = source.stat()
        where.update(f"\0{source.resolve()}".encode())
        what.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return cache_root() / "derived" / f"{kind}-{where.hexdigest()[:8]}-{what.hexdigest()[:16]}{suffix}"


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
        # Made from these same source files when they were older (or by an older converter):
        # never read again. Files of other sources (WHERE differs) are another user's.
        same_sources = path.name[: len(kind) + 10]  # "KIND-WHERE-"
        mine = re.compile(rf"{re.escape(same_sources)}[0-9a-f]{{16}}\.")
        for stale in path.parent.glob(f"{same_sources}*"):
            if stale != path and mine.match(stale.name):
                stale.unlink(missing_ok=True)
    return path


_PACK_MAGIC = b"GEOGUIDE-ARRAYS-1\n"
_ALIGN = 64


def save_arrays(path: Path, arrays: dict) -> None:
    """Write named numpy arrays into one file that ``load_arrays`` maps without reading it: a JSON
    header (name -> dtype, shape, offset), then each array's bytes at a 64-byte boundary. Why not
    ``.npz``: reading the border-edge index (28 MB) through zipfile took 0.3 s of a cold locate
    that tests one point against a few hundred of its edges."""
    import json

    import numpy as np

    header: dict[str, list] = {}
    offset = 0
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        offset = -(-offset // _ALIGN) * _ALIGN
        header[name] = [a.dtype.str, list(a.shape), offset]
        offset += a.nbytes
    text = json.dumps(header).encode("utf-8")
    start = -(-(len(_PACK_MAGIC) + 8 + len(text)) // _ALIGN) * _ALIGN
    with open(path, "wb") as f:
        f.write(_PACK_MAGIC + len(text).to_bytes(8, "little") + text)
        for name, array in arrays.items():
            f.seek(start + header[name][2])
            f.write(np.ascontiguousarray(array).tobytes())


def load_arrays(path: Path) -> dict:
    """The arrays ``save_arrays`` wrote, memory-mapped read-only (pages are read when touched).
    Raises ValueError for a file that is not such a pack or is cut short."""
    import json

    import numpy as np

    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(_PACK_MAGIC)) != _PACK_MAGIC:
            raise ValueError(f"{path}: not an array pack")
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    start = -(-(len(_PACK_MAGIC) + 8 + n) // _ALIGN) * _ALIGN
    out = {}
    for name, (dtype, shape, offset) in header.items():
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        if count and start + offset + count * dt.itemsize > size:
            raise ValueError(f"{path}: cut short")
        out[name] = (np.memmap(path, dtype=dt, mode="r", offset=start + offset, shape=tuple(shape))
                     if count else np.zeros(shape, dtype=dt))
    return out
