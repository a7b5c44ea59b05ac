"""Submap schemes: ways of cutting the reference map into searchable pieces, from build to query.

A scheme owns everything its submaps mean, in its one file:
  * at build time, ``fit`` / ``assign`` give every reference a label (its country, its K-means
    cluster); the index stores each label's references so that searching one submap never scans
    the others;
  * at query time, ``select`` turns labels into rows, ``widen`` names the next larger area,
    ``hypotheses`` offers submaps for a VLM's prior, ``name`` says what an id covers.
Submap ids are ``<prefix>:<label>[,<label>...]`` (``country:FR``, ``kmeans-100:37``; a list of
labels is their union, which is what widening produces). Schemes with ``stored = False``
(``global``, ``radius``, ``continent``) keep nothing in the index and are answered from the id
alone. Nothing outside this package tests an id's prefix: the index asks the scheme it names.

``Selection`` (a set of rows) and ``SchemeTable`` (a stored scheme's labels and where their rows
lie in each part of the index) live here, with the hooks that take and return them.
"""

from __future__ import annotations

import difflib
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, Field

from geoguide.core.errors import GeoguideError

WHOLE_MAP = "global"  # the id of the whole reference map (the global scheme's only submap)


class SubmapError(GeoguideError, ValueError):
    """A submap id that names nothing in this index; the message lists the valid forms."""


class Submap(BaseModel):
    id: str = Field(description="Search-area id to pass to search_submap, e.g. 'country:FR'")
    scheme: str
    name: str = Field(description="Human-readable name, e.g. 'FR — France'")
    lat: float = Field(description="Spherical centroid of the references")
    lon: float
    size: int = Field(description="Number of references")
    radius_km: float | None = Field(default=None, description="Distance from centroid covering 90% of refs")


class PriorHint(BaseModel):
    """What a scheme is told of the VLM's prior when it offers hypotheses."""

    point: tuple[float, float] | None = Field(None, description="(lat, lon) when the prior is trusted at point level")
    country: str | None = Field(None, description="ISO2 of the prior's country")
    named: list[str] = Field(default_factory=list, description="ISO2 codes of other countries the VLM named, likeliest first")
    clusters: int = Field(3, ge=1, description="how many clusters a clustering scheme's hypothesis spans")


@dataclass(frozen=True)
class Selection:
    """A set of reference rows: global row ranges (each within one part, a slice of its storage
    order), slices of a part's copy in another scheme's order, or rows."""

    ranges: tuple[tuple[int, int], ...] = ()
    rows: np.ndarray | None = None
    permuted: tuple[tuple[str, int, int, int], ...] = ()  # (scheme prefix, part, start, end) in that order

    @property
    def size(self) -> int:
        n = sum(b - a for a, b in self.ranges) + sum(b - a for _, _, a, b in self.permuted)
        return n + (0 if self.rows is None else len(self.rows))


@dataclass
class SchemePart:
    """One scheme's table in one part (the base or a segment): label -> [start, end) in ``order``."""

    offset: int  # global row of the part's first row
    spans: dict[str, tuple[int, int]]
    order: np.ndarray | None  # None: the part's storage order
    codes: np.ndarray | None = None  # the codes in ``order`` (None: gather rows, as version-1 indices do)


@dataclass
class SchemeTable:
    """One scheme's submaps: label -> metadata (live sizes) and where its rows are.

    ``spans``, ``order`` and ``codes`` are the base's (``spans`` has every label with live
    references; (0, 0) for one only segments hold); ``parts`` has the base's and each segment's.
    """

    scheme: SubmapScheme
    submaps: dict[str, Submap]  # by label
    spans: dict[str, tuple[int, int]]
    order: np.ndarray | None
    codes: np.ndarray | None = None  # the codes in ``order`` (None: gather rows, as version-1 indices do)
    parts: list[SchemePart] = field(default_factory=list)
    dead: np.ndarray | None = None  # tombstoned global rows, sorted

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = [SchemePart(0, self.spans, plain(self.order), plain(self.codes))]

    def selection(self, labels: list[str]) -> Selection:
        ranges: list[tuple[int, int]] = []
        permuted: list[tuple[str, int, int, int]] = []
        gathered: list[np.ndarray] = []
        for pi, part in enumerate(self.parts):
            spans = sorted(part.spans[lab] for lab in labels if lab in part.spans)
            if not spans:
                continue
            if part.order is None:
                ranges += [(part.offset + a, part.offset + b) for a, b in spans]
            elif part.codes is not None:
                permuted += [(self.scheme.prefix, pi, a, b) for a, b in spans]
            else:
                gathered += [part.offset + np.asarray(part.order[a:b], dtype=np.int64) for a, b in spans]
        rows = np.sort(np.concatenate(gathered)) if gathered else None
        return Selection(ranges=tuple(ranges), rows=rows, permuted=tuple(permuted))

    def rows(self, label: str) -> np.ndarray:
        """Global rows of one label's live references, in every part."""
        out = []
        for part in self.parts:
            if label in part.spans:
                a, b = part.spans[label]
                local = np.arange(a, b) if part.order is None else np.asarray(part.order[a:b], dtype=np.int64)
                out.append(part.offset + local)
        rows = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        if self.dead is not None and len(self.dead):
            rows = rows[~np.isin(rows, self.dead)]
        return rows


