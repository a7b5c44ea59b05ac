"""Reference hygiene: near-duplicate photos and references near a benchmark's queries (indices/filtering.py),
as build options and as ``index filter`` on a built index."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from geoguide.app.cli import main
from geoguide.app.index import load_query_points
from geoguide.indices.filtering import (
    HASH_BYTES,
    FilterConfig,
    QueryPoints,
    dhash128,
    duplicate_removals,
    filter_index,
    near_queries,
    read_removed,
)
from geoguide.indices.store import ReferenceIndex
from tests.synthetic import make_reference_set, place_image


def _bits(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


def _reencode(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_dhash_keeps_reencodes_close_and_other_photos_far():
    # Synthetic block textures are harsher than photos (sharp edges on the hash grid): on the shared
    # split a half-size copy stays within 5 bits for 99% (benchmarks/filtering.py); here the median does.
    seeds = range(12)
    codes = [dhash128(place_image(s, size=(320, 240))) for s in seeds]
    halves = []
    for s, code in zip(seeds, codes, strict=True):
        img = place_image(s, size=(320, 240))
        assert _bits(code, dhash128(_reencode(img, 50))) <= 5
        halves.append(_bits(code, dhash128(img.resize((160, 120), Image.BILINEAR))))
    assert np.median(halves) <= 5 and max(halves) <= 8
    apart = [_bits(codes[i], codes[j]) for i in range(len(codes)) for j in range(i + 1, len(codes))]
    assert min(apart) > 20  # unrelated textures differ in ~half of the 128 bits


def _points(lat, lon, km):
    from geoguide.indices.filtering import ExcludeNear

    spec = ExcludeNear(labels="q.csv", km=km, n_points=len(lat), digest="x")
    return QueryPoints(spec=spec, ids=[f"q{i}" for i in range(len(lat))], lat=lat, lon=lon)


def test_near_queries_uses_great_circle_distance_and_the_antimeridian():
    # 0.009 deg of latitude = 1.0008 km; across the antimeridian 0.002 deg of longitude at the equator = 0.22 km.
    pts = _points([45.0, 0.0], [7.0, 179.999], km=1.0)
    lat = np.array([45.0085, 45.0095, 0.0, 10.0])
    lon = np.array([7.0, 7.0, -179.999, 7.0])
    within, nearest, km = near_queries(lat, lon, pts)
    assert within.tolist() == [True, False, True, False]
    assert nearest.tolist() == [0, -1, 1, -1]
    assert km[0] == pytest.approx(0.945, abs=0.01) and km[2] == pytest.approx(0.222, abs=0.01)


def test_duplicate_search_is_exact_against_brute_force():
    rng = np.random.default_rng(3)
    n, t = 3000, 5
    codes = rng.integers(0, 256, size=(n, HASH_BYTES), dtype=np.uint8)
    for dst in rng.choice(n, 300, replace=False):  # near copies of random others, 0..8 bits flipped
        codes[dst] = codes[rng.integers(n)]
        for b in rng.choice(128, rng.integers(0, 9), replace=False):
            codes[dst, b // 8] ^= 1 << (b % 8)
    ids = [f"r{i}" for i in range(n)]
    sha = np.array([f"{i:064x}" for i in range(n)])  # all files distinct
    keep, removed = duplicate_removals(ids, ids, np.zeros(n), np.zeros(n), sha, codes, t)
    # Brute force, greedy in order: a photo goes when a kept earlier one is within t bits.
    dist = np.unpackbits(codes[:, None, :] ^ codes[None, :, :], axis=-1).sum(-1)
    expect = np.ones(n, dtype=bool)
    for i in range(n):
        expect[i] = not (dist[i, :i][expect[:i]] <= t).any()
    assert keep.tolist() == expect.tolist()
    assert len(removed) == int((~expect).sum()) > 100
    assert {r.rule for r in removed} == {"near-duplicate"}


def test_duplicates_go_only_next_to_a_kept_photo_and_exact_copies_first():
    a = np.zeros(HASH_BYTES, np.uint8)
    b, c = a.copy(), a.copy()
    b[0] = 0b0000_0111  # a..b 3 bits, b..c 3 bits, a..c 6 bits: with t=4, c stays (its neighbour b went)
    c[0] = 0b0011_1111
    codes = np.stack([a, b, c, a])
    sha = np.array(["s0", "s1", "s2", "s0"])  # the 4th is a byte copy of the 1st
    keep, removed = duplicate_removals(list("abcd"), list("abcd"), np.zeros(4), np.zeros(4), sha, codes, 4)
    assert keep.tolist() == [True, False, True, False]
    by_id = {r.id: r for r in removed}
    assert by_id["d"].rule == "exact-duplicate" and "same file content as a" in by_id["d"].detail
    assert by_id["b"].rule == "near-duplicate" and "of a (3 of 128 bits" in by_id["b"].detail


@pytest.fixture
def photo_set(tmp_path):
    """The synthetic set plus a byte copy, a re-encoded copy, and a queries CSV 0.5 km from lisbon_0."""
    root = tmp_path / "set"
    labels = make_reference_set(root)
    images = root / "images"
    shutil.copy(images / "paris_0.jpg", images / "paris_copy.jpg")
    _reencode(Image.open(images / "rome_0.jpg").convert("RGB"), 60).save(images / "rome_reencoded.jpg", quality=70)
    with open(labels, "a", newline="") as f:
        w = csv.writer(f)
        w.writerow(["paris_copy.jpg", "someone_else", 48.86, 2.35])
        w.writerow(["rome_reencoded.jpg", "someone_else", 41.90, 12.49])
    queries = tmp_path / "queries.csv"
    queries.write_text("IMG_ID,LAT,LON\nq_lisbon,38.7268,-9.1393\nq_sea,0.0,-30.0\n")
    return root, labels, queries


def _build(root, labels, out, *extra):
    return main(["index", "build", "--images", str(root / "images"), "--labels", str(labels), "--out", str(out),
                 "--descriptor", "thumbnail", "--submaps", "country", "--chunk-size", "7", *extra])


def test_build_with_filters_records_what_it_removed(photo_set, tmp_path, capsys):
    root, labels, queries = photo_set
    out = tmp_path / "idx"
    assert _build(root, labels, out, "--dedupe", "--exclude-near", str(queries), "--km", "1") == 0
    said = capsys.readouterr().out
    assert "filters removed 3 references (exact-duplicate 1, near-duplicate 1, near-query 1)" in said
    removed = {r.id: r for r in read_removed(out)}
    assert set(removed) == {"paris_copy.jpg", "rome_reencoded.jpg", "lisbon_0.jpg"}
    assert removed["lisbon_0.jpg"].rule == "near-query" and "q_lisbon" in removed["lisbon_0.jpg"].detail
    assert removed["rome_reencoded.jpg"].detail.startswith("of rome_0.jpg")
    index = ReferenceIndex(out)
    assert len(index) == 26 - 3 and index.row_of("paris_copy.jpg") is None and index.row_of("paris_0.jpg") is not None

    # The filters are part of the index: without them it is another index, and an overwrite drops removed.csv.
    assert _build(root, labels, out) == 2
    assert _build(root, labels, out, "--overwrite") == 0
    assert not (out / "removed.csv").exists() and len(ReferenceIndex(out)) == 26


def test_index_filter_dry_run_finds_what_the_build_options_remove(photo_set, tmp_path, capsys):
    root, labels, queries = photo_set
    out = tmp_path / "idx"
    assert _build(root, labels, out) == 0
    before = (out / "manifest.json").read_bytes()
    ids = tmp_path / "ids.txt"
    assert main(["index", "filter", str(out), "--dedupe", "--exclude-near", str(queries), "--km", "1",
                 "--dry-run", "--out", str(ids)]) == 0
    said = capsys.readouterr().out
    assert "3 of 26 references to remove (exact-duplicate 1, near-duplicate 1, near-query 1)" in said
    # Stored order is by country, so which copy of a pair goes is decided in that order.
    listed = set(ids.read_text().split())
    assert "lisbon_0.jpg" in listed and len(listed & {"paris_0.jpg", "paris_copy.jpg"}) == 1
    assert len(listed & {"rome_0.jpg", "rome_reencoded.jpg"}) == 1
    assert (out / "manifest.json").read_bytes() == before and not (out / "removed.csv").exists()


def test_index_filter_removes_through_the_index_update(photo_set, tmp_path, capsys):
    root, labels, queries = photo_set
    out = tmp_path / "idx"
    assert _build(root, labels, out) == 0
    assert main(["index", "filter", str(out), "--exclude-near", str(queries), "--km", "1"]) == 0
    assert "removed 1 references" in capsys.readouterr().out
    index = ReferenceIndex(out)
    assert len(index) == 25 and index.row_of("lisbon_0.jpg") is None
    assert [r.id for r in read_removed(out)] == ["lisbon_0.jpg"]  # with the evidence; the update logs it too:
    assert index.manifest.removals[-1].reason.startswith("index filter: near-query")
    points = load_query_points(queries, 1)
    assert filter_index(out, FilterConfig(exclude_near=points.spec, points=points)).removals == []


def test_bad_filter_inputs_are_clear_errors(photo_set, tmp_path, capsys):
    root, labels, queries = photo_set
    bad = tmp_path / "bad.csv"
    bad.write_text("IMG_ID,WHERE\nx,somewhere\n")
    assert _build(root, labels, tmp_path / "a", "--exclude-near", str(bad)) == 2
    assert _build(root, labels, tmp_path / "b", "--exclude-near", str(queries), "--km", "0") == 2
    assert "--km must be a positive distance" in capsys.readouterr().err
    assert main(["index", "filter", str(tmp_path / "a")]) == 2
    assert "give --dedupe and/or --exclude-near" in capsys.readouterr().err
