"""Point -> country: which country's polygon holds a point, or whose coast is nearest offshore.

Every country a coordinate gets in geoguide (reference labels, submaps, the prior's country, the
answer's country, metrics per continent) comes from ``country_at`` / ``countries_at``, so they all
agree. The test is exact (even-odd rule, ray to the east, over the Natural Earth 10m polygons of
``geo.world``); ``countries_at`` answers most points from a 0.05 degree raster and
leaves only those near a boundary (~6.5% of land points) to the exact test, with the same result.
A sea point takes the country with the nearest coast within ``NEAREST_CAP_KM``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geoguide.core.derived import derived, load_arrays, save_arrays
from geoguide.geo.geometry import haversine_km, km_to_chord, latlon_to_unit, validate_latlon
from geoguide.geo.world import countries, parts, world_sources

if TYPE_CHECKING:  # scipy is imported where first needed: it costs ~0.5 s at import
    from scipy.spatial import cKDTree

# A sea point takes the country whose coast is nearest up to this distance (beaches, piers, ferries
# and GPS noise land there); beyond it a photo says nothing about a country.
NEAREST_CAP_KM = 200.0
NO_COUNTRY = ""  # what ``countries_at`` returns where ``country_at`` returns None

_RES = 0.05  # degrees: raster cell size and latitude band height of the edge index
_DENSIFY_KM = 1.0  # boundary sampling step for nearest-coast and neighbour distances
_SEA, _MIXED = -1, -2  # raster values besides country indices



@dataclass(frozen=True)
class _Edges:
    """All polygon edges, bucketed by latitude band so a horizontal ray meets few of them."""

    codes: np.ndarray  # (C,) '<U2', country index -> ISO2
    x1: np.ndarray
    y1: np.ndarray
    x2: np.ndarray
    y2: np.ndarray
    slope: np.ndarray  # dx/dy, 0 for horizontal edges (never crossed)
    owner: np.ndarray  # (E,) int16 country index
    band_ptr: np.ndarray  # (B+1,) CSR into band_edges; within a band edges are sorted by owner
    band_edges: np.ndarray
    ring: np.ndarray  # (E,) int32 index of the edge's ring in ``_rings()`` order


_NBANDS = round(180 / _RES)
_NCOLS = round(360 / _RES)


def _band(lat: np.ndarray) -> np.ndarray:
    return np.clip(np.floor((lat + 90.0) / _RES).astype(np.int64), 0, _NBANDS - 1)


def _col(lon: np.ndarray) -> np.ndarray:
    return np.clip(np.floor((lon + 180.0) / _RES).astype(np.int64), 0, _NCOLS - 1)


def _ranges(start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start[i], start[i] + count[i])`` without a Python loop."""
    return np.repeat(start - np.cumsum(count) + count, count) + np.arange(count.sum())


