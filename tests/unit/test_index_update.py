"""index add / remove / compact / verify: new photos found, removed ones gone, readers undisturbed,
resumable. Crash safety with real killed processes: tests/unit/test_index_segments.py."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from geoguide.app.cli import main
from geoguide.indices.build import BuildConfig, build_index
from geoguide.indices.manifest import IndexFormatError
from geoguide.indices.store import ReferenceIndex
from geoguide.indices.update import (
    UpdateError,
    add_references,
    compact_index,
    ids_of_author,
    remove_references,
)
from tests.synthetic import PLACES, place_image

CONFIG = BuildConfig(descriptor="thumbnail", submaps="country,kmeans:3", chunk_size=5)


@pytest.fixture
def idx(synthetic_refs, tmp_path):
    """A fresh copy of the synthetic index per test (updates change it)."""
    _, samples = synthetic_refs
    out = tmp_path / "idx"
    build_index(samples[:18], out, CONFIG, progress=False)  # without Tokyo and part of Rome/Lisbon
    return out, samples


def _search(index: ReferenceIndex, place: int, submap: str = "global", k: int = 3) -> list[str]:
    q = index.descriptor().extract([place_image(place, variant=5)])[0]
    rows, _ = index.search(q, index.resolve(submap), k=k)
    return [index.row(int(r))["ref_id"] for r in rows]


def test_add_then_search_finds_the_new_photos(idx):
    out, samples = idx
    before = ReferenceIndex(out)
    rep = add_references(out, samples[18:])
    assert rep.n_added == 6 and rep.generation == 1 and rep.n_references == 24
    index = ReferenceIndex(out)
    m, old = index.manifest, before.manifest
    assert m.data_dir == "" and [s.data_dir for s in m.segments] == ["seg-000001"] and m.build_key is None
    assert m.schema_version == 3 and m.n_rows == 24 and m.n_base_rows == 18
    # only the new segment was written: every old file is listed with the same checksum, untouched
    assert {k: v for k, v in m.files.items() if k in old.files} == old.files
    assert all(k.startswith("seg-000001/") for k in set(m.files) - set(old.files))
    assert any("kmeans-3 centroids" in f for f in m.frozen)
    assert _search(index, 7)[0].startswith("tokyo")  # Tokyo was not in the build
    assert sorted(_search(index, 7, "country:JP", k=10)) == ["tokyo_0.jpg", "tokyo_1.jpg", "tokyo_2.jpg"]
    assert {s.id: s.size for s in index.list_submaps("country")}["country:JP"] == 3
    assert sum(s.size for s in index.list_submaps("kmeans-3")) == 24
    # the index opened before the add still answers, from the old generation it mapped
    assert len(before) == 18 and not _search(before, 7)[0].startswith("tokyo")
    assert before.row_of("paris_0.jpg") == index.row_of("paris_0.jpg") is not None  # rows never move
    assert before.row_of("tokyo_0.jpg") is None and index.row_of("tokyo_0.jpg") >= 18  # in the segment
    again = add_references(out, samples[18:])  # the same add again: nothing to do
    assert again.n_added == 0 and again.n_skipped == 6 and again.generation == 1
    compact_index(out)
    compacted = ReferenceIndex(out, verify=True)
    assert compacted.manifest.data_dir == "gen-000002" and not compacted.manifest.segments
    assert not (out / "refs").exists() and not (out / "seg-000001").exists()  # the old base and segment are gone
    assert _search(compacted, 7) == _search(index, 7) and len(compacted) == 24
    assert not _search(before, 7)[0].startswith("tokyo")  # the first reader still answers, from its maps


def test_remove_then_they_are_gone_and_recorded(idx):
    out, samples = idx
    before = ReferenceIndex(out)
    rep = remove_references(out, ["paris_0.jpg", "paris_1.jpg", "nope.jpg"], reason="test: leakage")
    assert (rep.n_removed, rep.n_skipped, rep.n_references) == (2, 1, 16)
    index = ReferenceIndex(out)
    assert index.row_of("paris_0.jpg") is None and index.row_of("paris_2.jpg") is not None
    assert all(not r.startswith(("paris_0", "paris_1")) for r in _search(index, 0, k=16))
    assert index.manifest.removals[-1].reason == "test: leakage" and index.manifest.removals[-1].n == 2
    assert index.manifest.tombstones.n == 2 and index.n_rows == 18  # rows stay until a compaction
    with open(out / index.manifest.removals_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["paris_0.jpg", "paris_1.jpg"] and rows[0]["reason"] == "test: leakage"
    assert _search(before, 0)[0].startswith("paris")  # the old reader still sees its generation
    author = ids_of_author(out, "author_lyon_0")
    assert sorted(author) == ["lyon_0.jpg", "lyon_2.jpg"]
    remove_references(out, author, reason="author asked")
    index = ReferenceIndex(out, verify=True)
    assert len(index) == 14 and index.manifest.generation == 2
    with open(out / index.manifest.removals_path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 4  # the record carries over generations
    assert not (out / "tombstones-000001.npy").exists()  # replaced by generation 2's
    with pytest.raises(UpdateError, match="empty index"):
        remove_references(out, [index.row(int(i))["ref_id"] for i in index.live_rows()], reason="all")
    compact_index(out)
    index = ReferenceIndex(out, verify=True)
    assert len(index) == index.n_rows == 14 and index.manifest.tombstones is None
    with open(out / index.manifest.removals_path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 4  # and over a compaction


def test_an_interrupted_add_resumes_from_its_chunks(idx):
    out, samples = idx

    class Killed(Exception):
        pass

    def die(ci: int) -> None:
        if ci == 0:
            raise Killed

    with pytest.raises(Killed):
        add_references(out, samples[18:], chunk_size=3, after_chunk=die)
    assert len(ReferenceIndex(out)) == 18  # untouched
    done: list[int] = []
    rep = add_references(out, samples[18:], chunk_size=3, after_chunk=done.append)
    assert done == [1] and rep.n_added == 6  # chunk 0 was reused
    assert not (out / "update-work").exists()


def test_add_and_remove_keep_search_identical_to_a_fresh_build(idx, tmp_path):
    out, samples = idx
    add_references(out, samples[18:])
    remove_references(out, ["rome_1.jpg"], reason="x")
    fresh = tmp_path / "fresh"
    build_index([s for s in samples if s.image_id != "rome_1.jpg"], fresh, CONFIG, progress=False)
    a, b = ReferenceIndex(out), ReferenceIndex(fresh)
    for place in range(len(PLACES)):
        assert _search(a, place, k=5) == _search(b, place, k=5)
    ids = lambda ix: sorted(ix.row(int(i))["ref_id"] for i in ix.live_rows())  # noqa: E731
    assert ids(a) == ids(b)
    assert {s.id: s.size for s in a.list_submaps("country")} == {s.id: s.size for s in b.list_submaps("country")}
    compact_index(out)
    a = ReferenceIndex(out)
    np.testing.assert_array_equal(a.refs["country"][:], b.refs["country"][:])  # the same storage order
    np.testing.assert_array_equal(a.refs["id"][:], b.refs["id"][:])


def test_index_commands_add_remove_verify(idx, tmp_path, capsys, synthetic_refs):
    out, samples = idx
    root = synthetic_refs[0]
    assert main(["index", "add", str(out), "--images", str(root / "images"), "--labels", str(root / "labels.csv")]) == 0
    assert "added 6 references" in capsys.readouterr().out
    ids = tmp_path / "ids.txt"
    ids.write_text("berlin_0.jpg\nberlin_1.jpg\n")
    assert main(["index", "remove", str(out), "--ids", str(ids), "--reason", "duplicates"]) == 0
    assert "removed 2 references" in capsys.readouterr().out
    assert main(["index", "remove", str(out), "--author", "author_rome_0"]) == 0
    assert main(["index", "remove", str(out)]) == 2  # neither --ids nor --author
    assert main(["index", "verify", str(out)]) == 0
    assert "checksums match" in capsys.readouterr().out
    assert main(["index", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "generation 3, 4 removed" in info and "kmeans-3 centroids" in info
    assert "1 added segments (6 rows), 4 removed rows kept as tombstones" in info
    m = ReferenceIndex(out).manifest
    path = out / m.data("descriptors.f16.npy")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["index", "verify", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("geoguide: error:") and "checksum mismatch for descriptors.f16.npy" in err[-1]
    with pytest.raises(IndexFormatError):
        ReferenceIndex(out, verify=True)


def test_a_build_over_an_updated_index_leaves_none_of_its_generations(idx):
    out, samples = idx
    add_references(out, samples[18:])
    m = build_index(samples, out, CONFIG.model_copy(update={"submaps": "kmeans:2"}), progress=False, overwrite=True)
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert left == set(m.files) | {"manifest.json"}
