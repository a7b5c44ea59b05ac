"""Benchmark metrics for photo geolocation: distances, accuracy at thresholds, GeoScore, CIs.

Conventions (those of the published IM2GPS / IM2GPS3k / YFCC4k tables, see docs/MISSION.md):

- distance is great-circle (haversine, R = 6371.0088 km) unless ``method="geodesic"`` (WGS84);
- "within t km" is **strictly less than** t, so an error of exactly 25.0 km misses the 25 km bar;
- a **missing answer** (``None`` / NaN error: the model gave nothing usable) stays in ``n`` and is a
  miss at every threshold and scores 0 GeoScore, so skipping hard images cannot raise accuracy;
- median and mean error are over **answered** images only (a missing answer has no distance); the
  ``answered`` count is reported beside them so the two populations are never confused;
- 95% CIs are percentile bootstraps over images (misses included), seeded and reproducible.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field

from geoguide.geo.geometry import haversine_km

THRESHOLDS_KM: tuple[float, ...] = (1, 25, 200, 750, 2500)
THRESHOLD_NAMES = {"1": "street", "25": "city", "200": "region", "750": "country", "2500": "continent"}
"""Street / city / region / country / continent."""

GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7  # GeoGuessr's world-map decay constant
UNKNOWN_CONTINENT = "unknown"

_COMPARE_DECIMALS = 6  # km -> 1 mm, far below GPS label precision (6 decimal degrees ~ 0.1 m)
_BOOT_CHUNK_CELLS = 4_000_000  # resampled (boot x image) cells held at once: bounds memory for 100k+ sets


def _geodesic_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """WGS84 ellipsoid distance via geopy, element by element (geopy has no vectorised form)."""
    from geopy.distance import geodesic

    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (lat1, lon1, lat2, lon2)))
    flat = [a.ravel() for a in arrays]
    out = np.full(flat[0].shape, np.nan)
    finite = np.logical_and.reduce([np.isfinite(a) for a in flat])
    for i in np.flatnonzero(finite):
        out[i] = geodesic((flat[0][i], flat[1][i]), (flat[2][i], flat[3][i])).km
    return out.reshape(arrays[0].shape)


DISTANCE_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "haversine": haversine_km,
    "geodesic": _geodesic_km,
}


def distance_km(lat1, lon1, lat2, lon2, method: str = "haversine") -> np.ndarray:
    """Distance in km, broadcasting like numpy; ``None``/NaN coordinates give NaN (= no answer)."""
    try:
        fn = DISTANCE_METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown distance method {method!r}; choose from {sorted(DISTANCE_METHODS)}"
        ) from None
    coords = [np.asarray(a, dtype=np.float64) for a in (lat1, lon1, lat2, lon2)]
    return np.asarray(fn(*coords), dtype=np.float64)


def as_errors(errors_km: Iterable[float | None]) -> np.ndarray:
    """1-D float array with NaN for a missing answer; rejects negative distances (a caller bug)."""
    if not isinstance(errors_km, np.ndarray):
        errors_km = list(errors_km)
    arr = np.array(errors_km, dtype=np.float64).reshape(-1)  # a copy: the caller's array is not touched
    if np.any(arr < 0):
        raise ValueError("distances must be non-negative")
    arr[np.isinf(arr)] = np.nan  # an infinite error is no answer, not a number to average
    return arr


def threshold_key(t: float) -> str:
    """JSON key for a threshold: ``1`` not ``1.0``, so keys match the published tables."""
    return f"{float(t):g}"


def _hits(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(n, T) bool: strictly within each threshold; NaN compares False, so a missing answer misses.

    Errors are compared at 1 mm resolution (rounded to 1e-6 km): a pair placed exactly 25 km apart can
    come out of the trigonometry as 24.9999999999995 km, and must still miss the 25 km bar.
    """
    with np.errstate(invalid="ignore"):
        return (
            np.round(errors, _COMPARE_DECIMALS)[:, None] < np.asarray(thresholds, dtype=np.float64)[None, :]
        )


def accuracy_at(
    errors_km: Iterable[float | None], thresholds: Sequence[float] = THRESHOLDS_KM
) -> dict[float, float]:
    """Percent of all images (missing answers included in n) with error strictly below each threshold."""
    errors = as_errors(errors_km)
    if errors.size == 0:
        return {float(t): 0.0 for t in thresholds}
    pct = 100.0 * _hits(errors, thresholds).mean(axis=0)
    return {float(t): float(p) for t, p in zip(thresholds, pct, strict=True)}


def geoscore(errors_km: Iterable[float | None]) -> float:
    """Mean GeoGuessr score 5000·exp(−d/1492.7) over all images; a missing answer scores 0."""
    errors = as_errors(errors_km)
    if errors.size == 0:
        return 0.0
    scores = np.where(
        np.isnan(errors), 0.0, GEOSCORE_MAX * np.exp(-np.nan_to_num(errors) / GEOSCORE_SCALE_KM)
    )
    return float(scores.mean())


