"""Every store (fp16, sq8, pq, opq): built, opened memory-mapped, searched by submap, recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.scale import SyntheticDescriptor
from geoguide.indices.manifest import SourceInfo
from geoguide.indices.store import ReferenceIndex
from geoguide.indices.stores import StoreSpecError, parse_store
from geoguide.indices.submaps import parse_schemes
from geoguide.indices.writer import write_index
from tests.synthetic import PLACES

N, DIM = 2000, 32
STORES = ["fp16", "sq8", "pq:8x6", "opq:4x6"]  # 64 centroids per sub-space: fast to train


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Quantizer training on 2 busy cores is 3x faster on one thread (no OpenMP spinning)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors from a 40-component Gaussian mixture: structure a quantizer can learn."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_synthetic(out, store: str, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    place = rng.integers(0, len(PLACES), n)
    lat = np.array([PLACES[p][1] for p in place]) + rng.normal(0, 0.3, n)
    lon = np.array([PLACES[p][2] for p in place]) + rng.normal(0, 0.3, n)
    vecs = clustered(n, DIM, seed)
    ids = [f"r{i:05d}" for i in range(n)]
    write_index(out, ids=ids, authors=[f"a{i % 7}" for i in range(n)], paths=ids, lat=lat, lon=lon,
                country=np.array([PLACES[p][3] for p in place]), descriptors=vecs, descriptor=SyntheticDescriptor({"dim": DIM}),
                schemes=parse_schemes("country,kmeans:5"), source=SourceInfo(labels="synthetic"), store=store)
    return vecs


@pytest.fixture(scope="module", params=STORES)
def built(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / request.param.replace(":", "-")
    vecs = write_synthetic(out, request.param, n=N if not request.param.startswith("opq") else 800)
    return request.param, ReferenceIndex(out), vecs


def exact_top(index: ReferenceIndex, q: np.ndarray, rows: np.ndarray, k: int) -> set[int]:
    scores = np.asarray(index.descriptors[rows], dtype=np.float32) @ q
    return set(rows[np.argsort(-scores, kind="stable")[:k]].tolist())


def queries(vecs: np.ndarray, n: int = 20) -> np.ndarray:
    rng = np.random.default_rng(7)
    q = vecs[rng.integers(0, len(vecs), n)] + 0.3 * rng.standard_normal((n, vecs.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_manifest_records_the_store_and_opening_maps_the_files(built):
    spec, index, _ = built
    m = index.manifest
    assert m.store.spec == spec == m.faiss_index and m.schema_version == 2
    assert m.store.params["exact"] == (spec == "fp16") and "IVF1" in m.store.params["factory"]
    assert m.store.trained_on == (0 if spec == "fp16" else len(index))
    assert isinstance(index.descriptors, np.memmap)  # nothing read into RAM up front
    assert isinstance(index.codes.base if spec == "fp16" else index.codes, np.memmap)
    km = index.schemes["kmeans-5"]
    assert isinstance(km.codes, np.memmap) and km.codes.shape == index.codes.shape


@pytest.mark.parametrize("submap", ["global", "country:FR", "kmeans-5:2", "country:ES,PT,JP", "kmeans-5:0,3",
                                    "radius:48.85,2.35,300"])
def test_submap_search_matches_exact_search_over_the_submap(built, submap):
    spec, index, vecs = built
    sel = index.resolve(submap)
    rows = index.selection_rows(sel)
    assert len(rows) == sel.size > 0
    hits = 0
    for q in queries(vecs):
        got, scores = index.search(q, sel, k=10)
        assert set(got.tolist()) <= set(rows.tolist())  # never leaves the submap
        assert np.all(np.diff(scores) <= 1e-6)
        np.testing.assert_allclose(scores, np.asarray(index.descriptors[got], dtype=np.float32) @ q, rtol=1e-5, atol=1e-5)
        hits += len(set(got.tolist()) & exact_top(index, q, rows, 10))
    recall = hits / (10 * 20)
    assert recall == 1.0 if spec == "fp16" else recall >= 0.95, f"{spec} {submap}: recall@10 {recall}"


def test_exclusion_works_for_every_store(built):
    _, index, vecs = built
    q = queries(vecs)[0]
    rows, _ = index.search(q, index.resolve("kmeans-5:1"), k=20, exclude_authors=frozenset({"a0", "a1"}))
    assert len(rows) == 20 and not {index.row(int(r))["author"] for r in rows} & {"a0", "a1"}


def test_bad_store_specs_are_clear_errors():
    for spec, match in [("ivf", "available: fp16"), ("pq:x", "integer"), ("pq:0", ">= 1"), ("fp16:2", "no parameter"), ("pq:8x20", "<= 16")]:
        with pytest.raises(StoreSpecError, match=match):
            parse_store(spec)
    with pytest.raises(ValueError, match="must divide"):
        parse_store("pq:5").factory(DIM)


@pytest.mark.parametrize(("store", "n", "needed"), [("pq:4x8", 255, 256), ("opq:4x6", 255, 256), ("pq:4x6", 63, 64)])
def test_a_map_too_small_for_its_quantizer_is_a_clear_error(tmp_path, store, n, needed):
    """FAISS's k-means asserts a point per centroid; the writer says so in geoguide's words (exit 2)."""
    with pytest.raises(StoreSpecError, match=f"needs at least that many.*this map has {n}") as e:
        write_synthetic(tmp_path / "idx", store, n=n)
    assert f"learns {needed} centroids" in str(e.value)
    write_synthetic(tmp_path / "ok", store, n=needed)  # one point per centroid is enough


def test_a_version_1_index_still_opens_and_searches(tmp_path):
    """Indices written before stores: no store entry, no codes copies; fp16 over the descriptors."""
    out = tmp_path / "v1"
    vecs = write_synthetic(out, "fp16", n=500)
    m = json.loads((out / "manifest.json").read_text())
    m.update(schema_version=1, faiss_index="fp16")
    del m["store"]
    for s in m["schemes"]:
        (out / s["codes"]).unlink() if s["codes"] else None
        m["files"].pop(s["codes"], None) if s["codes"] else None
        s.pop("codes")
    (out / "manifest.json").write_text(json.dumps(m))
    index = ReferenceIndex(out)
    sel = index.resolve("kmeans-5:1")
    assert sel.rows is not None and not sel.permuted  # gathered, as before
    q = queries(vecs)[0]
    got, _ = index.search(q, sel, k=5)
    assert set(got.tolist()) == exact_top(index, q, index.selection_rows(sel), 5)


def test_row_of_finds_every_id_by_binary_search(built):
    _, index, _ = built
    assert "refs/id_order.npy" in index.manifest.files
    for row in (0, 1, len(index) // 2, len(index) - 1):
        assert index.row_of(index.row(row)["ref_id"]) == row
    assert index.row_of("r") is None and index.row_of("zzz") is None and index.row_of("") is None


def test_index_build_store_flags(synthetic_refs, tmp_path, capsys):
    from geoguide.app.cli import main

    root, _ = synthetic_refs
    args = ["index", "build", "--images", str(root / "images"), "--labels", str(root / "labels.csv"),
            "--descriptor", "thumbnail", "--submaps", "country,kmeans:3"]
    assert main([*args, "--out", str(tmp_path / "a"), "--store", "pq:7"]) == 2
    assert "M=7 must divide the descriptor dimension 768" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main([*args, "--out", str(tmp_path / "b"), "--faiss-index", "flat"]) == 0
    assert "--faiss-index is deprecated" in capsys.readouterr().err
    assert ReferenceIndex(tmp_path / "b").manifest.store.spec == "fp16"
    assert main([*args, "--out", str(tmp_path / "c"), "--store", "sq8"]) == 0
    assert ReferenceIndex(tmp_path / "c").store.spec == "sq8"


class _RowsOnDemand:
    """A part that is not an array: rows made when asked, as benchmarks/scale.py's generated rows."""

    def __init__(self, rows: np.ndarray):
        self._rows, self.shape, self.dtype = rows, rows.shape, rows.dtype
        self.asked = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        self.asked += len(idx)
        return self._rows[np.asarray(idx)].copy()


