"""geoguide.core.atomic: what a reader sees during and after a write, and the permissions files get."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from geoguide.core import atomic


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_respect_the_umask(tmp_path: Path, umask_022: None):
    atomic.write_text(tmp_path / "a.txt", "hello")
    atomic.write_json(tmp_path / "sub" / "b.json", {"x": 1})
    atomic.save_npy(tmp_path / "c.npy", np.zeros(3))
    atomic.save_npz(tmp_path / "d.npz", {"z": np.ones(2)})
    for name in ("a.txt", "sub/b.json", "c.npy", "d.npz"):
        assert _mode(tmp_path / name) == 0o644, name  # not mkstemp's 0600


def test_a_stricter_umask_is_respected(tmp_path: Path):
    old = os.umask(0o077)
    try:
        atomic.write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600


def test_replacing_a_file_and_the_umask_is_unchanged(tmp_path: Path, umask_022: None):
    target = tmp_path / "t.txt"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o644
    assert os.umask(0o022) == 0o022  # reading the umask left it as it was


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path):
    target = tmp_path / "t.txt"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_umask_is_read_without_proc_too(monkeypatch: pytest.MonkeyPatch, umask_022: None):
    assert atomic.current_umask() == 0o022
    monkeypatch.setattr(atomic, "_PROC_STATUS", "/nonexistent/status")  # not Linux: the os.umask fallback
    assert atomic.current_umask() == 0o022
    assert os.umask(0o022) == 0o022
