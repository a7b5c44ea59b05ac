"""geoguide.eval.metrics against distances and scores worked out by hand, not by the code under test."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from geoguide.eval.metrics import (
    GEOSCORE_MAX,
    THRESHOLDS_KM,
    Summary,
    accuracy_at,
    bootstrap_ci,
    distance_km,
    geoscore,
    markdown_table,
    summarize,
)
from geoguide.geo.geometry import EARTH_RADIUS_KM

R = EARTH_RADIUS_KM
PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)


def test_paris_london_by_spherical_law_of_cosines():
    p1, p2 = math.radians(PARIS[0]), math.radians(LONDON[0])
    dl = math.radians(LONDON[1] - PARIS[1])
    expected = R * math.acos(math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl))
    got = float(distance_km(*PARIS, *LONDON))
    assert got == pytest.approx(expected, abs=1e-6)
    assert got == pytest.approx(343.56, abs=0.01)  # sphere; the WGS84 ellipsoid gives 343.92
    assert float(distance_km(*PARIS, *LONDON, method="geodesic")) == pytest.approx(343.92, abs=0.01)


def test_one_degree_of_longitude_on_the_equator():
    assert float(distance_km(0, 0, 0, 1)) == pytest.approx(R * math.pi / 180, rel=1e-12)  # 111.195 km
    assert float(distance_km(0, 0, 0, 1)) == pytest.approx(111.195, abs=1e-3)
    # On the ellipsoid the equator has the semi-major axis 6378.137 km.
    assert float(distance_km(0, 0, 0, 1, method="geodesic")) == pytest.approx(
        6378.137 * math.pi / 180, abs=1e-6
    )


@pytest.mark.parametrize(("a", "b"), [((0, 0), (0, 180)), ((10, 20), (-10, -160)), ((90, 0), (-90, 0))])
def test_antipodes_are_half_the_circumference(a, b):
    # arcsin(sqrt(a)) is ill-conditioned at a = 1, so off the equator haversine is good to ~0.2 m here.
    assert float(distance_km(*a, *b)) == pytest.approx(math.pi * R, abs=1e-3)


def test_distance_is_vectorised_and_nan_means_no_answer():
    d = distance_km([0, None, 0], [0, 0, np.nan], [0, 0, 0], [1, 0, 0])
    assert d.shape == (3,)
    assert d[0] == pytest.approx(R * math.pi / 180)
    assert np.isnan(d[1:]).all()
    g = distance_km([0, None], [0, 0], [0, 0], [1, 0], method="geodesic")
    assert g[0] == pytest.approx(111.3195, abs=1e-3) and np.isnan(g[1])
    with pytest.raises(ValueError, match="unknown distance method"):
        distance_km(0, 0, 0, 1, method="vincenty")


@pytest.mark.parametrize("lat0", [0.0, 10.0, 45.5, -30.0, 60.0])
def test_a_point_exactly_25_km_away_is_not_within_25_km(lat0):
    # Moving 25/R radians along a meridian is exactly 25 km on the sphere; at -30° the trigonometry
    # returns 24.9999999999995, which must still count as a miss.
    lat1 = lat0 + math.degrees(25.0 / R)
    d = distance_km(lat0, 20.0, lat1, 20.0)
    assert float(d) == pytest.approx(25.0, abs=1e-9)
    assert accuracy_at([float(d)], [25])[25.0] == 0.0
    assert accuracy_at([25.0 - 1e-3], [25])[25.0] == 100.0


def test_accuracy_counts_missing_answers_as_misses_in_n():
    errors = [0.5, 24.0, 199.0, 749.0, 2499.0, 3000.0, None, float("nan")]
    acc = accuracy_at(errors)
    assert list(acc) == [float(t) for t in THRESHOLDS_KM]
    assert acc == pytest.approx({1.0: 12.5, 25.0: 25.0, 200.0: 37.5, 750.0: 50.0, 2500.0: 62.5})
    assert accuracy_at([None, None]) == {float(t): 0.0 for t in THRESHOLDS_KM}
    assert accuracy_at([]) == {float(t): 0.0 for t in THRESHOLDS_KM}
    with pytest.raises(ValueError, match="non-negative"):
        accuracy_at([-1.0])


def test_geoscore():
    assert geoscore([0.0]) == GEOSCORE_MAX == 5000.0
    assert geoscore([1492.7]) == pytest.approx(5000.0 / math.e)
    assert geoscore([0.0, None]) == pytest.approx(2500.0)  # a missing answer scores 0 and stays in n
    assert geoscore([math.pi * R]) == pytest.approx(5000.0 * math.exp(-math.pi * R / 1492.7))


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    errors = rng.lognormal(mean=5.0, sigma=2.0, size=500).tolist() + [None] * 50
    acc = accuracy_at(errors)
    ci = bootstrap_ci(errors, n_boot=400, seed=7)
    for t, (lo, hi) in ci.items():
        assert lo <= acc[t] <= hi
        assert hi - lo < 15.0
    assert bootstrap_ci(errors, n_boot=400, seed=7) == ci
    assert bootstrap_ci(errors, n_boot=400, seed=8) != ci
    assert bootstrap_ci([0.0] * 20, n_boot=50)[25.0] == (100.0, 100.0)
    assert bootstrap_ci(errors, n_boot=0) == {} and bootstrap_ci([], n_boot=10) == {}


def test_bootstrap_chunking_matches_one_pass(monkeypatch):
    import geoguide.eval.metrics as m

    errors = np.random.default_rng(2).uniform(0, 3000, size=300)
    whole = bootstrap_ci(errors, n_boot=64, seed=3)
    monkeypatch.setattr(m, "_BOOT_CHUNK_CELLS", 300 * 5)  # five resamples per chunk
    assert bootstrap_ci(errors, n_boot=64, seed=3) == whole


def test_summary_json_shape_and_median_over_answered():
    errors = [0.5, 10.0, 300.0, None]
    s = summarize(
        errors, [0, 0, 0, 0], [0, 0, 0, 0], n_boot=100, continents=["Europe", "Europe", "Asia", None]
    )
    data = json.loads(s.model_dump_json())
    assert set(data) == {
        "n",
        "answered",
        "accuracy",
        "ci95",
        "median_km",
        "mean_km",
        "geoscore",
        "per_continent",
    }
    assert (data["n"], data["answered"]) == (4, 3)
    assert list(data["accuracy"]) == ["1", "25", "200", "750", "2500"]
    assert data["accuracy"]["25"] == pytest.approx(50.0)
    assert data["ci95"]["25"][0] <= 50.0 <= data["ci95"]["25"][1]
    assert data["median_km"] == pytest.approx(10.0) and data["mean_km"] == pytest.approx(310.5 / 3)
    per = data["per_continent"]
    assert set(per) == {"Asia", "Europe", "unknown"}
    assert per["Europe"]["accuracy"]["25"] == 100.0 and per["unknown"]["answered"] == 0
    assert per["unknown"]["median_km"] is None
    assert Summary.model_validate_json(s.model_dump_json()) == s


def test_summary_continents_come_from_the_ground_truth_via_geography(monkeypatch):
    fake = types.ModuleType("geoguide.geo")
    fake.country_at = lambda lat, lon: "FR" if lon > 0 else ("US" if lat > 0 else None)
    fake.continent_of = {"FR": "Europe", "US": "North America"}.get
    monkeypatch.setitem(sys.modules, "geoguide.geo", fake)
    s = summarize([1.0, 2.0, 5000.0], [45, 40, -50], [2, -100, -100], n_boot=0)
    assert s.per_continent is not None
    assert {k: v.n for k, v in s.per_continent.items()} == {"Europe": 1, "North America": 1, "unknown": 1}
    assert summarize([1.0], [45], [2], by_continent=False).per_continent is None
    with pytest.raises(ValueError, match="length mismatch"):
        summarize([1.0, 2.0], [0], [0])


def test_markdown_table_side_by_side():
    a = summarize([0.5, 30.0, None], [0] * 3, [0] * 3, n_boot=50, by_continent=False)
    b = summarize([5000.0], [0], [0], n_boot=50, by_continent=False)
    table = markdown_table({"prior only": a, "prior | VPR": b}, ci=True)
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| run | n | answered | 1 km | 25 km | 200 km | 750 km | 2500 km | median km | mean km | GeoScore |"
    )
    assert len(lines) == 4 and all(line.count(" | ") == 10 for line in lines)
    assert lines[2].startswith("| prior only | 3 | 2 | 33.3 [")
    assert "prior \\| VPR" in lines[3]
    assert markdown_table({}) == ""
