"""A full disk says so: on a small tmpfs the test mounts, index work that cannot fit is refused
before it starts (one line: what, the space needed and free), a write that runs out of room is
a ``DiskFull`` instead of a SIGBUS (a memory-mapped write into missing space killed the process
with exit 135 and no message, leaving a temporary file), nothing temporary is left, and the same
command completes once there is room."""

from __future__ import annotations

import csv
import subprocess

import numpy as np
import pytest

from geoguide.app.cli import main
from geoguide.core.atomic import DiskFull
from geoguide.indices.writer import save_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (needs root and mount rights: skipped, saying so, where there are none)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _leftovers(folder) -> list[str]:
    return [str(p) for p in folder.rglob("*.tmp")]


def test_index_work_that_cannot_fit_is_refused_and_completes_once_there_is_room(small_disk, tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, dim = 1500, 512  # fp16: 1.5 MB of vectors, twice that with the scratch copy: more than 3 MB
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON"])
        for i in range(n):
            w.writerow([f"p{i}.jpg", f"a{i % 30}", f"{rng.uniform(35, 60):.5f}", f"{rng.uniform(-10, 30):.5f}"])
    np.save(tmp_path / "v.npy", rng.normal(size=(n, dim)).astype(np.float32))
    argv = ["index", "import", str(tmp_path / "v.npy"), "--labels", str(labels), "--out", str(small_disk / "idx"),
            "--submaps", "country"]
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert "no space for importing 1500 vectors" in said and "MB are free" in said
    assert not _leftovers(small_disk) and not (small_disk / "idx" / "manifest.json").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    assert main(argv) == 0
    assert main(["index", "verify", str(small_disk / "idx")]) == 0 and not _leftovers(small_disk)


def test_a_write_that_runs_out_of_room_is_an_error_not_a_sigbus(small_disk):
    target = small_disk / "big.npy"
    with pytest.raises(DiskFull, match=r"no space left for .*big\.npy: it needs 4\.2 MB"):
        save_rows(target, 1024, (1024,), np.float32, lambda s, e: np.zeros((e - s, 1024), np.float32))
    assert not target.exists() and not _leftovers(small_disk)
