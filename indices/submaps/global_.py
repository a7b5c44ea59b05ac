"""The whole map as one submap: the retrieval-only baseline and the last step of widening."""

from __future__ import annotations

from geoguide.indices.submaps.base import WHOLE_MAP, MapView, Selection, SubmapError, SubmapScheme
from geoguide.indices.submaps.registry import register_scheme


@register_scheme
class GlobalScheme(SubmapScheme):
    kind = "global"
    stored = False
    id_form = WHOLE_MAP

    def submap_id(self, label: str) -> str:
        return WHOLE_MAP

    def select(self, index: MapView, labels: list[str]) -> Selection:
        if labels:
            raise SubmapError(f"'{WHOLE_MAP}' is the whole map and takes no label, got '{WHOLE_MAP}:{','.join(labels)}'")
        return index.everything()

    def name(self, labels: list[str]) -> str:
        return "global — the whole reference map"

    def widen(self, index: MapView, labels: list[str], near: tuple[float, float] | None) -> tuple[str, str]:
        raise SubmapError("already searching the whole map ('global'); nothing is wider — switch hypothesis instead")
