"""Index updates at 1M and 5M references: add 1,000, remove 1,000, and search with segments.

For each size (``--sizes``), a synthetic 256-d fp16 index is written once with
``benchmarks/scale.py``'s generator and writer (country + kmeans:100 submaps; kept in ``--work``
and reused). Then, timed on the shared machine with one thread:

* **add** — three times, 1,000 new references (rows from the same generator, at GeoCLIP gallery
  places) through ``indices.update.add_described``: the vectors are pre-described, so this is
  the index update alone (lock, open, id checks, the new segment, the manifest), not the CNN;
* **remove** — three times, 1,000 random existing references (``remove_references``);
* **search** p50, one thread, ``--queries`` queries x ``--rounds``, for a typical country
  (scale.py's choice: a mid-sized one of the 40 largest) and the whole map, with the 3 segments
  and the tombstones against the same map after ``index compact`` (timed too; run on a
  hard-linked copy, so both are open side by side and timed alternately, query by query, after
  an untimed pass that puts both in the page cache), and the ratio.

Add and remove are printed with their ratio to the 1M figure (the target is flat in the map
size, within 1.5x); the search ratio segmented / compacted targets 1.2x. What a process does
once whatever the size (the country tables' load, first calls into FAISS and numpy) is done
before the timings, by an untimed add and remove on a 20,000-reference scratch map, and dirty
pages are flushed (``os.sync``) before each timed step, so one step's write-back is not
charged to the next.

    df -h /tmp   # 5M x 256-d fp16 is 2.6 GB, twice over with the kmeans copy of the codes
    nice -n 10 .venv/bin/python benchmarks/update.py --sizes 1000000,5000000 \\
        --work /tmp/geoguide-update --json benchmarks/out/update.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from geoguide.core import atomic  # noqa: E402


@dataclass
class NewRow:
    image_id: str
    image_path: str
    lat: float
    lon: float
    author: str


def new_rows(n: int, dim: int, seed: int, tag: str = "") -> tuple[list[NewRow], np.ndarray]:
    """``n`` references as the generator makes them (places of the gallery, vectors around them)."""
    import scale

    rng = np.random.default_rng(seed)
    g = scale.gallery()
    pick = rng.integers(0, len(g), n)
    lat = np.clip(g[pick, 0] + rng.normal(0, 0.05, n), -89.9, 89.9)
    lon = (g[pick, 1] + rng.normal(0, 0.05, n) + 180) % 360 - 180
    vecs = scale.Mixture(dim).sample(pick % scale.N_PLACES, rng).astype(np.float16)
    rows = [NewRow(f"new{tag}{seed:03d}-{i:06d}", f"new{tag}{seed:03d}-{i:06d}.jpg", float(a), float(o),
                   f"newauthor{i % 97}")
            for i, (a, o) in enumerate(zip(lat, lon, strict=True))]
    return rows, vecs


def searches(a_dir: Path, b_dir: Path, queries: np.ndarray, targets: dict[str, str],
             rounds: int) -> dict[str, tuple[float, float]]:
    """p50 ms of each target on index a and index b, timed alternately query by query (the shared
    machine's load drifts; alternating puts the same drift on both), after one untimed pass."""
    from geoguide.indices.store import ReferenceIndex

    a, b = ReferenceIndex(a_dir), ReferenceIndex(b_dir)
    out = {}
    for label, sid in targets.items():
        sa, sb = a.resolve(sid), b.resolve(sid)
        times: dict[str, list[float]] = {"a": [], "b": []}
        for r in range(rounds + 1):
            for q in queries:
                for name, index, sel in (("a", a, sa), ("b", b, sb)) if r % 2 else (("b", b, sb), ("a", a, sa)):
                    t = time.perf_counter()
                    index.search(q, sel, k=10)
                    if r:  # round 0 warms the page cache
                        times[name].append((time.perf_counter() - t) * 1000)
        out[label] = (round(float(np.median(times["a"])), 3), round(float(np.median(times["b"])), 3))
    return out


def run(n: int, dim: int, work: Path, n_update: int, n_queries: int, rounds: int) -> dict:
    import faiss
    import scale

    from geoguide.indices.store import ReferenceIndex
    from geoguide.indices.update import add_described, compact_index, remove_references

    faiss.omp_set_num_threads(1)
    out = work / f"n{n}-d{dim}-fp16"
    if not (out / "manifest.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        print(f"building {n:,} x {dim}-d synthetic references ...", flush=True)
        print(f"  written in {scale.build(n, dim, 'fp16', out):.0f} s", flush=True)
    if ReferenceIndex(out).manifest.segments or ReferenceIndex(out).manifest.tombstones:
        print("  compacting what an earlier run left ...", flush=True)
        compact_index(out)

    index = ReferenceIndex(out)
    base_n, tag = len(index), f"g{index.manifest.generation}-"  # ids new to the map on every run
    rng = np.random.default_rng(7)
    queries = scale.Mixture(dim).sample(rng.integers(0, scale.N_PLACES, n_queries), rng)
    countries = index.list_submaps("country")
    sizes = np.array([c.size for c in countries])
    typical = countries[int(np.argmin(np.abs(sizes - np.median(sizes[:40]))))]
    targets = {"typical country": typical.id, "global": "global"}

    res: dict = {"n": base_n, "dim": dim, "typical_country": typical.id, "add_s": [], "remove_s": []}
    for seed in range(3):
        rows, vecs = new_rows(n_update, dim, seed=100 + seed, tag=tag)
        os.sync()  # the write-back of what came before (a build, a compaction) is not this update's
        t = time.perf_counter()
        rep = add_described(out, rows, vecs)
        res["add_s"].append(round(time.perf_counter() - t, 3))
        assert rep.n_added == n_update, rep
    live = index.live_column("id")
    ids = live[np.random.default_rng(len(live)).choice(len(live), size=3 * n_update, replace=False)]
    for part in np.split(ids, 3):
        wanted = [b.decode() for b in part]
        os.sync()
        t = time.perf_counter()
        rep = remove_references(out, wanted, reason="benchmark")
        res["remove_s"].append(round(time.perf_counter() - t, 3))
        assert rep.n_removed == n_update, rep
    del index
    m = ReferenceIndex(out).manifest
    res["segments"], res["tombstones"] = len(m.segments), m.tombstones.n
    # Compact a hard-linked copy, so both versions can be searched side by side.
    copy = work / f"{out.name}.compacted"
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-al", str(out), str(copy)], check=True)
    os.sync()
    t = time.perf_counter()
    compact_index(copy)
    res["compact_s"] = round(time.perf_counter() - t, 1)
    timed = searches(out, copy, queries, targets, rounds)
    res["search_segmented_ms"] = {label: a for label, (a, _) in timed.items()}
    res["search_compacted_ms"] = {label: b for label, (_, b) in timed.items()}
    res["n_after"] = len(ReferenceIndex(copy))
    shutil.rmtree(out)
    copy.rename(out)  # the next run starts from the compacted map
    return res


def warm_up(work: Path, dim: int) -> None:
    """An untimed add and remove on a small scratch map: the process's one-time costs, paid here."""
    import scale

    from geoguide.indices.update import add_described, remove_references

    scratch = work / "warm-up"
    shutil.rmtree(scratch, ignore_errors=True)
    scale.build(20_000, dim, "fp16", scratch)
    rows, vecs = new_rows(100, dim, seed=1)
    add_described(scratch, rows, vecs)
    remove_references(scratch, [r.image_id for r in rows[:50]] + [f"r{i:08d}" for i in range(50)], reason="warm-up")
    shutil.rmtree(scratch)


def report(results: list[dict]) -> None:
    first = results[0]
    med = lambda xs: float(np.median(xs))  # noqa: E731
    print(f"\n{'references':>12} {'add 1,000 s':>12} {'x 1M':>6} {'remove 1,000 s':>15} {'x 1M':>6} "
          f"{'compact s':>10}")
    for r in results:
        print(f"{r['n']:>12,} {med(r['add_s']):>12.3f} {med(r['add_s']) / med(first['add_s']):>6.2f} "
              f"{med(r['remove_s']):>15.3f} {med(r['remove_s']) / med(first['remove_s']):>6.2f} {r['compact_s']:>10.1f}")
    print("  medians of 3 (each add one new segment, each remove one new tombstone file); all: "
          + "; ".join(f"{r['n']:,}: add {r['add_s']} remove {r['remove_s']}" for r in results))
    print(f"\nsearch p50, one thread, k=10: with the segments and tombstones ({results[0]['segments']} segments, "
          f"{results[0]['tombstones']:,} tombstones) / after index compact")
    print(f"{'references':>12} {'search area':<30} {'segmented ms':>13} {'compacted ms':>13} {'ratio':>6}")
    for r in results:
        for label in r["search_segmented_ms"]:
            seg, comp = r["search_segmented_ms"][label], r["search_compacted_ms"][label]
            area = f"{label} ({r['typical_country']})" if label == "typical country" else label
            print(f"{r['n']:>12,} {area:<30} {seg:>13.3f} {comp:>13.3f} {seg / comp:>6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--updates", type=int, default=1000, help="references per add and per remove")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4, help="timed passes over the queries, per index and area")
    ap.add_argument("--work", default="/tmp/geoguide-update")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--report", help="print the tables of an earlier --json file and stop")
    args = ap.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"free in {work}: {shutil.disk_usage(work).free / 1e9:.1f} GB", flush=True)
    warm_up(work, args.dim)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        results.append(run(n, args.dim, work, args.updates, args.queries, args.rounds))
        print(results[-1], flush=True)
        if args.json_out:  # after every size: a long sweep that dies keeps what it measured
            atomic.write_json(args.json_out, results)
    report(results)


if __name__ == "__main__":
    main()