def _edge_samples(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lon, lat, owner) of n[i] evenly spaced points on edge i, start included, end excluded
    (the end is the next edge's start: rings are closed)."""
    ix = _edges()
    t = _ranges(np.zeros_like(n), n) / np.repeat(n, n)
    lon = np.repeat(ix.x1, n) + t * np.repeat(ix.x2 - ix.x1, n)
    lat = np.repeat(ix.y1, n) + t * np.repeat(ix.y2 - ix.y1, n)
    return lon, lat, np.repeat(ix.owner, n)


@lru_cache(maxsize=1)
def _edges() -> _Edges:
    """The edge index: memory-mapped from the derived cache (``core.derived``; a point reads only
    its band's edges), 0.6 s when made from the polygons, which a cold ``locate`` paid for one point."""
    try:
        path = derived("country-edges", [*world_sources(), Path(__file__)], "2", ".arrays", _save_edges)
        arrays = load_arrays(path)
        return _Edges(**{f.name: arrays[f.name] for f in fields(_Edges)})
    except (OSError, ValueError, KeyError):  # an unwritable cache or a damaged file: make it again
        return _make_edges()


def _save_edges(path: Path) -> None:
    edges = _make_edges()
    save_arrays(path, {f.name: getattr(edges, f.name) for f in fields(_Edges)})


def _make_edges() -> _Edges:
    codes = list(countries())
    rings, owner_of_ring = _rings()
    x1 = np.concatenate([r[:-1, 0] for r in rings])
    y1 = np.concatenate([r[:-1, 1] for r in rings])
    x2 = np.concatenate([r[1:, 0] for r in rings])
    y2 = np.concatenate([r[1:, 1] for r in rings])
    owner = np.repeat(np.array(owner_of_ring, dtype=np.int16), [len(r) - 1 for r in rings])
    dy = y2 - y1
    slope = np.divide(x2 - x1, dy, out=np.zeros_like(dy), where=dy != 0)
    b0, b1 = _band(np.minimum(y1, y2)), _band(np.maximum(y1, y2))
    counts = b1 - b0 + 1
    edge_ids = np.repeat(np.arange(len(x1)), counts)
    bands = _ranges(b0, counts)
    order = np.lexsort((owner[edge_ids], bands))
    band_ptr = np.zeros(_NBANDS + 1, dtype=np.int64)
    np.cumsum(np.bincount(bands, minlength=_NBANDS), out=band_ptr[1:])
    ring = np.repeat(np.arange(len(rings), dtype=np.int32), [len(r) - 1 for r in rings])
    codes_u2, band_edges = np.array(codes, dtype="<U2"), edge_ids[order].astype(np.int32)
    return _Edges(codes_u2, x1, y1, x2, y2, slope, owner, band_ptr, band_edges, ring)


@lru_cache(maxsize=1)
def _rings() -> tuple[list[np.ndarray], np.ndarray]:
    """Every polygon ring (outer boundaries and holes alike) and its country index, in the one
    order the edge, boundary and region structures share."""
    pos = {c: i for i, c in enumerate(countries())}
    rings = [r for p in parts() for r in p.rings]
    owner = np.array([pos[p.iso2] for p in parts() for _ in p.rings], dtype=np.int16)
    return rings, owner


def _point_in_polygons(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Exact even-odd test (ray to the east) -> country index per point, -1 outside every polygon."""
    ix = _edges()
    out = np.full(len(lat), _SEA, dtype=np.int16)
    if not len(lat):
        return out
    lat = np.clip(lat, -90.0 + 1e-9, 90.0 - 1e-9)  # a pole lies on Antarctica's edge, not outside it
    bands = _band(lat)
    order = np.argsort(bands, kind="stable")
    uniq, starts = np.unique(bands[order], return_index=True)
    for b, s, e in zip(uniq, starts, np.r_[starts[1:], len(order)], strict=True):
        edges = ix.band_edges[ix.band_ptr[b] : ix.band_ptr[b + 1]]
        if not len(edges):
            continue
        owners = ix.owner[edges]
        runs = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        ex1, ey1, ey2, es = ix.x1[edges], ix.y1[edges], ix.y2[edges], ix.slope[edges]
        step = max(1, 2_000_000 // len(edges))
        for c in range(s, e, step):
            pts = order[c : min(e, c + step)]
            y = lat[pts, None]
            cross = ((ey1 > y) != (ey2 > y)) & (lon[pts, None] < ex1 + (y - ey1) * es)
            odd = np.add.reduceat(cross.view(np.uint8), runs, axis=1) & 1
            hit = odd.any(axis=1)
            out[pts[hit]] = owners[runs[odd[hit].argmax(axis=1)]]
    return out


@lru_cache(maxsize=1)
def _raster() -> np.ndarray:
    """(3600, 7200) int16 lookup (52 MB): country index where a cell lies inside one country, -1
    where it is all sea, -2 where a boundary passes within a cell and the exact test must decide
    (~6.5% of land points).

    Rows are filled by scanlines through cell centres with the same crossing rule as
    ``_point_in_polygons``, so a cell no boundary touches agrees with the exact test all over.
    """
    from scipy.ndimage import binary_dilation

    ix = _edges()
    grid = np.full((_NBANDS, _NCOLS), _SEA, dtype=np.int16)
    for r in range(_NBANDS):
        edges = ix.band_edges[ix.band_ptr[r] : ix.band_ptr[r + 1]]
        y = -90.0 + (r + 0.5) * _RES
        edges = edges[(ix.y1[edges] > y) != (ix.y2[edges] > y)]
        if not len(edges):
            continue
        xi = ix.x1[edges] + (y - ix.y1[edges]) * ix.slope[edges]
        owners = ix.owner[edges]
        order = np.lexsort((xi, owners))  # every owner crosses an even number of times
        xi, owners = xi[order], owners[order]
        js = np.clip(np.ceil((xi[0::2] + 180.0) / _RES - 0.5), 0, _NCOLS).astype(np.int64)
        je = np.clip(np.ceil((xi[1::2] + 180.0) / _RES - 0.5), 0, _NCOLS).astype(np.int64)
        n = np.maximum(je - js, 0)
        cols = _ranges(js, n)
        grid[r, cols] = np.repeat(owners[0::2], n)
    # Mark cells any edge passes through (samples <= one cell apart, then one cell of dilation).
    span = np.maximum(np.abs(ix.x2 - ix.x1), np.abs(ix.y2 - ix.y1))
    sx, sy, _ = _edge_samples(np.maximum(1, np.ceil(span / _RES)).astype(np.int64))
    mixed = np.zeros(grid.shape, dtype=bool)
    mixed[_band(sy), _col(sx)] = True
    grid[binary_dilation(mixed, structure=np.ones((3, 3), dtype=bool))] = _MIXED
    return grid


# ----------------------------------------------------------------------------- nearest coast


@dataclass(frozen=True)
class _Boundary:
    """Boundary points every <= 1 km (vertices plus interpolated points on long edges)."""

    owner: np.ndarray
    ring: np.ndarray  # index into ``_rings()``
    tree: cKDTree  # over unit vectors, so chord distances are exact everywhere


@lru_cache(maxsize=1)
def _boundary() -> _Boundary:
    from scipy.spatial import cKDTree

    ix = _edges()
    length = haversine_km(ix.y1, ix.x1, ix.y2, ix.x2)
    n = np.maximum(1, np.ceil(length / _DENSIFY_KM)).astype(np.int64)
    lon, lat, owner = _edge_samples(n)
    return _Boundary(owner, np.repeat(ix.ring, n), cKDTree(latlon_to_unit(lat, lon)))


def _nearest_country(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Country index of the nearest boundary point within NEAREST_CAP_KM (to ~0.5 km), else -1."""
    bd = _boundary()
    dist, idx = bd.tree.query(latlon_to_unit(lat, lon), k=1, distance_upper_bound=km_to_chord(NEAREST_CAP_KM))
    out = np.full(len(lat), _SEA, dtype=np.int16)
    ok = np.isfinite(dist)
    out[ok] = bd.owner[idx[ok]]
    return out


# ----------------------------------------------------------------------------- public lookups


def country_at(lat: float, lon: float, nearest: bool = True) -> str | None:
    """ISO2 of the country containing the point; at sea (``nearest``) the country with the
    nearest coast within NEAREST_CAP_KM, else None. Uses the exact test, no raster build."""
    validate_latlon(lat, lon)
    la, lo = np.array([lat], dtype=np.float64), np.array([lon], dtype=np.float64)
    i = int(_point_in_polygons(lo, la)[0])
    if i == _SEA and nearest:
        i = int(_nearest_country(la, lo)[0])
    return None if i == _SEA else str(_edges().codes[i])


def countries_at(lats, lons, nearest: bool = True) -> np.ndarray:
    """Vectorised ``country_at``: '<U2' array, NO_COUNTRY ('') where it would return None.

    A 0.05 degree raster answers points far from any boundary; the rest take the exact test.
    """
    lat = np.asarray(lats, dtype=np.float64).ravel()
    lon = np.asarray(lons, dtype=np.float64).ravel()
    if lat.shape != lon.shape:
        raise ValueError(f"lats and lons differ in length: {lat.shape[0]} vs {lon.shape[0]}")
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"point {i} ({lat[i]}, {lon[i]}) is out of range; lat in [-90, 90], lon in [-180, 180]"
        )
    idx = _raster()[_band(lat), _col(lon)]
    mixed = idx == _MIXED
    idx[mixed] = _point_in_polygons(lon[mixed], lat[mixed])
    if nearest:
        sea = idx == _SEA
        idx[sea] = _nearest_country(lat[sea], lon[sea])
    codes = np.append(_edges().codes, NO_COUNTRY)  # index -1 -> NO_COUNTRY
    return codes[idx]


def inside_ring(lon: float, lat: float, ring: np.ndarray) -> bool:
    """Even-odd test of one point against one closed (n, 2) lon/lat ring (the rule
    ``_point_in_polygons`` applies), for tests against a few rings (containment, sea names)."""
    x1, y1, x2, y2 = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
    span = (y1 > lat) != (y2 > lat)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = span & (lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1))
    return bool(cross.sum() & 1)
