"""geoguide.tools.gazetteer: names -> coordinates and back, and every bad input returned as a ToolError."""

from __future__ import annotations

from geoguide.geo.geometry import haversine_km
from geoguide.tools.base import ToolError
from geoguide.tools.gazetteer import GeocodeArgs, GeocodeResult, ReverseGeocodeArgs, geocode, reverse_geocode


def _best(name: str, **kw):
    res = geocode(GeocodeArgs(name=name, **kw))
    assert isinstance(res, GeocodeResult), res
    return res.matches[0]


def test_geocode_cities():
    lyon = _best("Lyon")
    assert (lyon.kind, lyon.country) == ("city", "FR") and haversine_km(lyon.lat, lyon.lon, 45.76, 4.84) < 5
    assert _best("Zurich").name == "Zürich" and _best("zürich").country == "CH"  # accent-insensitive
    assert _best("Sao Paulo").country == "BR"
    assert _best("Cologne").name == "Köln"  # alternate name of a big city beats a small namesake
    assert _best("Naples").country == "IT"  # population decides between exact matches


def test_geocode_qualifiers():
    assert _best("Lyon, France").country == "FR"
    assert _best("Paris", country="US").country == "US"
    springfield = _best("Springfield, Illinois")
    assert haversine_km(springfield.lat, springfield.lon, 39.80, -89.64) < 10
    assert _best("Springfield, IL, USA").name == springfield.name
    assert _best("Saint-Denis, Reunion").lat < 0  # the territory's Saint-Denis, not the one by Paris
    assert _best("Shibuya, Tokyo").country == "JP"  # an unknown qualifier is ignored


def test_geocode_countries_and_places():
    fr = _best("France")
    assert (fr.kind, fr.country) == ("country", "FR") and fr.population > 60_000_000
    res = geocode({"name": "USA"})
    assert [m.kind for m in res.matches] == ["country"]  # no cities whose alternate name is "USA"
    reunion = _best("Réunion")  # filed under FR, but placed in the Indian Ocean
    assert (reunion.kind, reunion.country) == ("place", "FR") and haversine_km(
        reunion.lat, reunion.lon, -21.1, 55.5
    ) < 50
    assert _best("Europe").kind == "place"


def test_geocode_errors_are_tool_errors():
    res = geocode(GeocodeArgs(name="xqzzy"))
    assert isinstance(res, ToolError) and "xqzzy" in res.error
    assert "Lyon" in geocode({"name": "Lyonn"}).error  # a suggestion
    assert isinstance(geocode({"name": "Lyon", "country": "Atlantis"}), ToolError)
    assert isinstance(geocode({"name": "Lyon", "country": "JP"}), ToolError)
    assert isinstance(geocode({"name": "?!"}), ToolError)
    assert "name" in geocode({"limit": 0}).error  # validation problems come back, not raised


def test_reverse_geocode_paris():
    res = reverse_geocode(ReverseGeocodeArgs(lat=48.8566, lon=2.3522))
    assert (res.country, res.country_name, res.continent, res.on_land) == ("FR", "France", "Europe", True)
    assert res.nearest_city == "Paris" and res.nearest_city_km < 2 and res.ocean is None


def test_reverse_geocode_at_sea():
    res = reverse_geocode({"lat": 44.5, "lon": -2.0})
    assert not res.on_land and res.country in {"FR", "ES"} and res.ocean == "Bay of Biscay"
    res = reverse_geocode({"lat": 10.0, "lon": -140.0})
    assert res.country is None and res.continent is None and res.nearest_city_km > 1000


def test_reverse_geocode_errors_are_tool_errors():
    for bad in ({"lat": 200, "lon": 0}, {"lat": 0, "lon": -181}, {"lat": "north", "lon": 0}, {"lat": 1.0}):
        assert isinstance(reverse_geocode(bad), ToolError), bad
    assert "latitude" in reverse_geocode(ReverseGeocodeArgs(lat=200, lon=0)).error
    assert isinstance(reverse_geocode({"lat": float("nan"), "lon": 0}), ToolError)


def test_first_level_regions_are_found_and_ranked_against_cities():
    """Tuscany is the Italian region before the Ontario town; Madrid the city before its region;
    a qualifier filters regions like cities."""
    from geoguide.geo.regions import region_at
    from geoguide.tools.gazetteer import GeocodeArgs, geocode

    tuscany = geocode(GeocodeArgs(name="Tuscany", limit=2)).matches
    assert [(m.kind, m.country) for m in tuscany] == [("region", "IT"), ("city", "CA")]
    assert 43 < tuscany[0].lat < 44.2 and 10.3 < tuscany[0].lon < 11.8 and 80 < tuscany[0].radius_km < 130
    assert [m.kind for m in geocode(GeocodeArgs(name="Madrid", limit=5)).matches][0] == "city"
    assert [(m.kind, m.name) for m in geocode(GeocodeArgs(name="Catalonia, Spain")).matches] == [("region", "Catalonia")]
    assert region_at(43.7696, 11.2558) == ("Tuscany", "IT")  # Florence
    assert region_at(48.8566, 2.3522) == ("Ile-de-France", "FR")
