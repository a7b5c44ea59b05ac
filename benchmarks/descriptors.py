"""Descriptor extraction throughput and retrieval-only accuracy on the shared split.

For each descriptor: build (or reuse) an index of the whole split, timing extraction; then, for
every image, search the whole map for the nearest reference by ANOTHER photographer (leave-one-
photographer-out) and take its coordinates as the answer. Prints images/s and accuracy within
1 / 25 / 200 / 750 / 2500 km, plus the oracle ceiling (nearest other-photographer reference by GPS).

    .venv/bin/python benchmarks/descriptors.py [--data ../shared/data/im2gps3k] [--descriptors effnet-gem,densevlad]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def throughput(name: str, paths: list[Path], n: int = 100, threads: int = 1) -> float:
    """Images/s of load + extract, single process, ``threads`` torch/OpenCV/FAISS threads."""
    import cv2
    import faiss
    import torch

    from geoguide.core.images import load_image
    from geoguide.indices.descriptors import get_descriptor

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    faiss.omp_set_num_threads(threads)
    desc = get_descriptor(name)
    if desc.trainable and not desc.is_fitted:
        desc.fit([load_image(p) for p in paths[:100]])
    batch = 16
    desc.extract([load_image(p) for p in paths[:2]])  # warm-up
    t = time.perf_counter()
    for s in range(0, n, batch):
        desc.extract([load_image(p) for p in paths[s : s + batch]])
    return n / (time.perf_counter() - t)


def retrieval_errors(index) -> np.ndarray:
    """Top-1 leave-one-photographer-out error (km) of every reference, searching the whole map."""
    from geoguide.geo.geometry import haversine_km

    sel = index.resolve("global")
    errors = np.empty(len(index))
    for i in range(len(index)):
        row = index.row(i)
        q = np.asarray(index.descriptors[i], dtype=np.float32)
        rows, _ = index.search(q, sel, 1, exclude_authors=frozenset({row["author"]}))
        j = int(rows[0])
        errors[i] = haversine_km(row["lat"], row["lon"], index.refs["lat"][j], index.refs["lon"][j])
    return errors


def oracle_errors(index) -> np.ndarray:
    from geoguide.geo.geometry import haversine_km

    lat, lon = np.asarray(index.refs["lat"]), np.asarray(index.refs["lon"])
    authors = np.asarray(index.refs["author"])
    out = np.empty(len(index))
    for i in range(len(index)):
        d = haversine_km(lat[i], lon[i], lat, lon)
        d[authors == authors[i]] = np.inf
        out[i] = d.min()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/im2gps3k")
    ap.add_argument("--descriptors", default="effnet-gem,densevlad")
    ap.add_argument("--work", default="benchmarks/out")
    ap.add_argument("--throughput-images", type=int, default=96)
    args = ap.parse_args()

    from geoguide.eval.metrics import markdown_table, summarize
    from geoguide.indices.build import BuildConfig, build_index
    from geoguide.indices.photosets import load_dataset
    from geoguide.indices.store import ReferenceIndex

    data = Path(args.data)
    samples = load_dataset("csv", labels=data / "labels.csv", images=data / "images").samples
    paths = [s.image_path for s in samples]
    summaries, speed, index = {}, {}, None
    for name in args.descriptors.split(","):
        out = Path(args.work) / f"index-{name}"
        t = time.perf_counter()
        if not (out / "manifest.json").exists():
            build_index(samples, out, BuildConfig(descriptor=name), progress=True)
            speed[f"{name} full build (2 threads, incl. fit)"] = len(samples) / (time.perf_counter() - t)
        for threads in (1, 2):
            speed[f"{name} ({threads} thread{'s' * (threads > 1)})"] = throughput(name, paths, args.throughput_images, threads)
        index = ReferenceIndex(out)
        if index.n_rows != len(index):  # rows are numbered 0..n-1 below: no segments or removed rows
            raise SystemExit(f"{out}: has added segments or removed rows; run geoguide index compact first")
        lat, lon = np.asarray(index.refs["lat"]), np.asarray(index.refs["lon"])
        summaries[f"retrieval only, {name}"] = summarize(retrieval_errors(index), lat, lon, by_continent=False)
    if index is not None:
        lat, lon = np.asarray(index.refs["lat"]), np.asarray(index.refs["lon"])
        summaries["oracle: nearest other-photographer reference"] = summarize(oracle_errors(index), lat, lon,
                                                                              by_continent=False)
    print("\nextraction throughput (load + describe, images/s):")
    for k, v in speed.items():
        print(f"  {k:<45} {v:7.1f}")
    print("\nretrieval-only accuracy, leave-one-photographer-out, shared split:\n")
    print(markdown_table(summaries))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (Path(args.work) / "descriptors.json").write_text(
        json.dumps({"throughput": speed, "summaries": {k: v.model_dump() for k, v in summaries.items()}}, indent=2))


if __name__ == "__main__":
    main()
