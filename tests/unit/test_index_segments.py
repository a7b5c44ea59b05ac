"""The segmented store: appended segments and tombstones search exactly like a fresh build, a
compaction changes no result, and real ``python -m app index ...`` processes killed with SIGKILL
at named points (``indices.crashpoints``) leave an index that opens, verifies, counts as before
or after, and completes when the command is run again. Two updates at once: one fails clearly.
A reader (and ``serve``) opened before an update keeps answering from what it opened."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from geoguide.app.cli import main
from geoguide.indices.build import BuildConfig, build_index
from geoguide.indices.crashpoints import ENV_AT, ENV_FILE
from geoguide.indices.manifest import IndexFormatError
from geoguide.indices.store import ReferenceIndex
from geoguide.indices.update import add_references, compact_index, remove_references
from tests.synthetic import PLACES, place_image

REPO = Path(__file__).resolve().parents[2]
CONFIG = BuildConfig(descriptor="thumbnail", submaps="country,kmeans:3", chunk_size=5)
SUBMAPS = ["global", "country:FR", "country:ES", "country:PT", "country:JP", "continent:Europe",
           "radius:41.0,2.0,700", "radius:35.7,139.7,50"]


@pytest.fixture
def refs(synthetic_refs):
    return synthetic_refs[1]


@pytest.fixture
def segmented(refs, tmp_path):
    """Built from 18 photos, then Lisbon added (a segment) and rome_1 removed (a tombstone): 20 live."""
    out = tmp_path / "idx"
    build_index(refs[:18], out, CONFIG, progress=False)
    add_references(out, refs[18:21])
    remove_references(out, ["rome_1.jpg"], reason="test")
    return out


def _queries(index: ReferenceIndex) -> np.ndarray:
    return index.descriptor().extract([place_image(p, variant=5) for p in range(len(PLACES))])


def _results(index: ReferenceIndex, k: int = 6, **exclude) -> list:
    """(ids, scores) of every query in every submap that exists in the index."""
    out = []
    for q in _queries(index):
        for sid in SUBMAPS:
            try:
                sel = index.resolve(sid)
            except ValueError:
                out.append((sid, None))
                continue
            rows, scores = index.search(q, sel, k=k, **exclude)
            out.append((sid, [index.row(int(r))["ref_id"] for r in rows], scores.tolist()))
    return out


def _live_ids(index: ReferenceIndex) -> list[str]:
    return sorted(index.row(int(r))["ref_id"] for r in index.live_rows())


@pytest.mark.parametrize("store", ["fp16", "sq8"])
def test_search_after_adds_and_removes_equals_a_fresh_build(refs, tmp_path, store):
    config = CONFIG.model_copy(update={"store": store, "submaps": "country"})
    out = tmp_path / "idx"
    build_index(refs[:12], out, config, progress=False)
    add_references(out, refs[12:18])
    add_references(out, refs[18:])
    remove_references(out, ["paris_1.jpg", "tokyo_0.jpg", "madrid_2.jpg"], reason="test")
    index = ReferenceIndex(out, verify=True)
    assert len(index.manifest.segments) == 2 and index.n_dead == 3 and len(index) == 21 and index.n_rows == 24
    fresh = tmp_path / "fresh"
    gone = {"paris_1.jpg", "tokyo_0.jpg", "madrid_2.jpg"}
    build_index([s for s in refs if s.image_id not in gone], fresh, config, progress=False)
    other = ReferenceIndex(fresh)
    assert _live_ids(index) == _live_ids(other)
    assert {s.id: s.size for s in index.list_submaps("country")} == {s.id: s.size for s in other.list_submaps("country")}
    if store == "fp16":  # same vectors, same exact scores; sq8's fresh build trains another quantizer
        assert _results(index) == _results(other)
        excl = {"exclude_authors": frozenset({"author_tokyo_1", "author_paris_0"}), "exclude_ids": frozenset({"lyon_0.jpg"})}
        assert _results(index, **excl) == _results(other, **excl)
    assert not any(set(res[1]) & gone for res in _results(index, k=24) if res[1] is not None)


def test_removed_rows_never_appear_and_exclusion_stays_exact(segmented, synthetic_refs):
    index = ReferenceIndex(segmented)
    assert index.row_of("rome_1.jpg") is None and index.row_of("lisbon_0.jpg") >= 18
    every = [s.image_id for s in synthetic_refs[1]] + ["nope.jpg", "", "zzz"]
    assert index.rows_of(every).tolist() == [-1 if index.row_of(i) is None else index.row_of(i) for i in every]
    assert index.rows_of([]).tolist() == []
    vectors = np.asarray(index.descriptors, dtype=np.float32)
    authors = [index.row(i)["author"] for i in range(index.n_rows)]
    ids = [index.row(i)["ref_id"] for i in range(index.n_rows)]
    bad_authors, bad_ids = frozenset({"author_rome_0", "author_lisbon_1"}), frozenset({"rome_2.jpg", "paris_0.jpg"})
    for q in _queries(index):
        for sid in SUBMAPS:
            if sid == "country:JP":
                continue  # not in this index yet
            sel = index.resolve(sid)
            rows, scores = index.search(q, sel, k=4, exclude_authors=bad_authors, exclude_ids=bad_ids)
            pool = [r for r in index.selection_rows(sel)
                    if authors[r] not in bad_authors and ids[r] not in bad_ids]
            assert "rome_1.jpg" not in {ids[r] for r in pool}  # selection_rows leaves removed rows out
            exact = sorted(pool, key=lambda r: -float(vectors[r] @ q))[:4]
            assert rows.tolist() == exact, sid
            np.testing.assert_allclose(scores, vectors[exact] @ q, rtol=1e-5, atol=1e-6)


def test_compact_changes_no_result_and_leaves_only_the_new_base(segmented, refs):
    before = ReferenceIndex(segmented)
    results = _results(before)
    rep = compact_index(segmented)
    assert (rep.n_segments, rep.n_tombstones, rep.n_references) == (1, 1, 20)
    after = ReferenceIndex(segmented, verify=True)
    m = after.manifest
    assert m.schema_version == 2 and not m.segments and m.tombstones is None and after.n_rows == 20
    assert _results(after) == results and _results(before) == results  # the old reader too
    left = {p.relative_to(segmented).as_posix() for p in segmented.rglob("*") if p.is_file()}
    assert left == set(m.files) | {"manifest.json", ".update.lock"}
    assert compact_index(segmented).n_segments == 0  # nothing left to do
    # the compacted base is an ordinary generation: updates go on from it
    add_references(segmented, refs[21:])
    remove_references(segmented, ["lisbon_2.jpg"], reason="again")
    index = ReferenceIndex(segmented, verify=True)
    assert len(index) == 22 and index.row_of("tokyo_1.jpg") == 21 and index.row_of("lisbon_2.jpg") is None
    with open(segmented / index.manifest.removals_path, newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["rome_1.jpg", "lisbon_2.jpg"]


def test_an_add_writes_only_its_segment_and_a_remove_only_its_tombstones(segmented, refs):
    old = ReferenceIndex(segmented).manifest
    stamps = {rel: (segmented / rel).stat().st_mtime_ns for rel in old.files}
    add_references(segmented, refs[21:])
    remove_references(segmented, ["tokyo_2.jpg"], reason="x")
    m = ReferenceIndex(segmented).manifest
    assert [s.data_dir for s in m.segments] == ["seg-000001", "seg-000003"] and m.tombstones.file == "tombstones-000004.npy"
    unchanged = {rel for rel in old.files if rel in m.files}
    assert unchanged == set(old.files) - {"tombstones-000002.npy", "removals-000002.csv"}
    assert all((segmented / rel).stat().st_mtime_ns == stamps[rel] for rel in unchanged)  # never rewritten
    assert m.tombstones.per_label["country"] == {"IT": 1, "JP": 1}


def test_an_index_from_before_segments_takes_updates(refs, tmp_path):
    """A version-1 index (no store entry, no codes copies, no id order) gets segments and
    tombstones, searches them, and compacts into a current one with the same results."""
    import json

    out = tmp_path / "v1"
    build_index(refs[:18], out, CONFIG, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    m.update(schema_version=1, faiss_index="fp16")
    del m["store"]
    for rel in [s.pop("codes") for s in m["schemes"] if s["codes"]] + ["refs/id_order.npy"]:
        (out / rel).unlink()
        m["files"].pop(rel)
    (out / "manifest.json").write_text(json.dumps(m))
    add_references(out, refs[18:])
    remove_references(out, ["paris_2.jpg", "tokyo_1.jpg"], reason="x")
    index = ReferenceIndex(out, verify=True)
    assert len(index) == 22 and index.row_of("tokyo_2.jpg") >= 18 and index.row_of("berlin_0.jpg") is not None
    results = _results(index) + [("km", index.search(q, index.resolve("kmeans-3:0,1,2"), k=5)[0].tolist())
                                 for q in _queries(index)]
    compact_index(out)
    after = ReferenceIndex(out, verify=True)
    assert after.manifest.schema_version == 2 and after.manifest.store is None and len(after) == 22
    kmeans = [("km", [after.row(int(r))["ref_id"] for r in after.search(q, after.resolve("kmeans-3:0,1,2"), k=5)[0]])
              for q in _queries(after)]
    assert _results(after) == results[: -len(kmeans)]
    assert kmeans == [("km", [index.row(int(r))["ref_id"] for r in rows]) for _, rows in results[-len(kmeans):]]


# ---- real processes, killed ---------------------------------------------------------------------
def _env(point: str, marker: Path) -> dict[str, str]:
    return {**os.environ, ENV_AT: point, ENV_FILE: str(marker), "PYTHONPATH": str(REPO)}


def _start(argv: list[str], point: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """``python -m app ARGV`` stopped at ``point`` (it waits there until killed or let go)."""
    marker = tmp_path / f"paused-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-m", "geoguide", *argv], cwd=REPO, env=_env(point, marker),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{argv} ended (exit {proc.returncode}) before {point}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{argv} never reached {point}")
        time.sleep(0.02)
    return proc, marker


def _kill_at(argv: list[str], point: str, tmp_path: Path) -> None:
    proc, marker = _start(argv, point, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    marker.unlink()
    assert proc.returncode == -signal.SIGKILL


def _labels_csv(samples, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON"])
        w.writerows([s.image_id, s.author, s.lat, s.lon] for s in samples)
    return path


def _leftovers(out: Path) -> set[str]:
    m = ReferenceIndex(out).manifest
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    return files - set(m.files) - {"manifest.json", ".update.lock", "removed.csv"}


def _commands(out: Path, tmp_path: Path, synthetic_refs) -> dict[str, tuple[list[str], int]]:
    """Each update command on the ``segmented`` index, with its count afterwards (20 before)."""
    root, samples = synthetic_refs
    ids = tmp_path / "ids.txt"
    ids.write_text("paris_0.jpg\nberlin_2.jpg\n")
    queries = tmp_path / "queries.csv"
    queries.write_text("IMG_ID,LAT,LON\nq_lisbon,38.7268,-9.1393\n")  # 0.5 km from lisbon_0, in the segment
    new = _labels_csv(samples[21:], tmp_path / "tokyo.csv")
    return {
        "add": (["index", "add", str(out), "--images", str(root / "images"), "--labels", str(new)], 23),
        "remove": (["index", "remove", str(out), "--ids", str(ids), "--reason", "killed test"], 18),
        "filter": (["index", "filter", str(out), "--exclude-near", str(queries), "--km", "1"], 19),
        "compact": (["index", "compact", str(out)], 20),
    }


KILLS = [("add", "write:refs"), ("add", "manifest:before"), ("add", "manifest:after"),
         ("remove", "manifest:before"), ("remove", "manifest:after"),
         ("filter", "filter:evidence"), ("filter", "manifest:after"),
         ("compact", "write:vectors"), ("compact", "manifest:before"), ("compact", "stale:partial")]


@pytest.mark.parametrize("command, point", KILLS)
def test_an_update_killed_anywhere_leaves_a_whole_index_and_completes_when_run_again(
        segmented, tmp_path, synthetic_refs, capsys, command, point):
    argv, after = _commands(segmented, tmp_path, synthetic_refs)[command]
    results = _results(ReferenceIndex(segmented))
    _kill_at(argv, point, tmp_path)
    index = ReferenceIndex(segmented, verify=True)  # opens, every listed file whole
    assert len(index) in (20, after)
    assert main(["index", "verify", str(segmented)]) == 0
    if len(index) == 20:
        assert _results(index) == results  # before means before: nothing half-applied (a compaction: either)
    assert main(argv) == 0  # run again: it completes
    capsys.readouterr()
    index = ReferenceIndex(segmented, verify=True)
    assert len(index) == after and not _leftovers(segmented)
    assert not (segmented / "update-work").exists()
    if command == "compact":
        assert not index.manifest.segments and index.manifest.tombstones is None and _results(index) == results
    if command == "filter":
        from geoguide.indices.filtering import read_removed

        assert [r.id for r in read_removed(segmented)] == ["lisbon_0.jpg"] and index.row_of("lisbon_0.jpg") is None


@pytest.mark.parametrize("point", ["write:vectors", "manifest:after"])
def test_a_build_killed_anywhere_completes_when_run_again(synthetic_refs, tmp_path, capsys, point):
    root, samples = synthetic_refs
    labels = _labels_csv(samples, tmp_path / "labels.csv")
    out = tmp_path / "built"
    argv = ["index", "build", "--images", str(root / "images"), "--labels", str(labels), "--out", str(out),
            "--descriptor", "thumbnail", "--submaps", "country,kmeans:3", "--chunk-size", "5"]
    _kill_at(argv, point, tmp_path)
    try:
        assert len(ReferenceIndex(out, verify=True)) == 24  # killed after the manifest: whole
    except IndexFormatError as e:
        assert "run the same build command again" in str(e)  # before it: no index yet, and it says so
    assert main(argv) == 0
    capsys.readouterr()
    index = ReferenceIndex(out, verify=True)
    assert len(index) == 24 and not _leftovers(out) and not (out / "work").exists()


def test_two_updates_at_once_one_fails_clearly_and_nothing_breaks(segmented, tmp_path, synthetic_refs):
    commands = _commands(segmented, tmp_path, synthetic_refs)
    add, after_add = commands["add"]
    proc, marker = _start(add, "manifest:before", tmp_path)  # holds the lock, every file but the manifest written
    for other in ("remove", "compact", "add"):
        second = subprocess.run([sys.executable, "-m", "geoguide", *commands[other][0]], cwd=REPO, capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stderr
        assert err[0].startswith("geoguide: error:") and "another index add/remove/filter/compact is running" in err[0]
    assert len(ReferenceIndex(segmented, verify=True)) == 20
    marker.unlink()  # let the first one finish
    assert proc.wait(timeout=60) == 0
    assert len(ReferenceIndex(segmented, verify=True)) == after_add
    # and truly at once: whichever takes the lock first runs, the other fails clearly or finds nothing to do
    remove, compact = commands["remove"][0], commands["compact"][0]
    procs = [subprocess.Popen([sys.executable, "-m", "geoguide", *argv], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
             for argv in (remove, compact)]
    codes = [p.wait(timeout=120) for p in procs]
    assert set(codes) <= {0, 2} and 0 in codes
    for p, code in zip(procs, codes, strict=True):
        if code == 2:
            assert "another index add/remove/filter/compact is running" in p.stderr.read()
    index = ReferenceIndex(segmented, verify=True)
    assert len(index) == (after_add - 2 if codes[0] == 0 else after_add)


def test_a_reader_opened_before_updates_answers_the_same_during_and_after(segmented, tmp_path, synthetic_refs):
    reader = ReferenceIndex(segmented)
    results = _results(reader)
    commands = _commands(segmented, tmp_path, synthetic_refs)
    for command, point in (("add", "manifest:after"), ("remove", "manifest:before"), ("compact", "stale:partial")):
        proc, marker = _start(commands[command][0], point, tmp_path)
        assert _results(reader) == results  # during
        marker.unlink()
        assert proc.wait(timeout=60) == 0
        assert _results(reader) == results  # after, even with its files deleted by the compaction
    assert not (segmented / "seg-000001").exists() and len(reader) == 20
    now = ReferenceIndex(segmented)
    assert len(now) == 21 and now.row_of("tokyo_0.jpg") is not None and _results(now) != results


def test_serve_keeps_answering_from_the_index_it_opened(segmented, tmp_path, synthetic_refs):
    from fastapi.testclient import TestClient

    from geoguide.agent.backends import make_backend
    from geoguide.agent.config import AgentConfig
    from geoguide.agent.context import AgentContext
    from geoguide.app.server import create_app

    ctx = AgentContext(index=ReferenceIndex(segmented), backend=make_backend("none"), config=AgentConfig())
    client = TestClient(create_app(ctx, max_upload_bytes=200_000), base_url="http://localhost")

    def ask() -> tuple:
        out = io.BytesIO()
        place_image(6, variant=7).save(out, format="JPEG", quality=90)  # Lisbon: in the segment
        r = client.post("/api/locate", files={"image": ("q.jpg", out.getvalue(), "image/jpeg")})
        assert r.status_code == 200, r.text
        pred = r.json()
        thumb = client.get(f"/api/references/{pred['top_candidates'][0]['ref_id']}/thumbnail")
        assert thumb.status_code == 200
        return client.get("/api/health").json()["n_references"], pred["country"], \
            [c["ref_id"] for c in pred["top_candidates"]]

    first = ask()
    assert first[0] == 20 and first[1] == "PT"
    commands = _commands(segmented, tmp_path, synthetic_refs)
    for command in ("add", "filter", "compact"):
        proc, marker = _start(commands[command][0], "manifest:after", tmp_path)
        assert ask() == first
        marker.unlink()
        assert proc.wait(timeout=60) == 0
        assert ask() == first


def test_an_id_given_twice_in_one_add_is_added_once(refs, tmp_path):
    """``add_described`` (vectors already made) keeps ``add_references``' rule: one row per id, the
    last record given for it, and none for an id the index already holds."""
    from geoguide.indices.update import add_described

    out = tmp_path / "idx"
    build_index(refs[:18], out, CONFIG, progress=False)
    index = ReferenceIndex(out)
    new = refs[18]
    vecs = index.descriptor().extract([place_image(0)] * 3)
    rep = add_described(out, [new, new, refs[0]], vecs)
    after = ReferenceIndex(out)
    assert (rep.n_added, rep.n_skipped) == (1, 2) and len(after) == 19
    assert _live_ids(after).count(new.image_id) == 1


def test_an_id_with_a_trailing_nul_is_not_another_id(segmented):
    """numpy's fixed-width bytes drop trailing NULs: the id lookups must not read "x.jpg\\0" as "x.jpg"."""
    index = ReferenceIndex(segmented)
    known = _live_ids(index)[0]
    assert index.rows_of([known, known + "\0"]).tolist()[1] == -1 and index.row_of(known + "\0") is None
    assert index.row_of(known) is not None
