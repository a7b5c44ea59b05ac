"""Index build, store, submap-restricted search, resume and integrity, on images the tests make."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indices.build import BuildConfig, BuildError, build_index
from indices.manifest import IndexFormatError
from indices.store import ReferenceIndex, SubmapError
from tests.synthetic import PLACES, place_image

CONFIG = BuildConfig(descriptor="thumbnail", submaps="country,kmeans:3", chunk_size=5)


@pytest.fixture
def refset(synthetic_refs):
    return synthetic_refs[1]


@pytest.fixture
def index(synthetic_index):
    return synthetic_index


def test_manifest_and_counts(index):
    m = index.manifest
    assert m.n_references == len(PLACES) * 3
    assert m.descriptor.name == "thumbnail" and m.descriptor.dim == 768
    assert [s.prefix for s in m.schemes] == ["country", "kmeans-3"]
    assert m.schemes[0].contiguous and not m.schemes[1].contiguous
    countries = {s.id: s.size for s in index.list_submaps("country")}
    assert countries == {"country:FR": 6, "country:ES": 6, "country:DE": 3, "country:IT": 3,
                         "country:PT": 3, "country:JP": 3}
    assert sum(s.size for s in index.list_submaps("kmeans-3")) == len(index)
    fr = index.schemes["country"].submaps["FR"]
    assert fr.name == "FR — France" and 45 < fr.lat < 49


def test_storage_order_groups_primary_scheme(index):
    countries = [index.row(i)["country"] for i in range(len(index))]
    # every country is one contiguous block
    blocks = [c for i, c in enumerate(countries) if i == 0 or countries[i - 1] != c]
    assert len(blocks) == len(set(countries))


@pytest.mark.parametrize("place", [0, 4, 7])
def test_search_finds_the_place(index, place):
    name = PLACES[place][0]
    q = index.descriptor().extract([place_image(place, variant=5)])[0]
    rows, scores = index.search(q, index.resolve("global"), k=3)
    assert index.row(int(rows[0]))["ref_id"].startswith(name)
    assert np.all(np.diff(scores) <= 1e-6)


def test_submap_search_never_leaves_the_submap(index):
    q = index.descriptor().extract([place_image(0, variant=5)])[0]  # a Paris photo
    for sid, allowed in [("country:ES", {"ES"}), ("country:ES,PT", {"ES", "PT"})]:
        rows, _ = index.search(q, index.resolve(sid), k=50)
        assert {index.row(int(r))["country"] for r in rows} == allowed
        assert len(rows) == index.resolve(sid).size
    km = index.list_submaps("kmeans-3")[0]
    rows, _ = index.search(q, index.resolve(km.id), k=100)
    assert len(rows) == km.size


def test_radius_submap(index):
    sel = index.resolve("radius:48.85,2.35,500")  # Paris + Lyon (~390 km), not Barcelona (~830 km)
    ids = {index.row(int(r))["ref_id"].split("_")[0] for r in index.selection_rows(sel)}
    assert ids == {"paris", "lyon"}


def test_exclusion_is_exact(index):
    q = index.descriptor().extract([place_image(0, variant=5)])[0]
    rows, _ = index.search(q, index.resolve("global"), k=5, exclude_authors=frozenset({"author_paris_0", "author_paris_1"}))
    assert len(rows) == 5 and not any(index.row(int(r))["ref_id"].startswith("paris") for r in rows)
    rows, _ = index.search(q, index.resolve("kmeans-3:" + index.list_submaps("kmeans-3")[0].id.split(":")[1]),
                           k=2, exclude_ids=frozenset({"paris_0.jpg"}))
    assert "paris_0.jpg" not in {index.row(int(r))["ref_id"] for r in rows}


@pytest.mark.parametrize("bad", ["country:ZZ", "nonsense", "kmeans-3:99", "radius:200,0,5", "radius:1,2", "continent:Atlantis"])
def test_bad_submap_ids_are_clear_errors(index, bad):
    with pytest.raises(SubmapError):
        index.resolve(bad)


def test_resume_after_kill_gives_identical_index(refset, tmp_path):
    full = tmp_path / "full"
    build_index(refset, full, CONFIG, progress=False)

    class Killed(Exception):
        pass

    def die_after_two(ci: int) -> None:
        if ci == 1:
            raise Killed

    part = tmp_path / "part"
    with pytest.raises(Killed):
        build_index(refset, part, CONFIG, progress=False, after_chunk=die_after_two)
    assert not (part / "manifest.json").exists()
    with pytest.raises(IndexFormatError, match="interrupted build"):
        ReferenceIndex(part)
    done = []
    build_index(refset, part, CONFIG, progress=False, after_chunk=done.append)
    assert done == [2, 3, 4]  # chunks 0 and 1 were reused, not recomputed
    a = json.loads((full / "manifest.json").read_text())["files"]
    b = json.loads((part / "manifest.json").read_text())["files"]
    assert a == b  # byte-identical data files


def test_resume_refuses_other_inputs(refset, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(RuntimeError):
        build_index(refset, out, CONFIG, progress=False, after_chunk=lambda ci: (_ for _ in ()).throw(RuntimeError()))
    with pytest.raises(BuildError, match="unfinished build"):
        build_index(refset[:10], out, CONFIG, progress=False)


def test_truncated_or_altered_index_is_refused(refset, tmp_path):
    out = tmp_path / "t"
    build_index(refset, out, CONFIG, progress=False)
    path = out / "descriptors.f16.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(IndexFormatError, match="truncated"):
        ReferenceIndex(out)
    path.write_bytes(data[:-2] + b"\x00\x01")
    with pytest.raises(IndexFormatError, match="checksum"):
        ReferenceIndex(out)
    path.write_bytes(data)
    ReferenceIndex(out)  # restored -> opens again
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="manifest"):
        ReferenceIndex(out)


def test_unreadable_images_are_skipped_and_counted(refset, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    records = list(refset) + [refset[0].model_copy(update={"image_id": "bad.jpg", "image_path": bad})]
    out = tmp_path / "b"
    m = build_index(records, out, CONFIG, progress=False)
    assert m.n_references == len(refset) and m.source.n_failed_images == 1
    assert any("bad.jpg" in p for p in m.source.problems)
