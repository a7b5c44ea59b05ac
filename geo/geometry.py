"""Spherical geometry shared by submaps, search summaries, re-ranking and metrics.

Everything is vectorised over numpy arrays because the same functions run on one query and on
millions of references.
"""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius, the benchmark convention


def validate_latlon(lat: float, lon: float) -> None:
    """Raise ``ValueError`` naming the bad value; used at every boundary that accepts a point."""
    if not np.isfinite(lat) or not -90.0 <= lat <= 90.0:
        raise ValueError(f"latitude {lat} is out of range [-90, 90]")
    if not np.isfinite(lon) or not -180.0 <= lon <= 180.0:
        raise ValueError(f"longitude {lon} is out of range [-180, 180]")


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km; broadcasts like numpy."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def latlon_to_unit(lat, lon) -> np.ndarray:
    """(N,) degrees -> (N, 3) float64 points on the unit sphere."""
    la, lo = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def unit_to_latlon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) -> degrees; the vectors need not be normalised (a mean of unit vectors works)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = np.degrees(np.arctan2(y, x))
    return lat, lon


def km_to_chord(km: float) -> float:
    """Great-circle distance -> straight-line distance between unit vectors (for L2 range search)."""
    return float(2.0 * np.sin(min(km / EARTH_RADIUS_KM, np.pi) / 2.0))


def spherical_centroid(lat, lon, weights=None) -> tuple[float, float]:
    """Mean direction of points on the sphere (well defined across the antimeridian)."""
    xyz = latlon_to_unit(lat, lon)
    w = np.ones(len(xyz)) if weights is None else np.asarray(weights, dtype=np.float64)
    m = (xyz * w[:, None]).sum(axis=0)
    if np.linalg.norm(m) < 1e-12:
        m = xyz[0]
    la, lo = unit_to_latlon(m[None])
    return float(la[0]), float(lo[0])
