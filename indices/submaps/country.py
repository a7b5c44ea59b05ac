"""Country submaps (the paper's first strategy): a reference belongs to the country it lies in.

At query time a prior's countries are the hypotheses (its own, then the others the VLM named; a
point prior in a country without references searches 500 km around the point instead), and
widening adds land neighbours, then the continent, then the whole map.
"""

from __future__ import annotations

import difflib
from collections import Counter

import numpy as np

from geoguide.indices.submaps.base import WHOLE_MAP, MapView, PriorHint, SubmapScheme
from geoguide.indices.submaps.continent import continent_id
from geoguide.indices.submaps.radius import radius_id
from geoguide.indices.submaps.registry import register_scheme

FALLBACK_RADIUS_KM = 500  # around a point prior whose country has no references: a region's reach


@register_scheme
class CountryScheme(SubmapScheme):
    kind = "country"

    def __init__(self, param: str | None = None):
        if param is not None:
            raise ValueError("the country scheme takes no parameter")
        super().__init__(None)

    def assign(self, lat: np.ndarray, lon: np.ndarray, country: np.ndarray) -> np.ndarray:
        # Countries are resolved once per reference (point in polygon, nearest coast offshore)
        # and stored in the reference table; the scheme just groups by them.
        return np.asarray(country).astype(str)

    def label_name(self, label: str, lat: float, lon: float) -> str:
        from geoguide.geo import country_name

        return f"{label} — {country_name(label) or 'unknown'}"

    def countries(self, labels: list[str]) -> set[str] | None:
        return set(labels)

    def normalize(self, labels: list[str]) -> list[str]:
        """ISO2 codes from names, ISO3 codes and aliases (``Italy``, ``ITA``, ``Holland``)."""
        from geoguide.geo import lookup_country

        return [lab if len(lab) == 2 and lab.isupper() else (lookup_country(lab) or lab) for lab in labels]

    def suggest(self, index: MapView, label: str) -> list[str]:
        """Present countries whose code or name is closest to ``label`` (``Itly`` -> ``IT``)."""
        from geoguide.geo import country_name

        present = list(self.table(index).spans)
        names = {(country_name(iso) or iso).lower(): iso for iso in present}
        near = difflib.get_close_matches(label.lower(), list(names), n=3, cutoff=0.6)
        return [names[n] for n in near] or difflib.get_close_matches(label.upper(), present, n=3, cutoff=0.5)

    def labels_in_country(self, index: MapView, iso: str) -> set[str]:
        return {iso} & set(self.table(index).spans)

    def hypotheses(self, index: MapView, prior: PriorHint) -> list[str]:
        present = self.table(index).spans
        out: list[str] = []
        for iso in ([prior.country] if prior.country else []) + prior.named:
            if iso in present and self.submap_id(iso) not in out:
                out.append(self.submap_id(iso))
        if not out and prior.point is not None:
            out.append(radius_id(*prior.point, FALLBACK_RADIUS_KM))  # the prior's country has no references
        return out

    def widen(self, index: MapView, labels: list[str], near: tuple[float, float] | None) -> tuple[str, str]:
        """Land neighbours of the part of each country that holds the prior (its main part without
        one), and only neighbours whose own main part borders it back: France in Europe never grows
        into Brazil through French Guiana, and Brazil never grows into all of France's (European)
        photos. Without new neighbours: the continent, then the whole map."""
        from geoguide.geo import continent_of, neighbours

        table = self.table(index)
        present = set(table.spans)
        grown = list(labels)
        for lab in labels:
            around = neighbours(lab, *near) if near is not None else neighbours(lab)
            grown += [nb for nb in around if nb in present and nb not in grown and lab in neighbours(nb)]
        if len(grown) > len(labels):
            return self.submap_id(",".join(grown)), f"added land neighbours {', '.join(grown[len(labels):])}"
        conts = Counter(continent_of(lab) for lab in labels if continent_of(lab))
        if conts:
            cont = conts.most_common(1)[0][0]
            if index.resolve(continent_id(cont)).size > sum(table.submaps[x].size for x in labels):
                return continent_id(cont), f"no more land neighbours -> continent {cont}"
        return WHOLE_MAP, "no wider region -> the whole map"
