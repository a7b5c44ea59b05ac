"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Every file geoguide writes goes through here: written to a temporary name in the same directory,
flushed and fsynced, then renamed over the target (``os.replace`` is atomic on POSIX), and the
directory fsynced too, so the new name survives a power cut as well as a killed process (and so
does every folder made on the way to it). An index writes its manifest last: once that is
durable, so is every file it names.

``mkstemp`` creates its file 0600 (private, because temp files usually are). An index or a run's
results are meant to be shared like any file the user makes, so before the rename the file gets
``0o666 & ~umask`` (0644 under the usual umask 022), exactly what ``open(path, "w")`` would give.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geoguide.core.errors import GeoguideError

_UMASK_LOCK = threading.Lock()
_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status``; elsewhere ``os.umask`` must set it to read it, so the
    set-and-restore is done under a lock (a file created by another thread in that instant could
    otherwise get the temporary mask).
    """
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "", needed: int = 0) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it replaces ``target``, on error it vanishes.

    A full disk anywhere in it (the folder, the temp file, the caller's writes, the rename) is one
    ``DiskFull`` line naming ``target``, the space it needs (``needed``, else what was written before
    the disk filled) and the space free."""
    target = Path(target)
    tmp_path: Path | None = None
    try:
        made_dirs(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
        tmp_path = Path(tmp)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 -> what open() would have made
        finally:
            os.close(fd)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    except OSError as e:
        written = tmp_path.stat().st_size if tmp_path is not None and tmp_path.exists() else 0
        if (full := space_error(e, target, max(needed, written))) is not None:
            raise full from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (a rename, a new file or folder) durable; a no-op where the OS
    cannot open a directory."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def made_dirs(path: Path) -> None:
    """``mkdir -p``, then fsync the parent of every folder it created."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        fsync_dir(made.parent)


def write_bytes(target: str | Path, data: bytes) -> None:
    """``target`` holds ``data`` whole or is untouched; a full disk is a ``DiskFull`` naming it."""
    with atomic_path(target, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, default=str) + "\n")


def save_npy(target: str | Path, array: np.ndarray) -> None:
    # A file object, not a name: np.save would append ".npy" to the temp name.
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def save_npz(target: str | Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


class DiskFull(GeoguideError, OSError):
    """No room for a file geoguide must write: one line naming the path, the space it needs and
    the space free. Raised before any byte is mapped, so a full disk is an error, never a SIGBUS."""


def free_bytes(path: str | Path) -> int:
    """Free space on the disk that holds ``path`` (or would: its nearest existing folder)."""
    import shutil as _shutil

    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    return _shutil.disk_usage(here).free


def check_room(folder: str | Path, needed: int, what: str) -> None:
    """Refuse work that cannot fit before starting it (``what`` names the work in the message)."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskFull(f"no space for {what} in {folder}: it needs about {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB "
                       f"are free on that disk; free some space (or choose another folder) and run it again")


def disk_full(path: str | Path, needed: int) -> DiskFull:
    free = free_bytes(Path(path).parent)
    need = f"it needs {needed / 1e6:.1f} MB" if needed >= 100_000 else f"it needs {max(needed, 1) / 1e3:.1f} kB"
    return DiskFull(f"no space left for {path}: {need}, {free / 1e6:.1f} MB are free on that disk; free some "
                    f"space and run the same command again (it resumes)")


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` says the disk is full: ENOSPC / EDQUOT from a write, or SQLite's "database or disk is
    full" (an ``sqlite3.OperationalError``, not an OSError, which a CLI would call an internal error)."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return type(exc).__name__ == "OperationalError" and "disk is full" in str(exc).lower()


def space_error(exc: BaseException, path: str | Path, needed: int = 0) -> DiskFull | None:
    """The one-line ``DiskFull`` for ``exc`` when it says the disk holding ``path`` is full, else None.

    SQLite in WAL mode reports a full disk as "disk I/O error" as often as "database or disk is
    full" (measured on a full tmpfs: growing the -shm or -wal file fails first), so an I/O error on
    a disk with less than 1 MB free counts as full too."""
    if isinstance(exc, DiskFull):
        return exc
    if is_disk_full(exc):
        return disk_full(path, needed)
    io_error = type(exc).__name__ == "OperationalError" and "disk i/o error" in str(exc).lower()
    return disk_full(path, needed) if io_error and free_bytes(Path(path).parent) < 1_000_000 else None


def reserve(path: str | Path, nbytes: int, name: str | Path | None = None) -> None:
    """Allocate ``nbytes`` for the file at ``path`` now (``posix_fallocate``): a memory-mapped write
    into space the disk does not have kills the process with SIGBUS (exit 135, no message, the
    temporary file left behind); reserved first, a full disk is a ``DiskFull`` before any write."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(name or path, nbytes) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem that cannot preallocate: write as before
            raise
    finally:
        os.close(fd)
