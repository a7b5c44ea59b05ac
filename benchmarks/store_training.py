"""How long a compressed store's quantizer takes to train, with and without FAISS's polysemous step.

``index_factory`` turns on polysemous training for 8-bit PQ (``do_polysemous_training``): it
reorders each sub-quantizer's centroids so Hamming distances between codes approximate real ones,
for FAISS's polysemous filtering. geoguide's scanner never uses it, so ``Store.create`` switches it
off. This script trains the store's own FAISS object both ways on the same sample (single thread,
median of ``--repeats``) and prints the ratio; ``--json`` writes the figures. Measured on the
shared 2-core machine: pq:96 on 5,000 x 768-d 10.3 s off, 208.3 s on (20.3x).

    nice -n 10 .venv/bin/python benchmarks/store_training.py --dim 768 --m 96 --n 5000 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geoguide.core import atomic  # noqa: E402
from geoguide.indices.stores import parse_store  # noqa: E402


def train_seconds(spec: str, sample: np.ndarray, polysemous: bool) -> float:
    import faiss

    store = parse_store(spec)
    store.create(sample.shape[1])  # as geoguide builds it: polysemous training off
    ivf = faiss.downcast_index(faiss.extract_index_ivf(store._require()))
    ivf.do_polysemous_training = polysemous
    t = time.perf_counter()
    store._require().train(sample)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--m", type=int, default=96, help="sub-quantizers (the store is pq:M)")
    ap.add_argument("--n", type=int, default=5000, help="training vectors")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    sample = np.random.default_rng(0).standard_normal((args.n, args.dim)).astype(np.float32)
    spec = f"pq:{args.m}"
    runs = {name: [train_seconds(spec, sample, poly) for _ in range(args.repeats)]
            for name, poly in (("geoguide (polysemous off)", False), ("index_factory default (on)", True))}
    med = {name: statistics.median(ts) for name, ts in runs.items()}
    off, on = med["geoguide (polysemous off)"], med["index_factory default (on)"]
    print(f"{spec} on {args.n:,} x {args.dim}-d, one thread, median of {args.repeats}:")
    for name, s in med.items():
        print(f"  {name:<28} {s:8.1f} s")
    print(f"  polysemous training costs {on / off:.1f}x")
    if args.json:
        atomic.write_json(args.json, {"spec": spec, "n": args.n, "dim": args.dim, "runs_s": runs, "ratio": on / off})


if __name__ == "__main__":
    main()
