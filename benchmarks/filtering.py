"""The figures behind ``indices/filtering.py``: the near-duplicate threshold and the speed of both rules.

1. **Threshold** (on the shared split): the 128-bit dHash distance between each photo and a JPEG q50
   re-encode, a half-size copy, a +10 brightness copy and a 1% crop of it (share within ``--bits``,
   max), and between every pair of *different* photos (closest pair, pairs within ``--bits``).
2. **Speed at scale** (synthetic): the leakage rule for ``--refs`` references against ``--queries``
   query points (``--km``), and the duplicate search over ``--codes`` random codes with 1% near
   copies planted (all must be found).

Prints the figures; ``--json PATH`` writes them.

    nice -n 10 .venv/bin/python benchmarks/filtering.py --json benchmarks/out/filtering.json
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


VARIANTS = {
    "jpeg_q50": lambda im: _jpeg(im, 50),
    "half_size": lambda im: im.resize((im.width // 2, im.height // 2), Image.BILINEAR),
    "brightness_plus_10": lambda im: Image.fromarray(np.clip(np.asarray(im, np.int16) + 10, 0, 255).astype(np.uint8)),
    "crop_1pct": lambda im: im.crop((im.width // 100, im.height // 100, im.width - im.width // 100, im.height - im.height // 100)),
}


def threshold(data: Path, n: int, bits: int) -> dict:
    from geoguide.core.images import load_image
    from geoguide.indices.filtering import dhash128

    paths = sorted((data / "images").glob("*.jpg"))[:n]
    images = [load_image(p) for p in paths]
    codes = np.stack([dhash128(im) for im in images])
    out: dict = {"n_photos": len(paths), "bits": bits, "variants": {}}
    for name, make in VARIANTS.items():
        d = np.array([np.unpackbits(c ^ dhash128(make(im))).sum() for c, im in zip(codes, images, strict=True)])
        out["variants"][name] = {"share_within": round(float((d <= bits).mean()), 4), "max": int(d.max()),
                                 "p99": float(np.percentile(d, 99))}
    pair = np.unpackbits(codes[:, None, :] ^ codes[None, :, :], axis=-1).sum(-1)
    apart = pair[np.triu_indices(len(codes), 1)]
    out["different_photos"] = {"pairs": int(len(apart)), "closest": int(apart.min()),
                               "pairs_within": int((apart <= bits).sum())}
    return out


def speed(n_refs: int, n_queries: int, km: float, n_codes: int, bits: int) -> dict:
    from geoguide.indices.filtering import ExcludeNear, QueryPoints, _near_code_pairs, near_queries

    rng = np.random.default_rng(0)

    def sphere(n):
        return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)

    qlat, qlon = sphere(n_queries)
    lat, lon = sphere(n_refs)
    lat[:1000], lon[:1000] = qlat[:1000] + 0.001, qlon[:1000]  # 1000 references 111 m from a query
    points = QueryPoints(spec=ExcludeNear(labels="synthetic", km=km, n_points=n_queries, digest=""),
                         ids=[str(i) for i in range(n_queries)], lat=qlat.tolist(), lon=qlon.tolist())
    t = time.perf_counter()
    within, _, _ = near_queries(lat, lon, points)
    exclusion_s = time.perf_counter() - t
    codes = rng.integers(0, 256, size=(n_codes, 16), dtype=np.uint8)
    order = rng.permutation(n_codes)
    planted, sources = order[: n_codes // 100], order[n_codes // 100 : 2 * (n_codes // 100)]
    codes[planted] = codes[sources]
    for r in planted:
        for b in rng.choice(128, bits, replace=False):
            codes[r, b // 8] ^= 1 << (b % 8)
    t = time.perf_counter()
    a, b, _ = _near_code_pairs(np.unique(codes, axis=0), bits)
    dedupe_s = time.perf_counter() - t
    return {"exclusion": {"refs": n_refs, "queries": n_queries, "km": km, "seconds": round(exclusion_s, 2),
                          "removed": int(within.sum())},
            "dedupe": {"codes": n_codes, "bits": bits, "planted": len(planted), "pairs_found": int(len(a)),
                       "seconds": round(dedupe_s, 2)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--photos", type=int, default=1630)
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--refs", type=int, default=5_000_000)
    ap.add_argument("--queries", type=int, default=210_000, help="OSV-5M's test set has 210k images")
    ap.add_argument("--km", type=float, default=1.0)
    ap.add_argument("--codes", type=int, default=1_000_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    result: dict = {"machine_cpus": os.cpu_count(), "load_average": list(os.getloadavg())}
    if (args.data / "images").is_dir():
        result["threshold"] = threshold(args.data, args.photos, args.bits)
        th = result["threshold"]
        print(f"dHash-128 on {th['n_photos']} photos of the shared split, threshold {args.bits} bits:")
        for name, v in th["variants"].items():
            print(f"  {name:<20} {100 * v['share_within']:5.1f}% within, p99 {v['p99']:.0f}, max {v['max']}")
        d = th["different_photos"]
        print(f"  different photos: closest pair {d['closest']} bits, {d['pairs_within']} of {d['pairs']} pairs within")
    else:
        print(f"no shared split at {args.data}: threshold figures skipped")
    result["speed"] = sp = speed(args.refs, args.queries, args.km, args.codes, args.bits)
    e, dd = sp["exclusion"], sp["dedupe"]
    print(f"leakage rule: {e['refs']:,} references x {e['queries']:,} queries within {e['km']} km: "
          f"{e['seconds']} s, {e['removed']} removed (1000 planted)")
    print(f"duplicate search: {dd['codes']:,} codes, {dd['planted']:,} near copies planted "
          f"({dd['bits']} bits flipped): {dd['pairs_found']:,} pairs found in {dd['seconds']} s (one thread)")
    if args.json:
        from geoguide.core import atomic

        atomic.write_json(args.json, result)


if __name__ == "__main__":
    main()
