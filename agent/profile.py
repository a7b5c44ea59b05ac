"""Calibrated answers from labelled photos: a calibration profile.

The map's calibration (``indices.calibration``) says how likely a *match* is right, and the VLM's
reliability is a stated default; neither has seen how the whole agent's answers fare. A profile
learns that from a labelled run (``geoguide calibrate``, or any ``eval`` run's predictions):

* **Probabilities.** Per group of answers (answer source x where its probabilities came from, e.g.
  ``prior/default``, ``retrieval/map``) and per distance X, a logistic recalibration of the
  answer's P(within X km): P' = sigmoid(a + b * logit(P)) (Platt scaling; with a constant P, as for
  the default prior, it is the group's observed rate). Small groups (< ``MIN_GROUP``) fall back to
  all answers pooled.
* **A radius with a stated coverage** (default 90%), by split-conformal prediction (Vovk et al.;
  Angelopoulos & Bates 2021): the answer's scale r50 is where its recalibrated P(within r) reaches
  one half (log-linear between the distances); the score of a labelled answer is log(error / r50);
  the radius is r50 * exp(q), q the ceil((n + 1) * coverage)-th smallest score of its group. On
  photos exchangeable with the calibration photos (new photographers of the same kind of set) the
  radius holds the truth with at least that probability.

``cross_fitted`` scores a run against itself without leakage: each photographer's answers are
judged by a profile fitted on the other photographers' (what ``eval`` reports).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from geoguide.agent.state import Prediction
from geoguide.indices.calibration import THRESHOLDS_KM, ReliabilityBin, fit_logistic, reliability, sigmoid

KEYS = tuple(f"{km:g}" for km in THRESHOLDS_KM)
MIN_GROUP = 50
DEFAULT_COVERAGE = 0.9
MAX_RADIUS_KM = 20_015.0  # half the Earth's circumference: no point is farther
MIN_ERROR_KM = 0.01
POOLED = "all"


class Labelled(BaseModel):
    """One answered photo of a labelled run: what the agent said and how far off it was."""

    group: str
    p_within_km: dict[str, float]
    error_km: float
    author: str = ""


class GroupProfile(BaseModel):
    group: str
    n: int
    platt: dict[str, list[float]] = Field(description="distance -> (a, b) of sigmoid(a + b * logit(P))")
    score_quantile: float = Field(description="conformal quantile of log(error / r50)")


class CalibrationProfile(BaseModel):
    """A fitted profile (``geoguide calibrate --out PROFILE``; agent commands take ``--calibration``)."""

    version: int = 1
    coverage: float = Field(DEFAULT_COVERAGE, gt=0, lt=1)
    n: int
    groups: list[GroupProfile]
    fitted_on: dict[str, str] = Field(default_factory=dict, description="what the labelled run was (index, vlm, ...)")

    def group(self, name: str) -> GroupProfile:
        return next((g for g in self.groups if g.group == name), next(g for g in self.groups if g.group == POOLED))

    def apply(self, group: str, p_within_km: dict[str, float]) -> tuple[dict[str, float], float]:
        """(recalibrated P(within X km), radius in km holding the truth with ``coverage``)."""
        g = self.group(group)
        p = recalibrate(g, p_within_km)
        return p, round(min(r50(p) * math.exp(g.score_quantile), MAX_RADIUS_KM), 1)


def group_of(source: str, probability_source: str | None) -> str:
    """The profile group of an answer: its source and where its probabilities came from."""
    return f"{source}/{probability_source or 'none'}"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def recalibrate(g: GroupProfile, p_within_km: dict[str, float]) -> dict[str, float]:
    """The group's recalibrated probabilities, kept non-decreasing along the distances."""
    out, floor = {}, 0.0
    for k in KEYS:
        a, b = g.platt[k]
        raw = p_within_km.get(k, 0.0)
        floor = max(floor, float(sigmoid(np.array(a + b * _logit(np.array(raw))))))
        out[k] = round(floor, 4)
    return out


def r50(p: dict[str, float]) -> float:
    """Where P(within r) reaches one half, log-linear between the distances (clamped to their range)."""
    xs = np.log(np.array(THRESHOLDS_KM))
    ys = np.array([p[k] for k in KEYS])
    if ys[0] >= 0.5:
        return THRESHOLDS_KM[0]
    if ys[-1] < 0.5:
        return THRESHOLDS_KM[-1]
    i = int(np.argmax(ys >= 0.5))
    t = (0.5 - ys[i - 1]) / max(ys[i] - ys[i - 1], 1e-9)
    return float(np.exp(xs[i - 1] + t * (xs[i] - xs[i - 1])))


