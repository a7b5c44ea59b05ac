"""The whole map as one submap: the retrieval-only baseline and the last step of widening."""

from __future__ import annotations

import numpy as np

from geoguide.indices.submaps.base import SubmapScheme
from geoguide.indices.submaps.registry import register_scheme


@register_scheme
class GlobalScheme(SubmapScheme):
    kind = "global"

    def submap_id(self, label: str) -> str:
        return "global"

    def assign(self, lat: np.ndarray, lon: np.ndarray, country: np.ndarray) -> np.ndarray:
        return np.full(len(lat), "all")

    def label_name(self, label: str, lat: float, lon: float) -> str:
        return "global — the whole reference map"
