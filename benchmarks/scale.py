"""Search latency, memory, opening time and recall at 1M-20M references, per store and dimension.

Descriptors are synthetic but structured like real ones: a two-level Gaussian mixture whose 32
top components are K-means centres of the shared split's real effnet-gem descriptors
(``runs/idx-effnet/descriptors.f16.npy``, 1630 x 1280-d; a fixed random map takes them to the
target dimension), with the real within-cluster spread split between 4096 "places" and the
photos of a place. Each place sits at one point of GeoCLIP's 100K GPS gallery (jittered ~5 km),
so a country's references share places, as real ones do. Without the real file the centres are
random (said in the output). Uniform random vectors would make compressed-store recall
meaningless.

Every index is built with the real writer (country + kmeans:100 submaps, the chosen store) and
measured in a fresh process, so RSS and opening time are a query process's. Per run it prints and
writes (``--json``): n, dim, store, rss_gb, open_s, recall_at_10 (whole map, against exact search
of the same fp16 data), and p50/p95 ms, single thread, for the whole map, the largest country, a
typical country and a K-means cluster (first pass, then ``p50_ms_cached``: the same queries again,
which matters once the fp16 file that re-scores a compressed store's shortlist outgrows RAM), plus a plain FAISS ``IndexScalarQuantizer`` fp16 scan of the
whole map for comparison (``faiss_flat_ms``).

    nice -n 10 .venv/bin/python benchmarks/scale.py --sizes 1000000 --dims 256,768 --store fp16,pq:64 \\
        --work /tmp/geoguide-scale --json benchmarks/out/scale.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL = REPO / "runs" / "idx-effnet" / "descriptors.f16.npy"
N_COMPONENTS, N_PLACES = 32, 4096
BUILD_CHUNK = 250_000
FLAT_MAX = 2_000_000  # above it, the in-RAM FAISS comparison index would crowd a 24 GB machine

from geoguide.core import atomic  # noqa: E402
from geoguide.indices.descriptors.base import Descriptor  # noqa: E402


class SyntheticDescriptor(Descriptor):
    """Stands in for a real descriptor: vectors are made by the caller, never extracted."""

    name = "synthetic"
    default_conf = {"dim": 256}

    @property
    def dim(self) -> int:
        return int(self.conf["dim"])

    def extract(self, images):
        raise NotImplementedError


def gallery() -> np.ndarray:
    """GeoCLIP's 100K GPS gallery, read from the package's data file (its code needs pandas/torchvision)."""
    import importlib.util

    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("benchmarks/scale.py needs the geoclip package (make setup installs it, --no-deps)")
    path = Path(spec.submodule_search_locations[0]) / "model" / "gps_gallery" / "coordinates_100K.csv"
    return np.loadtxt(path, delimiter=",", skiprows=1)


class Mixture:
    """Component centres (fitted to real descriptors when present) -> places -> photos, unit norm."""

    def __init__(self, dim: int, seed: int = 0):
        import faiss

        rng = np.random.default_rng(seed)
        if REAL.exists():
            real = np.load(REAL).astype(np.float32)
            km = faiss.Kmeans(real.shape[1], N_COMPONENTS, niter=20, seed=seed, spherical=True)
            km.train(real)
            _, assign = km.index.search(real, 1)
            spread = float(np.mean(np.linalg.norm(real - km.centroids[assign[:, 0]], axis=1)))
            lift = rng.standard_normal((real.shape[1], dim)).astype(np.float32) / np.sqrt(dim)
            centres = km.centroids @ lift
            self.source = f"fitted to {len(real)} real effnet-gem descriptors (within-cluster spread {spread:.2f})"
        else:
            centres, spread = rng.standard_normal((N_COMPONENTS, dim)).astype(np.float32), 0.7
            self.source = "random centres (runs/idx-effnet/descriptors.f16.npy not found)"
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        self.step = spread / np.sqrt(2 * dim)  # half the variance between places, half within one
        noise = rng.standard_normal((N_PLACES, dim)).astype(np.float32) * self.step
        self.places = centres[np.arange(N_PLACES) % N_COMPONENTS] + noise

    def sample(self, place: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = self.places[place] + rng.standard_normal((len(place), self.places.shape[1])).astype(np.float32) * self.step
        return x / np.linalg.norm(x, axis=1, keepdims=True)


class GeneratedRows:
    """Descriptor rows made on demand, never stored: row ``i`` is a fresh draw around ``place[i]``.

    ``write_index`` takes it as a part (``shape``, ``dtype``, rows by an index array) and reads it
    a chunk at a time, so 20M x 768-d (30.7 GB as fp16) is written on a 24 GB machine with no
    source copy on disk. A row asked for twice (the quantizer's training sample, then the write)
    is drawn twice; the written fp16 file is the data every figure is measured against.
    """

    dtype = np.dtype(np.float16)

    def __init__(self, mix: Mixture, place: np.ndarray, seed: int = 0):
        self.mix, self.place = mix, place
        self.shape = (len(place), mix.places.shape[1])
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.mix.sample(self.place[rows], self._rng).astype(np.float16)


def build(n: int, dim: int, store: str, out: Path) -> float:
    from geoguide.geo import countries_at
    from geoguide.indices.manifest import SourceInfo
    from geoguide.indices.submaps import parse_schemes
    from geoguide.indices.writer import write_index

    rng = np.random.default_rng(0)
    g = gallery()
    pick = rng.integers(0, len(g), n)
    lat = np.clip(g[pick, 0] + rng.normal(0, 0.05, n), -89.9, 89.9)
    lon = (g[pick, 1] + rng.normal(0, 0.05, n) + 180) % 360 - 180
    mix = Mixture(dim)
    print(f"  descriptors: {mix.source}", flush=True)
    import faiss

    faiss.omp_set_num_threads(1)  # on 2 shared cores, OpenMP threads spin against each other
    t = time.perf_counter()
    ids = [f"r{i:08d}" for i in range(n)]
    write_index(out, ids=ids, authors=[f"a{i % 50000}" for i in range(n)], paths=ids, lat=lat, lon=lon,
                country=countries_at(lat, lon), descriptors=GeneratedRows(mix, pick % N_PLACES),
                descriptor=SyntheticDescriptor({"dim": dim}), schemes=parse_schemes("country,kmeans:100"),
                store=store, source=SourceInfo(labels="synthetic"))
    return time.perf_counter() - t


def _timed(fn, n: int) -> tuple[list[float], list]:
    times, results = [], []
    for i in range(n):
        t = time.perf_counter()
        results.append(fn(i))
        times.append((time.perf_counter() - t) * 1000)
    return times, results


def exact_top10(descriptors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-10 rows per query over the fp16 vectors, one chunk of rows at a time."""
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 10), dtype=np.int64)
    for s in range(0, len(descriptors), BUILD_CHUNK):
        scores = queries @ np.asarray(descriptors[s : s + BUILD_CHUNK], dtype=np.float32).T
        top = np.argpartition(-scores, min(10, scores.shape[1] - 1), axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, top + s], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
    return best_i


