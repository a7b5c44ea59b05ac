"""Land neighbours: which countries border the part of a country a photo is in.

Widening a search from one country to its neighbours must not jump continents: France around Paris
borders Spain, Italy, Germany..., French Guiana borders Brazil and Suriname. So a country's rings
are grouped into regions (a polygon, its holes, and the polygons of the same country within
``PART_LINK_KM``), contacts are recorded per region, and ``neighbours`` answers for the region
nearest the photo (or the one most of the country's people live in, without a point).
``all_neighbours`` is the country-level union, which prior corruption draws from.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from geoguide.geo.geometry import km_to_chord, latlon_to_unit, validate_latlon
from geoguide.geo.points import _boundary, _edges, _rings, inside_ring
from geoguide.geo.world import GEONAMES_ONLY, _ring_area_centroid, countries, country, geonames_file

if TYPE_CHECKING:  # scipy is imported where first needed: it costs ~0.5 s at import
    from scipy.spatial import cKDTree

# Countries whose boundaries come this close are land neighbours: shared borders are exact in
# Natural Earth (distance 0); the slack admits causeway-close pairs such as Singapore-Malaysia.
NEIGHBOUR_TOL_KM = 2.0
# Polygons of one country this close (on their 1 km boundary samples) form one region for land
# neighbours: Great Britain with Northern Ireland (20 km of sea), Zealand with Jutland (bridged
# straits); not France with Corsica (170 km), Alaska with Washington, Norway with Svalbard.
PART_LINK_KM = 30.0
_LINK_CELL_KM = 8.0  # thinning of the boundary for the first, approximate nearness pass


@dataclass(frozen=True)
class _Regions:
    """Each country's rings grouped into regions: a polygon, its holes, and the polygons of the
    same country within PART_LINK_KM of it (mainland France with Corsica? no, 170 km;
    with Belle-Île, yes; French Guiana, Reunion: regions of their own)."""

    of_ring: np.ndarray  # (R,) region index per ring
    country: np.ndarray  # (G,) country index per region
    area_km2: np.ndarray  # (G,) summed ring areas (holes counted too: only used to rank)


@lru_cache(maxsize=1)
def _regions() -> _Regions:
    """Union-find over rings: near each other (PART_LINK_KM) or one inside the other."""
    from scipy.spatial import cKDTree

    rings, owner = _rings()
    parent = list(range(len(rings)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    multi = np.flatnonzero(np.bincount(owner, minlength=len(countries())) > 1)
    bd = _boundary()
    by_ring = bd.tree.data[np.argsort(bd.ring, kind="stable")]
    ptr = np.searchsorted(np.sort(bd.ring), np.arange(len(rings) + 1))
    lo, hi = np.minimum.reduceat(by_ring, ptr[:-1]), np.maximum.reduceat(by_ring, ptr[:-1])
    r = km_to_chord(PART_LINK_KM)

    def close(i: int, j: int) -> bool:
        """Whether rings i and j come within PART_LINK_KM, on their full boundaries."""
        a, b = by_ring[ptr[i] : ptr[i + 1]], by_ring[ptr[j] : ptr[j + 1]]
        a = a[np.all((a >= lo[j] - r) & (a <= hi[j] + r), axis=1)]
        if not len(a):
            return False
        b = b[np.all((b >= a.min(axis=0) - r) & (b <= a.max(axis=0) + r), axis=1)]
        return bool(len(b)) and bool(np.isfinite(cKDTree(b).query(a, distance_upper_bound=r)[0]).any())

    # Nearness on one boundary point per (ring, _LINK_CELL_KM cell): a pair of rings whose thinned
    # points come within PART_LINK_KM is close for sure (thinned distances never undershoot);
    # pairs within the thinning's worst overshoot beyond it are decided on full boundaries.
    keep = np.isin(owner[bd.ring], multi)
    cell = km_to_chord(_LINK_CELL_KM)
    cells = np.floor((bd.tree.data[keep] + 1.0) / cell).astype(np.int64)
    key = ((bd.ring[keep].astype(np.int64) * 4096 + cells[:, 0]) * 4096 + cells[:, 1]) * 4096 + cells[:, 2]
    _, first = np.unique(key, return_index=True)
    pts, pring = bd.tree.data[keep][first], bd.ring[keep][first]
    order = np.argsort(owner[pring], kind="stable")
    pts, pring = pts[order], pring[order]
    bounds = np.searchsorted(owner[pring], np.arange(len(countries()) + 1))
    n = len(rings)
    for c in multi:
        cp, rc = pts[bounds[c] : bounds[c + 1]], pring[bounds[c] : bounds[c + 1]].astype(np.int64)
        p = cKDTree(cp).query_pairs(r + 2 * np.sqrt(3) * cell, output_type="ndarray")
        p = p[rc[p[:, 0]] != rc[p[:, 1]]]
        sure = np.linalg.norm(cp[p[:, 0]] - cp[p[:, 1]], axis=1) <= r
        ri, rj = rc[p[:, 0]], rc[p[:, 1]]
        pair = np.minimum(ri, rj) * n + np.maximum(ri, rj)
        sure_keys = np.unique(pair[sure])
        for k in sure_keys.tolist():
            union(*divmod(k, n))
        for k in np.setdiff1d(np.unique(pair[~sure]), sure_keys).tolist():
            i, j = divmod(k, n)
            if find(i) != find(j) and close(i, j):
                union(i, j)
    # Containment: a hole (Lesotho in South Africa) or an island in a lake joins its encloser.
    boxes = np.array([(*ring.min(axis=0), *ring.max(axis=0)) for ring in rings])
    for c in multi:
        members = np.flatnonzero(owner == c)
        box = boxes[members]
        holds = (
            (box[:, None, 0] <= box[None, :, 0])
            & (box[:, None, 1] <= box[None, :, 1])
            & (box[None, :, 2] <= box[:, None, 2])
            & (box[None, :, 3] <= box[:, None, 3])
        )
        np.fill_diagonal(holds, False)
        for jo, io in zip(*np.nonzero(holds), strict=True):  # ring members[jo]'s box holds members[io]'s
            i, j = int(members[io]), int(members[jo])
            if find(i) != find(j) and inside_ring(rings[i][0, 0], rings[i][0, 1], rings[j]):
                union(i, j)
    roots = np.array([find(i) for i in range(len(rings))])
    _, of_ring = np.unique(roots, return_inverse=True)
    area = np.array([_ring_area_centroid(ring)[0] for ring in rings])
    n = int(of_ring.max()) + 1
    country = np.zeros(n, dtype=np.int16)
    country[of_ring] = owner
    return _Regions(of_ring.astype(np.int32), country, np.bincount(of_ring, weights=area, minlength=n))


@dataclass(frozen=True)
class _Neighbours:
    index: dict[str, int]  # ISO2 -> country index
    trees: list[cKDTree]  # per country index: its boundary points (unit vectors)
    point_region: list[np.ndarray]  # per country index: region of each of those points
    region_neighbours: list[list[str]]  # per region: sorted ISO2 codes of the countries it touches
    main: np.ndarray  # per country index: its main region


@lru_cache(maxsize=1)
def _neighbour_table() -> _Neighbours:
    """Per-country KD-trees of boundary points, tested pairwise where their boxes meet; each
    contact is recorded for the two regions it joins (a boundary point lies within
    NEIGHBOUR_TOL_KM of at most one region of a country, since regions are farther apart).

    Measured once with time.perf_counter (2 shared cores): ~2.5 s once the polygons and boundary
    are loaded (grouping rings into regions ~1.1 s, contacts ~0.9 s, main regions from GeoNames
    cities ~0.5 s), ~4.4 s for a cold first ``neighbours`` call (the country-level table this
    replaces took ~1.2 s on top of the same loading). Cached in memory only, a disk cache would not
    pay for itself; then a call takes ~1 us, ~30 us with a point (one KD-tree query).
    """
    from scipy.spatial import cKDTree

    bd, codes, reg = _boundary(), _edges().codes, _regions()
    order = np.argsort(bd.owner, kind="stable")
    xyz, region = bd.tree.data[order], reg.of_ring[bd.ring[order]]
    bounds = np.searchsorted(bd.owner[order], np.arange(len(codes) + 1))
    pts = [xyz[bounds[i] : bounds[i + 1]] for i in range(len(codes))]
    point_region = [region[bounds[i] : bounds[i + 1]] for i in range(len(codes))]
    trees = [cKDTree(p) for p in pts]
    r = km_to_chord(NEIGHBOUR_TOL_KM)
    lo = np.array([t.mins for t in trees]) - r
    hi = np.array([t.maxes for t in trees]) + r
    boxes_meet = np.all((lo[:, None] <= hi[None]) & (lo[None] <= hi[:, None]), axis=2)
    touching: list[set[str]] = [set() for _ in range(len(reg.country))]
    for a, b in zip(*np.nonzero(np.triu(boxes_meet, 1)), strict=True):
        in_box = np.flatnonzero(np.all((pts[b] >= lo[a]) & (pts[b] <= hi[a]), axis=1))
        if not len(in_box):
            continue
        dist, idx = trees[a].query(pts[b][in_box], distance_upper_bound=r)
        hit = np.isfinite(dist)
        for ra, rb in set(
            zip(point_region[a][idx[hit]].tolist(), point_region[b][in_box[hit]].tolist(), strict=True)
        ):
            touching[ra].add(str(codes[b]))
            touching[rb].add(str(codes[a]))
    return _Neighbours(
        {str(c): i for i, c in enumerate(codes)},
        trees,
        point_region,
        [sorted(t) for t in touching],
        _main_regions(reg, trees, point_region),
    )


def _main_regions(reg: _Regions, trees: list[cKDTree], point_region: list[np.ndarray]) -> np.ndarray:
    """Per country, the region where most of its people live (GeoNames cities of 15,000+, each
    counted in its country's nearest region), else the largest: the part a photo filed under the
    country most likely shows. Population, not area: Malaysia's largest part is on Borneo, but
    Kuala Lumpur, and most photos, are on the peninsula."""
    pos = {c: i for i, c in enumerate(countries())}
    people = np.zeros(len(reg.country))
    by_country: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for city in geonames_file("cities15000.json").values():
        i = pos.get(GEONAMES_ONLY.get(city["countrycode"], city["countrycode"]))
        if i is not None:
            by_country[i].append((city["latitude"], city["longitude"], city["population"]))
    for i, rows in by_country.items():
        lat, lon, pop = np.array(rows).T
        _, idx = trees[i].query(latlon_to_unit(lat, lon))
        np.add.at(people, point_region[i][idx], pop)
    main = np.zeros(len(countries()), dtype=np.int64)
    for i in range(len(main)):
        mine = np.flatnonzero(reg.country == i)
        main[i] = mine[np.lexsort((reg.area_km2[mine], people[mine]))[-1]]
    return main


def all_neighbours(iso2: str | None) -> list[str]:
    """Land neighbours of any part of the country (the union over its regions): the country-level
    relation, which prior corruption draws from so that its figures do not depend on which part
    is the main one."""
    c = country(iso2)
    if c is None:
        return []
    table = _neighbour_table()
    reg = _regions()
    mine = np.flatnonzero(reg.country == table.index[c.iso2])
    return sorted({nb for r in mine for nb in table.region_neighbours[int(r)]})


def neighbours(iso2: str | None, lat: float | None = None, lon: float | None = None) -> list[str]:
    """Land neighbours of the part of the country a photo is in: the countries whose polygons come
    within NEIGHBOUR_TOL_KM of the country's region nearest to (lat, lon) (the one containing it,
    for a point inside the country), or of its main region without a point. So France around Paris
    borders Spain, Italy, Germany..., but French Guiana borders Brazil and Suriname, and widening
    France never jumps continents; Svalbard, Hawaii or Reunion have none. Islands have none; an
    unknown code has none either."""
    c = country(iso2)
    if c is None:
        return []
    if (lat is None) != (lon is None):
        raise ValueError("give both lat and lon, or neither")
    table = _neighbour_table()
    i = table.index[c.iso2]
    if lat is None or lon is None:
        region = int(table.main[i])
    else:
        validate_latlon(lat, lon)
        _, idx = table.trees[i].query(latlon_to_unit(lat, lon))
        region = int(table.point_region[i][idx])
    return list(table.region_neighbours[region])
