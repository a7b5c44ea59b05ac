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


def _fill(disk, leave: int) -> None:
    """Take all but ``leave`` bytes of the disk with one file (``filler``, removed to free space)."""
    import shutil

    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_an_eval_on_a_full_disk_stops_with_one_line_keeps_whole_records_and_resumes(
        small_disk, synthetic_refs, synthetic_index, capsys):
    """Each photo's record is appended as it finishes: on a full disk the append is cut back to the
    last whole line and the run stops with one line (path, needed, free); freed, the same command
    runs only the photos not yet recorded."""
    import json

    root, samples = synthetic_refs
    out = small_disk / "run"
    argv = ["eval", "--images", str(root / "images"), "--labels", str(root / "labels.csv"),
            "--index", str(synthetic_index.root), "--vlm", "none", "--out", str(out)]
    _fill(small_disk, 40_000)  # room for the run's own files and a few records, not for 24
    assert main(argv) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"geoguide: error: no space left for {out / 'predictions.jsonl'}: it needs ") \
        and "MB are free on that disk" in said, said
    lines = (out / "predictions.jsonl").read_text().splitlines()
    kept = [json.loads(line)["image_id"] for line in lines]  # every line whole
    assert 0 < len(kept) < len(samples) and not _leftovers(small_disk)
    (small_disk / "filler").unlink()
    assert main(argv) == 0
    done = [json.loads(line)["image_id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(done) == sorted(s.image_id for s in samples) and done[: len(kept)] == kept  # each once


def test_the_web_app_refuses_an_upload_or_a_turn_it_cannot_keep_with_507(small_disk, synthetic_index):
    """A photo that does not fit is 507 with the line, and nothing half-written stays in the
    uploads; a follow-up whose turn cannot be stored is 507 too, never a 200 that loses it."""
    import io

    from fastapi.testclient import TestClient

    from geoguide.agent.backends import make_backend
    from geoguide.agent.config import AgentConfig
    from geoguide.agent.context import AgentContext
    from geoguide.app.server import create_app
    from tests.synthetic import place_image

    photo = io.BytesIO()
    place_image(0, variant=7, size=(640, 480)).save(photo, format="PNG")
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    client = TestClient(create_app(ctx, state_dir=small_disk / "state"), base_url="http://localhost:8000")
    r = client.post("/api/locate", files={"image": ("q.png", photo.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    session = r.headers["X-Geoguide-Session"]
    before = client.get(f"/api/sessions/{session}").json()
    _fill(small_disk, 4_096)
    r = client.post("/api/locate", files={"image": ("q2.png", photo.getvalue(), "image/png")})
    assert r.status_code == 507 and r.json()["detail"].startswith("no space left for ") and "MB are free" in r.json()["detail"]
    assert [p.name for p in (small_disk / "state" / "uploads").iterdir()] == [session]  # the new one is gone
    r = client.post(f"/api/sessions/{session}/messages", json={"text": "why not Spain?"})
    assert r.status_code == 507, r.text
    (small_disk / "filler").unlink()
    assert client.get(f"/api/sessions/{session}").json() == before  # the refused turn left no trace
    assert client.post(f"/api/sessions/{session}/messages", json={"text": "why not Spain?"}).status_code == 200


def test_a_cache_on_a_full_disk_is_skipped_not_fatal(small_disk, synthetic_index, fake_openai, tmp_path, capsys,
                                                      caplog):
    """The response cache is an optimisation: on a full disk the run answers, uncached, and says so once."""
    import json

    from fakes.openai_server import reply_json

    from tests.synthetic import PLACES, place_image

    prior = {"lat": PLACES[0][1], "lon": PLACES[0][2], "rationale": "Paris", "countries": [], "clues": []}
    photo = tmp_path / "q_paris.jpg"
    place_image(0, variant=7).save(photo, quality=95)
    argv = ["locate", str(photo), "--index", str(synthetic_index.root), "--vlm",
            f"openai-compatible:{fake_openai.base_url}:vlm", "--cache", str(small_disk / "c.sqlite")]
    fake_openai.script(reply_json(prior), reply_json(prior))
    assert main(argv) == 0  # the cache file exists, with one reply
    _fill(small_disk, 0)
    place_image(1, variant=7).save(photo, quality=95)  # another photo: a new reply to store
    caplog.clear()
    assert main(argv) == 0 and "Answer:" in capsys.readouterr().out
    assert len(fake_openai.requests) == 2
    warned = [r.getMessage() for r in caplog.records if "no space left for the response cache" in r.getMessage()]
    assert len(warned) == 1 and "MB free" in warned[0], json.dumps([r.getMessage() for r in caplog.records])


def test_an_add_that_cannot_fit_is_refused_before_any_work(small_disk, synthetic_index, tmp_path, capsys):
    """``index add`` estimates its space (scratch vectors, the segment, the rows) and refuses up
    front, leaving the index as it was; with room, the same command adds them."""
    import shutil

    from tests.synthetic import PLACES, place_image

    index = small_disk / "idx"
    shutil.copytree(synthetic_index.root, index)
    photos = tmp_path / "new"
    photos.mkdir()
    rows = ["IMG_ID,AUTHOR,LAT,LON"]
    for i in range(40):
        name, lat, lon, _ = PLACES[i % len(PLACES)]
        place_image(i % len(PLACES), variant=20 + i).save(photos / f"new_{i}.jpg", quality=90)
        rows.append(f"new_{i}.jpg,newcomer_{i},{lat},{lon}")
    (tmp_path / "new.csv").write_text("\n".join(rows) + "\n")
    argv = ["index", "add", str(index), "--images", str(photos), "--labels", str(tmp_path / "new.csv")]
    before = sorted(p.name for p in index.rglob("*"))
    _fill(small_disk, 20_000)
    assert main(argv) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no space for adding 40 references" in said and "MB are free" in said, said
    after = sorted(p.name for p in index.rglob("*") if p.name != ".update.lock")  # the lock stays, as after any update
    assert after == before and not _leftovers(small_disk)
    (small_disk / "filler").unlink()
    assert main(argv) == 0 and main(["index", "verify", str(index)]) == 0


def test_a_remove_on_a_full_disk_is_one_line_and_leaves_the_index_whole(small_disk, synthetic_index, capsys):
    """``index remove`` writes small files (tombstones, the removals history, the manifest): on a
    full disk it stops with one line naming the file and the space free, the index verifies, and
    the same command completes once there is room."""
    import shutil

    index = small_disk / "idx"
    shutil.copytree(synthetic_index.root, index)
    argv = ["index", "remove", str(index), "--author", "author_paris_0", "--reason", "test"]
    _fill(small_disk, 0)
    assert main(argv) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("geoguide: error: no space left for ") and "MB are free on that disk" in said, said
    assert not _leftovers(small_disk)
    (small_disk / "filler").unlink()
    assert main(["index", "verify", str(index)]) == 0
    assert main(argv) == 0 and main(["index", "verify", str(index)]) == 0