def measure(index_dir: str, n_queries: int) -> dict:
    """Runs in a fresh process: open the index, time single-thread searches, recall, RSS."""
    import faiss
    import psutil

    from geoguide.indices.store import ReferenceIndex

    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    index = ReferenceIndex(index_dir)
    open_s = time.perf_counter() - t
    rss_open = psutil.Process().memory_info().rss / 2**30
    dim = index.manifest.descriptor.dim
    rng = np.random.default_rng(1)
    queries = Mixture(dim).sample(rng.integers(0, N_PLACES, n_queries), rng)
    countries = index.list_submaps("country")
    sizes = np.array([c.size for c in countries])
    typical = countries[int(np.argmin(np.abs(sizes - np.median(sizes[:40]))))]  # a mid-sized country of the top 40
    targets = {"global": "global", "largest country": countries[0].id, "typical country": typical.id,
               "kmeans cluster": index.list_submaps("kmeans-100")[50].id}
    out = {"n": len(index), "dim": dim, "store": index.manifest.store.spec, "open_s": round(open_s, 3),
           "rss_gb_after_open": round(rss_open, 3), "search": {}}
    found = {}
    for label, sid in targets.items():
        sel = index.resolve(sid)
        times, found[label] = _timed(lambda i, sel=sel: index.search(queries[i], sel, k=10)[0], n_queries)
        again, _ = _timed(lambda i, sel=sel: index.search(queries[i], sel, k=10)[0], n_queries)
        out["search"][label] = {"submap": sid, "size": sel.size, "p50_ms": round(float(np.percentile(times, 50)), 3),
                                "p95_ms": round(float(np.percentile(times, 95)), 3),
                                # the same queries again: what they read is in the page cache now
                                "p50_ms_cached": round(float(np.percentile(again, 50)), 3)}
    out["rss_gb"] = round(psutil.Process().memory_info().rss / 2**30, 3)
    # The comparison point: a plain FAISS fp16 scan of the same data, held in RAM (up to 2M rows).
    out["faiss_flat_ms"] = None
    if len(index) <= FLAT_MAX:
        flat = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        for s in range(0, len(index), BUILD_CHUNK):
            flat.add(np.asarray(index.descriptors[s : s + BUILD_CHUNK], dtype=np.float32))
        times, _ = _timed(lambda i: flat.search(queries[i : i + 1], 10)[1][0], n_queries)
        out["faiss_flat_ms"] = round(float(np.percentile(times, 50)), 3)
        del flat
    truth = exact_top10(index.descriptors, queries)
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found["global"], truth, strict=True))
    out["recall_at_10"] = round(hits / (10 * n_queries), 4)
    return out