def _fit_group(name: str, rows: Sequence[Labelled], coverage: float) -> GroupProfile:
    err = np.array([r.error_km for r in rows])
    platt = {}
    for k, km in zip(KEYS, THRESHOLDS_KM, strict=True):
        x = _logit(np.array([r.p_within_km.get(k, 0.0) for r in rows]))
        y = (err <= km).astype(np.float64)
        platt[k] = fit_logistic(np.column_stack([np.ones(len(x)), x]), y).tolist()
    g = GroupProfile(group=name, n=len(rows), platt=platt, score_quantile=0.0)
    scores = np.sort([math.log(max(r.error_km, MIN_ERROR_KM) / r50(recalibrate(g, r.p_within_km))) for r in rows])
    rank = math.ceil((len(scores) + 1) * coverage)
    q = float(scores[rank - 1]) if rank <= len(scores) else math.log(MAX_RADIUS_KM)
    return g.model_copy(update={"score_quantile": round(q, 5)})


def fit_profile(rows: Sequence[Labelled], coverage: float = DEFAULT_COVERAGE,
                fitted_on: dict[str, str] | None = None) -> CalibrationProfile:
    """A profile from labelled answers: each group with at least ``MIN_GROUP`` answers, and all pooled."""
    if len(rows) < MIN_GROUP:
        raise ValueError(f"too few answered photos to calibrate ({len(rows)}; need {MIN_GROUP})")
    groups = [_fit_group(POOLED, rows, coverage)]
    for name in sorted({r.group for r in rows}):
        mine = [r for r in rows if r.group == name]
        if len(mine) >= MIN_GROUP:
            groups.append(_fit_group(name, mine, coverage))
    return CalibrationProfile(coverage=coverage, n=len(rows), groups=groups, fitted_on=fitted_on or {})


class CalibrationReport(BaseModel):
    """How trustworthy a run's probabilities and radii are, judged on its own labels."""

    n: int = Field(description="answered photos with probabilities")
    ece_raw: dict[str, float] = Field(description="expected calibration error of the stated P(within X km)")
    ece: dict[str, float] = Field(description="the same after a profile fitted on the other photographers")
    coverage_target: float
    coverage: float = Field(description="share of photos whose truth lies within the profile's radius")
    median_radius_km: float
    folds: int
    reliability_25: list[ReliabilityBin] = Field(default_factory=list, description="the profiled P(within 25 km): "
                                                 "predicted vs observed per bin (ablate's reliability plot)")


MAX_FOLDS = 100


def cross_fitted(rows: Sequence[Labelled], folds: int | None = None,
                 coverage: float = DEFAULT_COVERAGE) -> CalibrationReport | None:
    """Each photographer judged by a profile fitted on the others (photographers beyond
    ``MAX_FOLDS`` share folds); None when too few rows.

    Why one photographer at a time: photographers differ (one shot 200 photos of one city), so
    with 5 folds each held-out fifth has its own hit rate and the ECE of P(within 25 km) on the
    shared split reads 0.134 though every fold's profile is right for the other four; leaving one
    photographer out it reads 0.036 (and the 90% radius covers 89.9%, 5 folds: 89.1%)."""
    if len(rows) < MIN_GROUP * 2:
        return None
    authors = sorted({r.author for r in rows})
    folds = folds or min(len(authors), MAX_FOLDS)
    position = {a: i % folds for i, a in enumerate(authors)}
    which = np.array([position[r.author] for r in rows])
    new_p: list[dict[str, float]] = [{}] * len(rows)
    radius = np.zeros(len(rows))
    for f in range(folds):
        train = [r for r, w in zip(rows, which, strict=True) if w != f]
        if len(train) < MIN_GROUP:
            return None
        prof = fit_profile(train, coverage)
        for i in np.flatnonzero(which == f):
            new_p[i], radius[i] = prof.apply(rows[i].group, rows[i].p_within_km)
    err = np.array([r.error_km for r in rows])
    ece_raw, ece = {}, {}
    for k, km in zip(KEYS, THRESHOLDS_KM, strict=True):
        hit = (err <= km).astype(np.float64)
        ece_raw[k] = reliability(np.array([r.p_within_km.get(k, 0.0) for r in rows]), hit)[1]
        ece[k] = reliability(np.array([p[k] for p in new_p]), hit)[1]
    bins = reliability(np.array([p["25"] for p in new_p]), (err <= 25.0).astype(np.float64))[0]
    return CalibrationReport(n=len(rows), ece_raw=ece_raw, ece=ece, coverage_target=coverage,
                             coverage=round(float(np.mean(err <= radius)), 4),
                             median_radius_km=round(float(np.median(radius)), 1), folds=folds, reliability_25=bins)


def with_profile(pred: Prediction, profile: CalibrationProfile) -> Prediction:
    """The prediction with its probabilities recalibrated and a radius, by a calibration profile
    fitted on labelled photos of the same kind."""
    p, radius = profile.apply(group_of(pred.source, pred.probability_source), pred.p_within_km)
    return pred.model_copy(update={"p_within_km": p, "confidence": p["25"], "probability_source": "profile",
                                   "radius_km": radius, "radius_coverage": profile.coverage})
