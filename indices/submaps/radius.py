"""Radius submaps: every reference within R km of a point, chosen at query time.

Ids look like ``radius:45.7640,4.8357,50`` (lat, lon, km). Nothing is stored at build time; the
index answers them with a range search over reference coordinates.
"""

from __future__ import annotations

import numpy as np

from geoguide.geo.geometry import validate_latlon
from geoguide.indices.submaps.base import SubmapScheme
from geoguide.indices.submaps.registry import register_scheme

MAX_RADIUS_KM = 20_038.0  # half the Earth's circumference: beyond it a radius is the globe


@register_scheme
class RadiusScheme(SubmapScheme):
    kind = "radius"
    stored = False

    def assign(self, lat: np.ndarray, lon: np.ndarray, country: np.ndarray) -> np.ndarray:
        raise TypeError("radius submaps are resolved at query time, not assigned at build time")

    def label_name(self, label: str, lat: float, lon: float) -> str:
        la, lo, km = parse_radius_label(label)
        return f"within {km:g} km of ({la:.4f}, {lo:.4f})"


def radius_id(lat: float, lon: float, km: float) -> str:
    return f"radius:{lat:.4f},{lon:.4f},{km:g}"


def parse_radius_label(label: str) -> tuple[float, float, float]:
    """``"45.76,4.84,50"`` -> (45.76, 4.84, 50.0), validated."""
    parts = label.split(",")
    if len(parts) != 3:
        raise ValueError(f"radius submap needs 'radius:LAT,LON,KM', got 'radius:{label}'")
    try:
        lat, lon, km = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"radius submap needs numbers: 'radius:LAT,LON,KM', got 'radius:{label}'") from None
    validate_latlon(lat, lon)
    if not np.isfinite(km) or km <= 0:
        raise ValueError(f"radius must be a positive number of km, got {km}")
    return lat, lon, min(km, MAX_RADIUS_KM)
