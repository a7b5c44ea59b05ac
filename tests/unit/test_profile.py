"""Calibration profiles: probabilities recalibrated on labelled answers and a split-conformal
radius whose coverage holds on photographers the profile never saw."""

from __future__ import annotations

import numpy as np
import pytest

from geoguide.agent.profile import (
    KEYS,
    CalibrationProfile,
    Labelled,
    cross_fitted,
    fit_profile,
    r50,
)
from geoguide.indices.calibration import reliability


def _answers(n: int, seed: int, overconfident: bool = True) -> list[Labelled]:
    """Two kinds of answer: 'prior/default' with one stated P for all, errors log-normal around
    150 km; 'retrieval/map' whose stated P tracks a per-photo quality, but too high."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if i % 2:
            err = float(np.exp(rng.normal(np.log(150), 2.0)))
            p = {"1": 0.15, "25": 0.41, "200": 0.59, "750": 0.77, "2500": 0.87}
            rows.append(Labelled(group="prior/default", p_within_km=p, error_km=err, author=f"a{i % 97}"))
        else:
            q = rng.uniform(0, 1)
            err = float(np.exp(rng.normal(np.log(2000) - 7 * q, 1.5)))
            stated = np.clip(np.array([0.1, 0.4, 0.6, 0.8, 0.9]) * (0.3 + q) * (1.6 if overconfident else 1.0), 0, 0.99)
            p = {k: float(v) for k, v in zip(KEYS, np.maximum.accumulate(stated), strict=True)}
            rows.append(Labelled(group="retrieval/map", p_within_km=p, error_km=err, author=f"a{i % 97}"))
    return rows


def test_a_profile_keeps_its_coverage_on_photographers_it_never_saw():
    rows = _answers(4000, seed=0)
    seen = [r for r in rows if int(r.author[1:]) % 2 == 0]
    unseen = [r for r in rows if int(r.author[1:]) % 2 == 1]
    prof = fit_profile(seen, coverage=0.9)
    assert {g.group for g in prof.groups} == {"all", "prior/default", "retrieval/map"}
    applied = [prof.apply(r.group, r.p_within_km) for r in unseen]
    radius = np.array([a[1] for a in applied])
    err = np.array([r.error_km for r in unseen])
    assert 0.87 <= np.mean(err <= radius) <= 0.93
    # adaptive: a better retrieval answer gets a smaller radius than a worse one
    good = prof.apply("retrieval/map", {"1": 0.5, "25": 0.9, "200": 0.95, "750": 0.97, "2500": 0.99})[1]
    poor = prof.apply("retrieval/map", {"1": 0.01, "25": 0.05, "200": 0.1, "750": 0.2, "2500": 0.4})[1]
    assert good < poor
    # recalibrated: what it says at 25 km happens, on photographers it never saw
    p25 = np.array([a[0]["25"] for a in applied])
    assert reliability(p25, (err <= 25).astype(float))[1] < 0.05
    assert CalibrationProfile.model_validate_json(prof.model_dump_json()) == prof  # the file round-trips


def test_cross_fitted_report_judges_each_photographer_by_the_others():
    rows = _answers(3000, seed=1)
    rep = cross_fitted(rows, folds=5)
    assert rep is not None and rep.n == 3000 and rep.folds == 5
    assert 0.87 <= rep.coverage <= 0.93 and rep.median_radius_km > 0
    assert rep.ece["25"] < rep.ece_raw["25"] and rep.ece["25"] < 0.05  # the overconfident retrieval P is fixed
    assert cross_fitted(rows[:60]) is None  # too few to say anything


def test_r50_and_small_inputs():
    assert r50({"1": 0.6, "25": 0.7, "200": 0.8, "750": 0.9, "2500": 0.95}) == 1.0
    assert r50({"1": 0.0, "25": 0.1, "200": 0.2, "750": 0.3, "2500": 0.4}) == 2500.0
    mid = r50({"1": 0.0, "25": 0.25, "200": 0.75, "750": 0.9, "2500": 0.95})
    assert mid == pytest.approx(np.exp((np.log(25) + np.log(200)) / 2))
    with pytest.raises(ValueError, match="too few answered photos"):
        fit_profile(_answers(10, seed=2))
