"""Country submaps (the paper's first strategy): a reference belongs to the country it lies in."""

from __future__ import annotations

import numpy as np

from geoguide.indices.submaps.base import SubmapScheme
from geoguide.indices.submaps.registry import register_scheme


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
