"""World outlines for maps drawn without the internet: the Natural Earth country polygons that
geoguide already ships, simplified and written as GeoJSON.

The 10m polygons hold 548k points (about 14 MB as GeoJSON; 1.0 MB, 0.3 MB gzipped, after this), far more than a world map on a
screen can show. Radial-distance decimation (keep a point only when it is ``step_deg`` from the
last kept one) at 0.2 degree keeps every country's shape at world and country zoom; rings whose
extent is under ``min_extent_deg`` (islets) are dropped, except a country's largest ring, so
small island states stay on the map.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from geoguide.geo import country_name, country_rings


def decimate(ring: np.ndarray, step_deg: float) -> np.ndarray:
    """Points of a closed ring at least ``step_deg`` apart (first and last kept)."""
    kept = [0]
    last = ring[0]
    for i in range(1, len(ring) - 1):
        if abs(ring[i, 0] - last[0]) + abs(ring[i, 1] - last[1]) >= step_deg:
            kept.append(i)
            last = ring[i]
    kept.append(len(ring) - 1)
    return ring[kept]


@lru_cache(maxsize=4)
def countries_geojson(step_deg: float = 0.2, min_extent_deg: float = 0.5) -> dict[str, Any]:
    """A FeatureCollection with one MultiPolygon per ISO2 code; properties ``iso2`` and ``name``.
    Coordinates are rounded to 0.01 degree (about 1 km)."""
    features = []
    for iso2, rings in sorted(country_rings().items()):
        extents = [float(np.ptp(r[:, 0]) + np.ptp(r[:, 1])) for r in rings]
        largest = int(np.argmax(extents))
        polygons = []
        for i, ring in enumerate(rings):
            if i != largest and extents[i] < min_extent_deg:
                continue
            pts = decimate(ring, step_deg)
            if len(pts) < 4 and i == largest:  # an island state smaller than one step
                pts = decimate(ring, step_deg / 20) if len(ring) > 40 else ring
            if len(pts) >= 4:
                polygons.append([np.round(pts, 2).tolist()])
        if polygons:
            features.append({"type": "Feature", "id": iso2,
                             "properties": {"iso2": iso2, "name": country_name(iso2) or iso2},
                             "geometry": {"type": "MultiPolygon", "coordinates": polygons}})
    return {"type": "FeatureCollection", "features": features}
