"""``make demo``: build an index of the shared split and locate a handful of its photos.

Each query searches only other photographers' references (the leakage rule) and uses the
recorded answers of a real VLM as its prior. Prints predicted place, true place and error.
Point ``GEOGUIDE_DATA`` at a folder holding ``images/``, ``labels.csv`` and
``prior_gemini-2.0-flash.csv`` (default ``../shared/data/im2gps3k``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

N_QUERIES = 6
PRIOR_FILE = "prior_gemini-2.0-flash.csv"


def main() -> int:
    data = Path(os.environ.get("GEOGUIDE_DATA", "../shared/data/im2gps3k")).expanduser()
    missing = [p for p in (data / "images", data / "labels.csv", data / PRIOR_FILE) if not p.exists()]
    if missing:
        print(f"geoguide demo: no benchmark data at {data.resolve()} (missing: {', '.join(p.name for p in missing)}).\n"
              "Point GEOGUIDE_DATA at the IM2GPS3k development split: a folder with images/, labels.csv "
              f"(IMG_ID,AUTHOR,LAT,LON) and {PRIOR_FILE}, e.g.\n"
              "  make demo GEOGUIDE_DATA=/path/to/shared/data/im2gps3k", file=sys.stderr)
        return 2
    from geoguide.agent.factory import build_context
    from geoguide.agent.graph import locate
    from geoguide.agent.settings import ContextSpec
    from geoguide.geo.geometry import haversine_km
    from geoguide.indices.build import BuildConfig, build_index
    from geoguide.indices.photosets import load_dataset
    from geoguide.tools.gazetteer import ReverseGeocodeArgs, reverse_geocode

    samples = load_dataset("csv", labels=data / "labels.csv", images=data / "images").samples
    out = Path(os.environ.get("GEOGUIDE_DEMO_OUT", "demo_out")) / "index-effnet-gem"
    t = time.perf_counter()
    if not (out / "manifest.json").exists():
        print(f"building the reference index: {len(samples)} photos, effnet-gem descriptor, country + kmeans:100 "
              f"submaps -> {out}", flush=True)
        build_index(samples, out, BuildConfig(descriptor="effnet-gem"), progress=True)
        print(f"built in {time.perf_counter() - t:.0f} s", flush=True)
    ctx = build_context(ContextSpec(index=out, vlm=f"replay:{data / PRIOR_FILE}"))
    rng = np.random.default_rng(7)
    picks = [samples[i] for i in rng.choice(len(samples), N_QUERIES, replace=False)]

    def place(lat: float, lon: float) -> str:
        r = reverse_geocode(ReverseGeocodeArgs(lat=lat, lon=lon))
        return ", ".join(x for x in (getattr(r, "nearest_city", None), getattr(r, "country_name", None)) if x) or "?"

    print(f"\nlocating {N_QUERIES} photos (prior: recorded {PRIOR_FILE}; references by the same photographer excluded)\n")
    rows = []
    for s in picks:
        # for_photo excludes the photo itself and, given its photographer, all their photos
        pred = locate(ctx.for_photo(s.image_id, author=s.author), s.image_path, image_id=s.image_id)
        err = None if pred.lat is None else float(haversine_km(pred.lat, pred.lon, s.lat, s.lon))
        rows.append(err)
        print(f"{s.image_id}\n  predicted: {place(pred.lat, pred.lon) if pred.lat is not None else 'no answer'}"
              f" ({pred.source}; {len(pred.trail)} searches: {', '.join(x.submap_id for x in pred.trail)[:90]})\n"
              f"  true:      {place(s.lat, s.lon)}\n"
              f"  error:     {'-' if err is None else f'{err:,.1f} km'}   [{pred.timings['agent_s']:.2f} s excluding the VLM]")
    errs = np.array([e for e in rows if e is not None])
    print(f"\nmedian error {np.median(errs):,.1f} km over {len(errs)} answered; "
          f"within 25 km: {(errs < 25).sum()}, within 750 km: {(errs < 750).sum()} of {N_QUERIES}. "
          f"Total {time.perf_counter() - t:.0f} s.")
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