def plain(a: np.ndarray | None) -> np.ndarray | None:
    """A memory map as a plain ndarray view of the same pages (no copy; cheaper to slice)."""
    return None if a is None else np.asarray(a)


class MapView(Protocol):
    """What a scheme sees of an opened index at query time (``ReferenceIndex`` is one)."""

    refs: Any  # the reference table: columns id, lat, lon, country, author, ...
    schemes: dict[str, SchemeTable]  # the stored schemes, by prefix

    def everything(self) -> Selection: ...
    def within(self, lat: float, lon: float, km: float) -> Selection: ...
    def scheme_of(self, kind: str) -> SchemeTable | None: ...
    def resolve(self, submap_id: str) -> Selection: ...


class SubmapScheme(ABC):
    kind: ClassVar[str]
    # False for schemes answered from the id alone at query time (a radius around any point).
    stored: ClassVar[bool] = True
    # How an id of this scheme is written, for error messages ({prefix} is filled in).
    id_form: ClassVar[str] = "{prefix}:LABEL[,LABEL...]"

    def __init__(self, param: str | None = None):
        self.param = param

    @property
    def spec(self) -> str:
        """The text that names this scheme on the command line, e.g. ``kmeans:100``."""
        return self.kind if self.param is None else f"{self.kind}:{self.param}"

    @property
    def prefix(self) -> str:
        """Id prefix of its submaps, e.g. ``kmeans-100``; also the file stem in the index."""
        return self.kind if self.param is None else f"{self.kind}-{self.param}"

    def submap_id(self, label: str) -> str:
        return f"{self.prefix}:{label}"

    # ---- build time ----------------------------------------------------------------------------
    def fit(self, lat: np.ndarray, lon: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Learn whatever the scheme needs from reference coordinates (K-means centroids)."""

    def assign(self, lat: np.ndarray, lon: np.ndarray, country: np.ndarray) -> np.ndarray:
        """One string label per reference (stored schemes must say how)."""
        raise NotImplementedError(f"the {self.kind} scheme stores nothing; it is answered at query time")

    def label_name(self, label: str, lat: float, lon: float) -> str:
        """Human name of one submap, given its centroid."""
        return self.submap_id(label)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state`` returned."""

    # ---- query time ----------------------------------------------------------------------------
    def table(self, index: MapView) -> SchemeTable:
        """This stored scheme's submap table in ``index``."""
        return index.schemes[self.prefix]

    def normalize(self, labels: list[str]) -> list[str]:
        """Labels as the index stores them (the country scheme reads names: ``Italy`` -> ``IT``)."""
        return labels

    def suggest(self, index: MapView, label: str) -> list[str]:
        """Stored labels close to one that does not exist, nearest first."""
        return difflib.get_close_matches(label, list(self.table(index).spans), n=3, cutoff=0.5)

    def select(self, index: MapView, labels: list[str]) -> Selection:
        """The rows of the union of ``labels``; ``SubmapError`` naming the ones that do not exist,
        with the nearest valid ones."""
        table = self.table(index)
        missing = [lab for lab in labels if lab not in table.spans]
        if missing or not labels:
            near = [s for m in missing for s in self.suggest(index, m)]
            examples = near or sorted(table.spans, key=lambda lab: -table.submaps[lab].size)[:5]
            raise SubmapError(
                f"submap(s) {', '.join(self.submap_id(m) for m in missing) or self.prefix + ':'} do not exist in this "
                f"index (no references there); {'did you mean' if near else 'the largest are'} "
                f"{', '.join(self.submap_id(lab) for lab in dict.fromkeys(examples))}"
            )
        return table.selection(labels)

    def name(self, labels: list[str]) -> str:
        """What an id of this scheme covers, for a person (a union of labels, say)."""
        return f"{self.prefix}: {', '.join(labels[:8])}{' …' if len(labels) > 8 else ''} ({len(labels)} submaps)"

    def widen(self, index: MapView, labels: list[str], near: tuple[float, float] | None) -> tuple[str, str]:
        """The next larger area around ``labels`` (toward ``near``, the prior's point, if given)
        as (submap id, how it grew); the whole map unless the scheme knows better."""
        return WHOLE_MAP, f"{self.prefix} -> the whole map"

    def hypotheses(self, index: MapView, prior: PriorHint) -> list[str]:
        """Submap ids to search for this prior, likeliest first (none: the scheme offers none)."""
        return []

    def labels_in_country(self, index: MapView, iso: str) -> set[str]:
        """The labels with at least one live reference in country ``iso``."""
        table, wanted = self.table(index), iso.encode()
        return {lab for lab in table.spans if np.any(index.refs["country"][table.rows(lab)] == wanted)}

    def countries(self, labels: list[str]) -> set[str] | None:
        """The countries an id names outright, or None when its labels are not countries."""
        return None