@pytest.mark.parametrize("store", ["fp16", "pq:8x6"])
def test_descriptors_given_as_parts_write_the_same_index(tmp_path, store):
    """A build hands its chunks (or a generator its rows) as parts: never joined, same bytes."""
    whole = tmp_path / "whole"
    vecs = write_synthetic(whole, store, n=600)
    rng = np.random.default_rng(0)
    place = rng.integers(0, len(PLACES), 600)
    lat = np.array([PLACES[p][1] for p in place]) + rng.normal(0, 0.3, 600)
    lon = np.array([PLACES[p][2] for p in place]) + rng.normal(0, 0.3, 600)
    lazy = _RowsOnDemand(vecs[450:].astype(np.float16))
    parts = [vecs[:200], np.zeros((0, DIM), np.float32), vecs[200:450].astype(np.float16), lazy]
    ids = [f"r{i:05d}" for i in range(600)]
    write_index(tmp_path / "parts", ids=ids, authors=[f"a{i % 7}" for i in range(600)], paths=ids, lat=lat,
                lon=lon, country=np.array([PLACES[p][3] for p in place]), descriptors=parts,
                descriptor=SyntheticDescriptor({"dim": DIM}), schemes=parse_schemes("country,kmeans:5"),
                source=SourceInfo(labels="synthetic"), store=store)
    a, b = ReferenceIndex(whole), ReferenceIndex(tmp_path / "parts")
    assert lazy.asked >= 150  # it was read through its own indexing, not converted up front
    np.testing.assert_array_equal(np.asarray(a.descriptors), np.asarray(b.descriptors))
    codes = a.manifest.store.codes
    assert (whole / codes).read_bytes() == (tmp_path / "parts" / codes).read_bytes()
    with pytest.raises(ValueError, match="descriptor rows for"):
        write_index(tmp_path / "short", ids=ids, authors=ids, paths=ids, lat=lat, lon=lon,
                    country=np.array([PLACES[p][3] for p in place]), descriptors=parts[:2],
                    descriptor=SyntheticDescriptor({"dim": DIM}), schemes=parse_schemes("country"),
                    source=SourceInfo(labels="synthetic"), store=store)