def report(res: dict) -> None:
    g, flat = res["search"]["global"]["p50_ms"], res["faiss_flat_ms"]
    vs = f"plain FAISS fp16 scan {flat} ms (whole map / it: {g / flat:.2f}x)" if flat else "no plain FAISS comparison"
    print(f"\nN = {res['n']:,} x {res['dim']}-d, store {res['store']}: open {res['open_s']} s, RSS {res['rss_gb']} GB "
          f"({res['rss_gb_after_open']} GB after open), recall@10 {res['recall_at_10']}, {vs}")
    print(f"  {'search area':<18} {'submap':<16} {'refs':>11} {'p50 ms':>8} {'p95 ms':>8} {'speed-up':>9} {'cached p50':>11}")
    for label, s in res["search"].items():
        print(f"  {label:<18} {s['submap']:<16} {s['size']:>11,} {s['p50_ms']:>8.2f} {s['p95_ms']:>8.2f} "
              f"{g / s['p50_ms']:>8.1f}x {s.get('p50_ms_cached', float('nan')):>11.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000")
    ap.add_argument("--dims", default="256")
    ap.add_argument("--store", default="fp16", help="comma-separated store specs, e.g. fp16,pq:64")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--work", default="/tmp/geoguide-scale")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.queries)))
        return
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        for dim in (int(d) for d in args.dims.split(",")):
            for store in args.store.split(","):
                out = Path(args.work) / f"n{n}-d{dim}-{store.replace(':', '-')}"
                if not (out / "manifest.json").exists():
                    print(f"building {n:,} x {dim}-d synthetic references, store {store} ...", flush=True)
                    print(f"  written in {build(n, dim, store, out):.0f} s", flush=True)
                r = subprocess.run([sys.executable, __file__, "--measure", str(out), "--queries", str(args.queries)],
                                   capture_output=True, text=True, check=True)
                results.append(json.loads(r.stdout.strip().splitlines()[-1]))
                report(results[-1])
                if args.json_out:  # after every run: a long sweep that dies keeps what it measured
                    atomic.write_json(args.json_out, results)


if __name__ == "__main__":
    main()
