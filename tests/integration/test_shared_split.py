"""The shared IM2GPS3k development split loads whole, and the metrics reproduce its published anchor.

The data lives outside the repository (``<repo>/../shared/data/im2gps3k``, or ``$GEOGUIDE_DATA``) and
may not be redistributed, so these tests skip with the path they looked at when it is absent.
"""

from __future__ import annotations

import csv

import pytest

from geoguide.eval.metrics import distance_km, summarize
from geoguide.indices.photosets import load_dataset, shared_data_root

pytestmark = pytest.mark.integration

ROOT = shared_data_root()
needs_data = pytest.mark.skipif(
    not (ROOT / "labels.csv").is_file(),
    reason=f"shared split not found at {ROOT} (set GEOGUIDE_DATA to the im2gps3k folder)",
)


@needs_data
def test_shared_split_loads_all_1630_rows():
    ds = load_dataset("shared")
    assert (ds.report.n_ok, ds.report.n_bad, ds.report.warnings) == (1630, 0, [])
    assert len({s.image_id for s in ds}) == 1630
    assert len({s.author for s in ds}) == 117  # whole photographers, per shared/data/README.md
    assert all(s.image_path is not None and s.image_path.is_file() for s in ds)


@needs_data
def test_recorded_vlm_prior_reproduces_the_readme_anchor():
    """README: recorded Gemini answers alone score 13.6 / 37.7 / 53.6 / 70.2 / 79.7, misses counted."""
    prior_file = ROOT / "prior_gemini-2.0-flash.csv"
    if not prior_file.is_file():
        pytest.skip(f"{prior_file} not found")
    with prior_file.open(encoding="utf-8-sig", newline="") as f:
        prior = {r["IMG_ID"]: r for r in csv.DictReader(f) if r["success"] == "True"}
    ds = load_dataset("shared")
    pred = [prior.get(s.image_id) for s in ds]
    errors = distance_km(
        [float(p["LAT_pred"]) if p else None for p in pred],
        [float(p["LON_pred"]) if p else None for p in pred],
        [s.lat for s in ds],
        [s.lon for s in ds],
    )
    s = summarize(errors, [x.lat for x in ds], [x.lon for x in ds], n_boot=200, by_continent=False)
    assert (s.n, s.answered) == (1630, 1491)
    assert {k: round(v, 1) for k, v in s.accuracy.items()} == {
        "1": 13.6,
        "25": 37.7,
        "200": 53.6,
        "750": 70.2,
        "2500": 79.7,
    }
