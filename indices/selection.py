"""Submap ids -> rows: each id is answered by the scheme it names (``indices.submaps``).

One of the three jobs ``ReferenceIndex`` (``indices.store``) puts together. Stored schemes are
the index's own tables (by prefix, ``country`` or ``kmeans-100``); any other prefix is looked up
among the query-time schemes (``global``, ``radius``, ``continent``, or one you register). This
module never tests a prefix itself: what an id selects, how it widens and what it is called are
the scheme's.
"""

from __future__ import annotations

from functools import cached_property

import faiss
import numpy as np

from geoguide.geo.geometry import km_to_chord, latlon_to_unit, spherical_centroid
from geoguide.indices.submaps import SCHEMES, Submap, SubmapError, SubmapScheme
from geoguide.indices.submaps.base import SchemeTable, Selection
from geoguide.indices.submaps.registry import query_time_scheme


class SubmapSelection:
    """Resolves submap ids through their schemes; also the ``MapView`` a scheme sees."""

    schemes: dict[str, SchemeTable]

    @cached_property
    def _coord_index(self) -> faiss.IndexFlatL2:
        index = faiss.IndexFlatL2(3)
        index.add(latlon_to_unit(self.refs["lat"], self.refs["lon"]).astype(np.float32))
        return index

    def everything(self) -> Selection:
        """Every row of every part (the whole map)."""
        return Selection(ranges=tuple((p.offset, p.offset + p.n) for p in self._parts))

    def within(self, lat: float, lon: float, km: float) -> Selection:
        """The live rows within ``km`` of a point (a range search over the references' unit vectors)."""
        _, _, ids = self._coord_index.range_search(latlon_to_unit([lat], [lon]).astype(np.float32), km_to_chord(km) ** 2)
        return Selection(rows=self._live(np.sort(ids.astype(np.int64))))

    def list_submaps(self, prefix: str) -> list[Submap]:
        if prefix not in self.schemes:
            raise SubmapError(f"no submap scheme {prefix!r} in this index; it has: {', '.join(self.schemes)}")
        return sorted(self.schemes[prefix].submaps.values(), key=lambda s: -s.size)

    def scheme_of(self, kind: str) -> SchemeTable | None:
        """The first stored table of a scheme kind (``kmeans`` finds ``kmeans-100``), or None."""
        return next((t for t in self.schemes.values() if t.scheme.kind == kind), None)

    def stored_table(self, name: str) -> SchemeTable:
        """A stored scheme's table by prefix (``kmeans-100``) or kind (``kmeans``); SubmapError naming
        the schemes the index has otherwise."""
        table = self.schemes.get(name) or self.scheme_of(name)
        if table is None:
            raise SubmapError(f"no submap scheme {name!r} in this index; it has: {', '.join(self.schemes)}")
        return table

    def scheme_for(self, submap_id: str) -> tuple[SubmapScheme, list[str]]:
        """The scheme an id names and the id's labels; SubmapError listing the valid forms."""
        prefix, sep, label = submap_id.strip().partition(":")
        scheme = self.schemes[prefix].scheme if prefix in self.schemes else query_time_scheme(prefix)
        labels = [s.strip() for s in label.split(",") if s.strip()]
        if scheme is None or (sep and not labels) or (not sep and scheme.stored):
            raise SubmapError(self._unknown(submap_id))
        return scheme, scheme.normalize(labels)

    def describe_submap(self, submap_id: str, sel: Selection | None = None) -> Submap:
        """Metadata of any id, including unions and radius ids (computed from their rows);
        pass ``sel`` when the id is already resolved, so its rows are not looked up twice."""
        scheme, labels = self.scheme_for(submap_id)
        if scheme.stored and len(labels) == 1 and labels[0] in self.schemes[scheme.prefix].submaps:
            return self.schemes[scheme.prefix].submaps[labels[0]]
        sel = sel if sel is not None else scheme.select(self, labels)
        rows = self.selection_rows(sel)
        lat, lon = spherical_centroid(self.refs["lat"][rows], self.refs["lon"][rows]) if len(rows) else (0.0, 0.0)
        return Submap(id=submap_id, scheme=scheme.prefix, name=scheme.name(labels), lat=lat, lon=lon, size=len(rows))

    def resolve(self, submap_id: str) -> Selection:
        """Submap id -> the rows it covers. Raises ``SubmapError`` with the valid forms."""
        scheme, labels = self.scheme_for(submap_id)
        return scheme.select(self, labels)

    def widen_id(self, submap_id: str, near: tuple[float, float] | None = None) -> tuple[str, str]:
        """The next larger area than an id's, as the scheme it names widens it: (submap id, how)."""
        scheme, labels = self.scheme_for(submap_id)
        scheme.select(self, labels)  # an id that names nothing is refused before it is widened
        return scheme.widen(self, labels, near)

    def countries_of(self, submap_id: str) -> set[str] | None:
        """The countries an id names outright (``country:FR,ES``), or None when it is not a list of countries."""
        scheme, labels = self.scheme_for(submap_id)
        return scheme.countries(labels)

    def _unknown(self, submap_id: str) -> str:
        query_time = [cls().id_form.format(prefix=kind) for kind, cls in SCHEMES.items() if not cls.stored]
        stored = [t.scheme.id_form.format(prefix=p) for p, t in self.schemes.items()]
        return f"unknown submap id {submap_id!r}; valid forms: {', '.join(query_time + stored)}"

    def selection_rows(self, sel: Selection) -> np.ndarray:
        """The live global rows of a selection."""
        parts = [np.arange(a, b) for a, b in sel.ranges]
        for prefix, j, a, b in sel.permuted:
            t = self.schemes[prefix].parts[j]
            order = np.asarray(t.order[a:b])
            parts.append(order if t.offset == 0 else t.offset + order)
        if sel.rows is not None:
            parts.append(np.asarray(sel.rows))
        return self._live(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
