"""What counts as a full disk, and what a cache does about one (the tmpfs tests are in
tests/integration/test_full_disk.py)."""

from __future__ import annotations

import errno
import logging
import sqlite3

import pytest

from geoguide.core.atomic import DiskFull, is_disk_full, space_error
from geoguide.core.sqlite import unless_disk_full


def test_a_full_disk_is_recognised_in_each_form(tmp_path):
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("no such table: replies"))
    err = space_error(OSError(errno.ENOSPC, "x"), tmp_path / "run" / "predictions.jsonl", 2_400)
    assert isinstance(err, DiskFull) and str(err).startswith(f"no space left for {tmp_path / 'run' / 'predictions.jsonl'}: "
                                                            "it needs 2.4 kB, ")
    # WAL-mode SQLite says "disk I/O error" on a full disk; on a disk with room it is another fault.
    assert space_error(sqlite3.OperationalError("disk I/O error"), tmp_path / "c.sqlite") is None


def test_a_cache_write_on_a_full_disk_is_skipped_and_said_once(tmp_path, caplog):
    path = tmp_path / "cache.sqlite"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with unless_disk_full(path, "response cache"):
                raise sqlite3.OperationalError("database or disk is full")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"no space left for the response cache {path} (") and "MB free" in said[0]
    with pytest.raises(sqlite3.OperationalError, match="no such table"), unless_disk_full(path, "response cache"):
        raise sqlite3.OperationalError("no such table: replies")
