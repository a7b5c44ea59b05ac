"""Radius submaps: every reference within R km of a point, chosen at query time.

Ids look like ``radius:45.7640,4.8357,50`` (lat, lon, km). Nothing is stored at build time; the
index answers them with a range search over reference coordinates, and widening quadruples R.
"""

from __future__ import annotations

import numpy as np

from geoguide.geo.geometry import validate_latlon
from geoguide.indices.submaps.base import WHOLE_MAP, MapView, Selection, SubmapError, SubmapScheme
from geoguide.indices.submaps.registry import register_scheme

MAX_RADIUS_KM = 20_038.0  # half the Earth's circumference: beyond it a radius is the globe
WIDEN_FACTOR = 4  # each widening quadruples the radius: 500 km reaches the globe in 4 steps


@register_scheme
class RadiusScheme(SubmapScheme):
    kind = "radius"
    stored = False
    id_form = "radius:LAT,LON,KM"

    def select(self, index: MapView, labels: list[str]) -> Selection:
        lat, lon, km = _parsed(labels)
        return index.within(lat, lon, km)

    def name(self, labels: list[str]) -> str:
        lat, lon, km = _parsed(labels)
        return f"within {km:g} km of ({lat:.4f}, {lon:.4f})"

    def widen(self, index: MapView, labels: list[str], near: tuple[float, float] | None) -> tuple[str, str]:
        lat, lon, km = _parsed(labels)
        if km * WIDEN_FACTOR >= MAX_RADIUS_KM:
            return WHOLE_MAP, "radius would cover the globe -> the whole map"
        return radius_id(lat, lon, km * WIDEN_FACTOR), f"radius {km:g} km -> {km * WIDEN_FACTOR:g} km"


def _parsed(labels: list[str]) -> tuple[float, float, float]:
    try:
        return parse_radius_label(",".join(labels))
    except ValueError as e:
        raise SubmapError(str(e)) from None


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
