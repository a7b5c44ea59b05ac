"""Search latency and memory at 100k / 1M / 5M references: whole map vs one country submap.

Descriptors are synthetic (random unit vectors: flat search cost does not depend on their
content); coordinates follow a realistic distribution — the 100K-point GPS gallery shipped in
the ``geoclip`` package, each point jittered by ~5 km and repeated. Every index is built with
the real writer (country + kmeans:100 submaps, fp16 FAISS store) and opened in a fresh process,
so the resident memory is that of a query process. Prints a table; writes JSON with ``--json``.

    .venv/bin/python benchmarks/scale.py --sizes 100000,1000000,5000000 --work /tmp/geoguide-scale
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


def gallery() -> np.ndarray:
    """GeoCLIP's 100K GPS gallery, read from the package's data file (its code needs pandas/torchvision)."""
    import importlib.util

    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("benchmarks/scale.py needs the geoclip package (make setup installs it, --no-deps)")
    path = Path(spec.submodule_search_locations[0]) / "model" / "gps_gallery" / "coordinates_100K.csv"
    return np.loadtxt(path, delimiter=",", skiprows=1)


def build(n: int, n_dims: int, out: Path) -> float:
    from indices.descriptors.base import Descriptor
    from indices.geography import countries_at
    from indices.manifest import SourceInfo
    from indices.submaps import parse_schemes
    from indices.writer import write_index

    class Synthetic(Descriptor):
        """Stands in for a real descriptor: only its dimension matters to search cost."""

        name = "synthetic"
        default_conf = {"dim": n_dims}

        @property
        def dim(self) -> int:
            return int(self.conf["dim"])

        def extract(self, images):
            raise NotImplementedError

    rng = np.random.default_rng(0)
    g = gallery()
    pick = rng.integers(0, len(g), n)
    lat = np.clip(g[pick, 0] + rng.normal(0, 0.05, n), -89.9, 89.9)
    lon = (g[pick, 1] + rng.normal(0, 0.05, n) + 180) % 360 - 180
    desc = np.empty((n, n_dims), dtype=np.float16)
    for s in range(0, n, 500_000):
        x = rng.standard_normal((min(500_000, n - s), n_dims)).astype(np.float32)
        desc[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    t = time.perf_counter()
    country = countries_at(lat, lon)
    ids = [f"r{i:08d}" for i in range(n)]
    write_index(out, ids=ids, authors=[f"a{i % 50000}" for i in range(n)], paths=ids, lat=lat, lon=lon,
                country=country, descriptors=desc, descriptor=Synthetic(), schemes=parse_schemes("country,kmeans:100"),
                faiss_index="fp16", source=SourceInfo(labels="synthetic"))
    return time.perf_counter() - t


def measure(index_dir: str, n_queries: int) -> dict:
    """Runs in a fresh process: open the index, time single-thread searches, report RSS."""
    import faiss
    import psutil

    from indices.store import ReferenceIndex

    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    index = ReferenceIndex(index_dir, verify=False)
    open_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    dim = index.manifest.descriptor.dim
    countries = index.list_submaps("country")
    sizes = np.array([c.size for c in countries])
    typical = countries[int(np.argmin(np.abs(sizes - np.median(sizes[:40]))))]  # a mid-sized country of the top 40
    targets = {"global": "global", f"largest country ({countries[0].id})": countries[0].id,
               f"typical country ({typical.id})": typical.id, "kmeans cluster": index.list_submaps("kmeans-100")[50].id}
    out = {"n": len(index), "open_s": round(open_s, 2), "search": {}}
    for label, sid in targets.items():
        sel = index.resolve(sid)
        lat = []
        for _ in range(n_queries):
            q = rng.standard_normal(dim).astype(np.float32)
            q /= np.linalg.norm(q)
            t = time.perf_counter()
            index.search(q, sel, k=20)
            lat.append((time.perf_counter() - t) * 1000)
        out["search"][label] = {"submap": sid, "size": sel.size, "p50_ms": round(float(np.percentile(lat, 50)), 3),
                                "p95_ms": round(float(np.percentile(lat, 95)), 3)}
    out["rss_gb"] = round(psutil.Process().memory_info().rss / 2**30, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--dim", type=int, default=256)
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
        out = Path(args.work) / f"n{n}"
        if not (out / "manifest.json").exists():
            print(f"building {n:,} synthetic references ...", flush=True)
            print(f"  written in {build(n, args.dim, out):.0f} s", flush=True)
        r = subprocess.run([sys.executable, __file__, "--measure", str(out), "--queries", str(args.queries)],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        results.append(res)
        g = res["search"]["global"]["p50_ms"]
        print(f"\nN = {res['n']:,} ({args.dim}-d fp16), query-process RSS {res['rss_gb']} GB, open {res['open_s']} s")
        print(f"  {'search area':<34} {'refs':>9} {'p50 ms':>8} {'p95 ms':>8} {'speed-up':>9}")
        for label, s in res["search"].items():
            print(f"  {label:<34} {s['size']:>9,} {s['p50_ms']:>8.2f} {s['p95_ms']:>8.2f} {g / s['p50_ms']:>8.1f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
