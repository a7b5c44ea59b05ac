"""Continent submaps: the union of a continent's countries, answered from the country scheme.

Ids look like ``continent:Europe``. Nothing is stored: the index must hold the ``country`` scheme,
whose submaps of that continent make the selection; widening a continent gives the whole map.
"""

from __future__ import annotations

from geoguide.indices.submaps.base import WHOLE_MAP, MapView, Selection, SubmapError, SubmapScheme
from geoguide.indices.submaps.registry import register_scheme


def continent_id(name: str) -> str:
    return f"continent:{name}"


@register_scheme
class ContinentScheme(SubmapScheme):
    kind = "continent"
    stored = False
    id_form = "continent:NAME"

    def select(self, index: MapView, labels: list[str]) -> Selection:
        from geoguide.geo import continent_of, continents

        table = index.scheme_of("country")
        if table is None:
            raise SubmapError("continent submaps need an index built with the 'country' scheme")
        known = {c.lower(): c for c in continents()}
        name = ",".join(labels)
        if name.lower() not in known:
            raise SubmapError(f"unknown continent {name!r}; valid: {', '.join(sorted(known.values()))}")
        countries = [lab for lab in table.spans if continent_of(lab) == known[name.lower()]]
        if not countries:
            raise SubmapError(f"no references in continent {known[name.lower()]}")
        return table.selection(countries)

    def name(self, labels: list[str]) -> str:
        return f"{','.join(labels)} (continent)"

    def widen(self, index: MapView, labels: list[str], near: tuple[float, float] | None) -> tuple[str, str]:
        return WHOLE_MAP, "continent -> the whole map"
