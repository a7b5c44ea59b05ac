"""Index build, store, submap-restricted search, resume and integrity, on images the tests make."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geoguide.indices.build import BuildConfig, BuildError, IndexExistsError, build_index
from geoguide.indices.manifest import IndexFormatError
from geoguide.indices.store import ReferenceIndex, SubmapError
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
    ReferenceIndex(out)  # opening checks sizes only (fast at any size); the checksum is index verify's
    with pytest.raises(IndexFormatError, match="checksum"):
        ReferenceIndex(out, verify=True)
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


def test_unreadable_images_are_named_in_the_manifest(refset, tmp_path, monkeypatch):
    bad = []
    for i, text in enumerate(["not an image", "", "also not"]):
        p = tmp_path / f"bad{i}.jpg"
        p.write_text(text)
        bad.append(refset[i].model_copy(update={"image_id": f"bad{i}.jpg", "image_path": p}))
    m = build_index(list(refset) + bad, tmp_path / "b", CONFIG, progress=False)
    got = [f.model_dump() for f in m.source.failed_images]
    assert got == [
        {"id": "bad0.jpg", "path": str(tmp_path / "bad0.jpg"), "reason": "not a recognised image format"},
        {"id": "bad1.jpg", "path": str(tmp_path / "bad1.jpg"), "reason": "file is empty"},
        {"id": "bad2.jpg", "path": str(tmp_path / "bad2.jpg"), "reason": "not a recognised image format"},
    ]
    assert ReferenceIndex(tmp_path / "b").manifest.source.failed_images == m.source.failed_images  # stored
    monkeypatch.setattr("geoguide.indices.build.MAX_FAILED_IMAGES", 2)
    m = build_index(list(refset) + bad, tmp_path / "c", CONFIG, progress=False)
    assert m.source.n_failed_images == 3 and [f.id for f in m.source.failed_images] == ["bad0.jpg", "bad1.jpg"]


def test_records_without_image_files_are_refused_before_any_folder_is_made(refset, tmp_path):
    no_images = [r.model_copy(update={"image_path": None}) for r in refset]
    out = tmp_path / "new" / "idx"
    with pytest.raises(BuildError, match=r"24 of 24 records have no image file \(first: 'paris_0.jpg'\).*images"):
        build_index(no_images, out, CONFIG, progress=False)
    assert not (tmp_path / "new").exists()


class Interrupted(BaseException):  # like KeyboardInterrupt, without pytest treating it as one
    pass


def test_a_build_that_fails_before_any_result_leaves_nothing_behind(refset, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr("geoguide.indices.describe.load_many", interrupt)  # dies while describing chunk 0
    out = tmp_path / "made" / "by" / "build"
    with pytest.raises(Interrupted):
        build_index(refset, out, CONFIG, progress=False)
    assert not (tmp_path / "made").exists()  # the folders it created are gone, parents too
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(Interrupted):
        build_index(refset, mine, CONFIG, progress=False)
    assert mine.is_dir() and list(mine.iterdir()) == []  # the user's folder stays, emptied of ours


def test_a_build_of_only_unreadable_images_leaves_nothing_behind(refset, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    records = [r.model_copy(update={"image_path": bad}) for r in refset]
    out = tmp_path / "out"
    with pytest.raises(BuildError, match="none of the 24 images could be read"):
        build_index(records, out, CONFIG, progress=False)
    assert not out.exists()


def test_a_missing_model_fails_before_any_folder_is_made(refset, tmp_path):
    config = BuildConfig(descriptor="clip", descriptor_conf={"model": str(tmp_path / "no-weights")})
    with pytest.raises(FileNotFoundError, match="--descriptor-opt model="):
        build_index(refset, tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists()


def _files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_building_over_another_index_needs_overwrite_and_leaves_no_stale_files(refset, tmp_path):
    out = tmp_path / "idx"
    build_index(refset, out, CONFIG, progress=False)
    before = (out / "manifest.json").read_text()
    other = CONFIG.model_copy(update={"submaps": "kmeans:2"})
    with pytest.raises(IndexExistsError, match=r"holds another index .*overwrite"):
        build_index(refset, out, other, progress=False)
    with pytest.raises(IndexExistsError, match="overwrite"):
        build_index(refset[:10], out, CONFIG, progress=False)  # same options, other references
    assert (out / "manifest.json").read_text() == before
    ReferenceIndex(out)  # untouched
    build_index(refset, out, CONFIG, progress=False)  # the same index again needs no flag
    m = build_index(refset, out, other, progress=False, overwrite=True)
    assert [s.prefix for s in m.schemes] == ["kmeans-2"]
    assert _files(out) == set(m.files) | {"manifest.json"}  # no submaps/country.json, kmeans-3.* left
    assert len(ReferenceIndex(out)) == len(refset)


def test_an_index_of_unknown_inputs_needs_overwrite(refset, tmp_path):
    out = tmp_path / "old"
    build_index(refset, out, CONFIG, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["build_key"]  # as written before geoguide recorded what an index was built from
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexExistsError, match="does not record what it was built from"):
        build_index(refset, out, CONFIG, progress=False)
    build_index(refset, out, CONFIG, progress=False, overwrite=True)


def test_a_folder_that_is_not_an_index_is_refused_and_never_emptied(refset, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(IndexExistsError, match=r"not empty and holds no geoguide index.*overwrite"):
        build_index(refset, out, CONFIG, progress=False)
    assert _files(out) == {"notes.txt"}
    m = build_index(refset, out, CONFIG, progress=False, overwrite=True)
    assert _files(out) == set(m.files) | {"manifest.json", "notes.txt"}  # only geoguide's files replaced
    with pytest.raises(BuildError, match="notes.txt is a file, not a folder"):
        build_index(refset, out / "notes.txt", CONFIG, progress=False)


def test_an_interrupted_overwrite_resumes_without_the_flag(refset, tmp_path):
    out = tmp_path / "idx"
    build_index(refset, out, CONFIG, progress=False)
    other = CONFIG.model_copy(update={"submaps": "kmeans:2"})

    def die_after_two(ci: int) -> None:
        if ci == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_index(refset, out, other, progress=False, overwrite=True, after_chunk=die_after_two)
    with pytest.raises(IndexFormatError):
        ReferenceIndex(out)  # the old index is gone, not silently mixed with the new one
    done: list[int] = []
    m = build_index(refset, out, other, progress=False, after_chunk=done.append)
    assert done == [2, 3, 4]
    assert _files(out) == set(m.files) | {"manifest.json"}
    # Another unfinished build in the way: refused, or discarded with overwrite.
    with pytest.raises(Interrupted):
        build_index(refset, out, CONFIG, progress=False, overwrite=True, after_chunk=die_after_two)
    with pytest.raises(IndexExistsError, match="unfinished build"):
        build_index(refset, out, other, progress=False)
    done.clear()
    build_index(refset, out, other, progress=False, overwrite=True, after_chunk=done.append)
    assert done == [0, 1, 2, 3, 4]


def test_overwrite_of_a_half_written_index_removes_its_files_but_not_the_users(refset, tmp_path):
    out = tmp_path / "half"
    build_index(refset, out, CONFIG, progress=False)
    (out / "manifest.json").unlink()  # as if the last write had been cut short, work/ deleted by hand
    (out / "submaps" / ".country.json.x1y2.tmp").write_text("half a file")
    with pytest.raises(IndexExistsError, match="holds part of an index"):
        build_index(refset, out, CONFIG, progress=False)
    (out / "work").mkdir()
    (out / "work" / "mine.txt").write_text("a user's folder that happens to be called work")
    for overwrite in (False, True):  # a build would fill and then delete OUT/work: never a user's folder
        with pytest.raises(BuildError, match="work is not a geoguide build folder"):
            build_index(refset, out, CONFIG, progress=False, overwrite=overwrite)
    assert (out / "work" / "mine.txt").exists()
    (out / "work" / "mine.txt").unlink()
    m = build_index(refset, out, CONFIG.model_copy(update={"submaps": "kmeans:2"}), progress=False, overwrite=True)
    assert _files(out) == set(m.files) | {"manifest.json"}