def bootstrap_ci(
    errors_km: Iterable[float | None],
    thresholds: Sequence[float] = THRESHOLDS_KM,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[float, tuple[float, float]]:
    """Percentile-bootstrap CI (percent) of each accuracy, resampling images with replacement.

    Vectorised over resamples in chunks, so 1,000 resamples of 3k images take milliseconds and memory
    stays bounded on large sets; the same seed gives the same interval.
    """
    errors = as_errors(errors_km)
    n = errors.size
    if n == 0 or n_boot <= 0:
        return {}
    hits = _hits(errors, thresholds)  # bool: 1 byte per cell; the mean comes out float64
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_CELLS // n)
    boot = np.empty((n_boot, len(thresholds)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = hits[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(100.0 * boot, [alpha, 1.0 - alpha], axis=0)
    return {float(t): (float(a), float(b)) for t, a, b in zip(thresholds, lo, hi, strict=True)}


def continents_for(lats: Sequence[float], lons: Sequence[float]) -> list[str]:
    """Continent of each ground-truth point via ``geo`` (imported lazily: it loads polygons).

    Points outside every country (open sea) are ``"unknown"``. Repeated coordinates are looked up once,
    which matters because photographers shoot the same spot many times.
    """
    from geoguide.geo import continent_of, country_at

    cache: dict[tuple[float, float], str] = {}
    out: list[str] = []
    for lat, lon in zip(lats, lons, strict=True):
        key = (float(lat), float(lon))
        if key not in cache:
            iso2 = country_at(*key)
            try:
                cache[key] = (continent_of(iso2) if iso2 else None) or UNKNOWN_CONTINENT
            except KeyError:  # a territory the gazetteer has no continent for
                cache[key] = UNKNOWN_CONTINENT
        out.append(cache[key])
    return out


class Summary(BaseModel):
    """One evaluation's headline numbers; ``model_dump_json()`` is the file format of a run's summary."""

    n: int = Field(description="images evaluated, missing answers included")
    answered: int = Field(description="images with a usable answer (finite error)")
    accuracy: dict[str, float] = Field(description="percent strictly within each threshold (km key)")
    ci95: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="bootstrap 95% CI, percent"
    )
    median_km: float | None = Field(description="median error over answered images; None if none answered")
    mean_km: float | None = Field(description="mean error over answered images; None if none answered")
    geoscore: float = Field(description="mean 5000·exp(−d/1492.7), a missing answer scoring 0")
    per_continent: dict[str, Summary] | None = Field(
        default=None, description="the same numbers per ground-truth continent"
    )


def _summary(errors: np.ndarray, thresholds: Sequence[float], n_boot: int, seed: int) -> Summary:
    answered = errors[~np.isnan(errors)]
    acc = accuracy_at(errors, thresholds)
    ci = bootstrap_ci(errors, thresholds, n_boot=n_boot, seed=seed)
    return Summary(
        n=int(errors.size),
        answered=int(answered.size),
        accuracy={threshold_key(t): v for t, v in acc.items()},
        ci95={threshold_key(t): v for t, v in ci.items()},
        median_km=float(np.median(answered)) if answered.size else None,
        mean_km=float(np.mean(answered)) if answered.size else None,
        geoscore=geoscore(errors),
    )


def summarize(
    errors: Iterable[float | None],
    true_lats: Sequence[float],
    true_lons: Sequence[float],
    *,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    n_boot: int = 1000,
    seed: int = 0,
    continents: Sequence[str | None] | None = None,
    by_continent: bool = True,
) -> Summary:
    """All headline metrics for one run, plus a breakdown by the ground truth's continent.

    ``continents`` (one label per image) skips the geography lookup, e.g. when cached. Without it the
    labels come from ``geo``; if that module cannot be imported the breakdown is left out
    with a warning rather than failing the whole evaluation.
    """
    err = as_errors(errors)
    if not len(true_lats) == len(true_lons) == err.size:
        raise ValueError(f"length mismatch: {err.size} errors, {len(true_lats)} lats, {len(true_lons)} lons")
    summary = _summary(err, thresholds, n_boot, seed)
    if not by_continent:
        return summary
    if continents is None:
        try:
            continents = continents_for(true_lats, true_lons)
        except ImportError as exc:
            warnings.warn(f"per-continent breakdown skipped: {exc}", RuntimeWarning, stacklevel=2)
            return summary
    if len(continents) != err.size:
        raise ValueError(f"{len(continents)} continent labels for {err.size} images")
    labels = np.asarray([c or UNKNOWN_CONTINENT for c in continents], dtype=object)
    summary.per_continent = {
        str(c): _summary(err[labels == c], thresholds, n_boot, seed) for c in sorted(set(labels.tolist()))
    }
    return summary


def _fmt(x: float | None, decimals: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{decimals}f}"


def markdown_table(summaries: Mapping[str, Summary], *, ci: bool = False, decimals: int = 1) -> str:
    """Runs side by side, one row each, columns in the order of the published tables.

    Thresholds are those of the first summary; a run lacking one shows "–". With ``ci=True`` each
    accuracy cell carries its bootstrap interval, e.g. ``37.7 [35.4, 40.0]``.
    """
    if not summaries:
        return ""
    keys = list(next(iter(summaries.values())).accuracy)
    header = ["run", "n", "answered", *(f"{k} km" for k in keys), "median km", "mean km", "GeoScore"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    for name, s in summaries.items():
        cells = [name.replace("|", "\\|"), str(s.n), str(s.answered)]
        for k in keys:
            cell = _fmt(s.accuracy.get(k), decimals)
            if ci and k in s.ci95:
                lo, hi = s.ci95[k]
                cell += f" [{lo:.{decimals}f}, {hi:.{decimals}f}]"
            cells.append(cell)
        cells += [_fmt(s.median_km, decimals), _fmt(s.mean_km, decimals), f"{s.geoscore:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
