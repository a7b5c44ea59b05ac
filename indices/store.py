"""The on-disk reference index and submap-restricted search over it.

Layout of an index directory (every file written atomically, ``manifest.json`` last)::

    manifest.json            schema version, descriptor config, counts, schemes, file checksums
    refs/{id,author,country,path}.npy   fixed-width UTF-8 byte strings, memory-mapped
    refs/{lat,lon}.npy       float64 degrees
    descriptors.f16.npy      (N, D) float16, memory-mapped
    descriptor_state.npz     what the descriptor learned (PCA, vocabulary)
    faiss.index              all N vectors, in storage order
    submaps/<prefix>.json    a scheme's submaps, label -> [start, end) in its order
    submaps/<prefix>.order.npy   row order of a non-primary scheme

References are stored sorted by the *primary* scheme (the first one built), so one of its
submaps is a contiguous row range, searched with FAISS ``IDSelectorRange`` (FAISS scans only the
range). Other schemes keep a row order of their own; their submaps are gathered from the
memory-mapped descriptors and searched by brute force over those rows alone. A union of submaps
(what widening produces) is searched range by range and merged.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indices.descriptors import Descriptor, get_descriptor
from indices.errors import GeoguideError
from indices.geometry import km_to_chord, latlon_to_unit, spherical_centroid
from indices.manifest import MANIFEST_NAME, IndexFormatError, Manifest, verify_files
from indices.submaps import Submap, SubmapScheme, parse_scheme
from indices.submaps.radius import parse_radius_label

REF_COLUMNS = ("id", "author", "country", "path", "lat", "lon")
FULL_VERIFY_MAX_BYTES = 1 << 30  # hash everything on open below 1 GiB; above it, sizes only


class SubmapError(GeoguideError, ValueError):
    """An unknown or malformed submap id; the message lists what is valid."""


@dataclass(frozen=True)
class Selection:
    """A set of reference rows: contiguous ranges of storage order, or explicit rows."""

    ranges: tuple[tuple[int, int], ...] = ()
    rows: np.ndarray | None = None

    @property
    def size(self) -> int:
        return sum(b - a for a, b in self.ranges) + (0 if self.rows is None else len(self.rows))


@dataclass
class SchemeTable:
    """One scheme's submaps as stored: label -> [start, end) in ``order`` (None = storage order)."""

    scheme: SubmapScheme
    submaps: dict[str, Submap]  # by label
    spans: dict[str, tuple[int, int]]
    order: np.ndarray | None

    def selection(self, labels: list[str]) -> Selection:
        spans = sorted(self.spans[lab] for lab in labels)
        if self.order is None:
            return Selection(ranges=tuple(spans))
        return Selection(rows=np.sort(np.concatenate([self.order[a:b] for a, b in spans])))


def _decode(b: bytes) -> str:
    return b.decode("utf-8")


class ReferenceIndex:
    """An opened index directory: reference table, descriptors, FAISS index and submaps."""

    def __init__(self, root: str | Path, verify: bool | None = None):
        self.root = Path(root)
        self._descriptor_lock = threading.Lock()
        self._descriptor: Descriptor | None = None
        mpath = self.root / MANIFEST_NAME
        if not mpath.exists():
            hint = " (an interrupted build? run the same build command again to resume)" if (self.root / "work").exists() else ""
            raise IndexFormatError(f"{self.root}: not a geoguide index (no {MANIFEST_NAME}){hint}")
        try:
            self.manifest = Manifest.model_validate_json(mpath.read_text())
        except ValueError as e:
            raise IndexFormatError(f"{mpath}: unreadable or unsupported manifest ({str(e).splitlines()[0]})") from None
        total = sum(f.bytes for f in self.manifest.files.values())
        verify_files(self.root, self.manifest, full=total <= FULL_VERIFY_MAX_BYTES if verify is None else verify)
        n = self.manifest.n_references
        self.refs: dict[str, np.ndarray] = {c: np.load(self.root / "refs" / f"{c}.npy", mmap_mode="r") for c in REF_COLUMNS}
        self.descriptors = np.load(self.root / "descriptors.f16.npy", mmap_mode="r")
        if self.descriptors.shape != (n, self.manifest.descriptor.dim) or any(len(v) != n for v in self.refs.values()):
            raise IndexFormatError(f"{self.root}: array shapes disagree with the manifest ({n} references); rebuild it")
        self.faiss_index = faiss.read_index(str(self.root / "faiss.index"))
        if self.faiss_index.ntotal != n or self.faiss_index.d != self.manifest.descriptor.dim:
            raise IndexFormatError(f"{self.root}: faiss.index does not match the manifest; rebuild it")
        self.schemes: dict[str, SchemeTable] = {}
        for info in self.manifest.schemes:
            meta = json.loads((self.root / "submaps" / f"{info.prefix}.json").read_text())
            scheme = parse_scheme(info.spec)
            scheme.load_state(meta.get("state", {}))
            order = None if info.contiguous else np.load(self.root / "submaps" / f"{info.prefix}.order.npy", mmap_mode="r")
            self.schemes[info.prefix] = SchemeTable(
                scheme=scheme,
                submaps={s["label"]: Submap.model_validate(s["submap"]) for s in meta["submaps"]},
                spans={s["label"]: tuple(s["span"]) for s in meta["submaps"]},
                order=order,
            )

    def __len__(self) -> int:
        return self.manifest.n_references

    # ---- descriptors -------------------------------------------------------------------------
    def descriptor(self) -> Descriptor:
        """The descriptor exactly as the references were described (config + learned state);
        built once per opened index and shared by every query."""
        with self._descriptor_lock:  # ToolNode runs a turn's searches on threads: load the model once
            if self._descriptor is None:
                self._descriptor = self._load_descriptor()
        return self._descriptor

    def _load_descriptor(self) -> Descriptor:
        info = self.manifest.descriptor
        desc = get_descriptor(info.name, info.conf)
        state_path = self.root / "descriptor_state.npz"
        if state_path.exists():
            with np.load(state_path) as z:
                desc.load_state({k: z[k] for k in z.files})
        if desc.fingerprint() != info.fingerprint:
            raise IndexFormatError(
                f"{self.root}: descriptor {info.name} no longer matches the one that built the index "
                "(code or weights changed); rebuild the index"
            )
        return desc

    # ---- reference table ---------------------------------------------------------------------
    def row(self, i: int) -> dict[str, Any]:
        r = self.refs
        return {
            "row": int(i),
            "ref_id": _decode(r["id"][i]),
            "author": _decode(r["author"][i]),
            "country": _decode(r["country"][i]),
            "path": _decode(r["path"][i]),
            "lat": float(r["lat"][i]),
            "lon": float(r["lon"][i]),
        }

    @cached_property
    def _row_of_id(self) -> dict[str, int]:
        return {_decode(b): i for i, b in enumerate(self.refs["id"])}

    def row_of(self, ref_id: str) -> int | None:
        return self._row_of_id.get(ref_id)

    @cached_property
    def _coord_index(self) -> faiss.IndexFlatL2:
        index = faiss.IndexFlatL2(3)
        index.add(latlon_to_unit(self.refs["lat"], self.refs["lon"]).astype(np.float32))
        return index

    # ---- submaps -----------------------------------------------------------------------------
    def list_submaps(self, prefix: str) -> list[Submap]:
        if prefix not in self.schemes:
            raise SubmapError(f"no submap scheme {prefix!r} in this index; it has: {', '.join(self.schemes)}")
        return sorted(self.schemes[prefix].submaps.values(), key=lambda s: -s.size)

    def scheme_of(self, kind: str) -> SchemeTable | None:
        return next((t for t in self.schemes.values() if t.scheme.kind == kind), None)

    def describe_submap(self, submap_id: str, sel: Selection | None = None) -> Submap:
        """Metadata of any id, including unions and radius ids (computed from their rows);
        pass ``sel`` when the id is already resolved, so its rows are not looked up twice."""
        prefix, _, label = submap_id.partition(":")
        table = self.schemes.get(prefix)
        if table is not None and label in table.submaps:
            return table.submaps[label]
        sel = sel if sel is not None else self.resolve(submap_id)
        rows = self.selection_rows(sel)
        lat, lon = spherical_centroid(self.refs["lat"][rows], self.refs["lon"][rows]) if len(rows) else (0.0, 0.0)
        return Submap(id=submap_id, scheme=prefix, name=self._union_name(submap_id), lat=lat, lon=lon, size=len(rows))

    def _union_name(self, submap_id: str) -> str:
        if submap_id == "global":
            return "global — the whole reference map"
        prefix, _, label = submap_id.partition(":")
        if prefix == "radius":
            return parse_scheme("radius").label_name(label, 0, 0)
        if prefix == "continent":
            return f"{label} (continent)"
        parts = label.split(",")
        return f"{prefix}: {', '.join(parts[:8])}{' …' if len(parts) > 8 else ''} ({len(parts)} submaps)"

    def resolve(self, submap_id: str) -> Selection:
        """Submap id -> the rows it covers. Raises ``SubmapError`` with the valid forms."""
        submap_id = submap_id.strip()
        if submap_id == "global":
            return Selection(ranges=((0, len(self)),))
        prefix, sep, label = submap_id.partition(":")
        if not sep or not label:
            raise SubmapError(self._unknown(submap_id))
        if prefix == "radius":
            try:
                lat, lon, km = parse_radius_label(label)
            except ValueError as e:
                raise SubmapError(str(e)) from None
            _, _, ids = self._coord_index.range_search(
                latlon_to_unit([lat], [lon]).astype(np.float32), km_to_chord(km) ** 2
            )
            return Selection(rows=np.sort(ids.astype(np.int64)))
        if prefix == "continent":
            return self._continent(label)
        table = self.schemes.get(prefix)
        if table is None:
            raise SubmapError(self._unknown(submap_id))
        labels = [s.strip() for s in label.split(",") if s.strip()]
        missing = [lab for lab in labels if lab not in table.spans]
        if missing:
            examples = ", ".join(table.scheme.submap_id(lab) for lab in list(table.spans)[:5])
            raise SubmapError(
                f"submap(s) {', '.join(table.scheme.submap_id(m) for m in missing)} do not exist in this index "
                f"(no references there); e.g. {examples}; use list_submaps to see them"
            )
        return table.selection(labels)

    def _continent(self, name: str) -> Selection:
        from indices.geography import continent_of, continents

        table = self.scheme_of("country")
        if table is None:
            raise SubmapError("continent submaps need an index built with the 'country' scheme")
        known = {c.lower(): c for c in continents()}
        if name.lower() not in known:
            raise SubmapError(f"unknown continent {name!r}; valid: {', '.join(sorted(known.values()))}")
        labels = [lab for lab in table.spans if continent_of(lab) == known[name.lower()]]
        if not labels:
            raise SubmapError(f"no references in continent {known[name.lower()]}")
        return table.selection(labels)

    def _unknown(self, submap_id: str) -> str:
        forms = ["global", "radius:LAT,LON,KM", "continent:NAME"] + [f"{p}:LABEL[,LABEL...]" for p in self.schemes]
        return f"unknown submap id {submap_id!r}; valid forms: {', '.join(forms)}"

    def selection_rows(self, sel: Selection) -> np.ndarray:
        parts = [np.arange(a, b) for a, b in sel.ranges]
        if sel.rows is not None:
            parts.append(np.asarray(sel.rows))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # ---- search ------------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        sel: Selection,
        k: int,
        exclude_authors: frozenset[str] = frozenset(),
        exclude_ids: frozenset[str] = frozenset(),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of ``sel`` by inner product with ``query`` (D,), excluded ones dropped.

        Returns (rows, scores), best first. Exclusion is exact: candidates are over-fetched and
        the fetch doubles until ``k`` admissible rows are found or the selection is exhausted.
        """
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        bad_authors = {a.encode("utf-8") for a in exclude_authors}
        bad_ids = {i.encode("utf-8") for i in exclude_ids}
        results: list[tuple[np.ndarray, np.ndarray]] = []
        for a, b in sel.ranges:
            results.append(self._search_range(q, a, b, k, bad_authors, bad_ids))
        if sel.rows is not None and len(sel.rows):
            results.append(self._search_rows(q, np.asarray(sel.rows), k, bad_authors, bad_ids))
        if not results:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        rows = np.concatenate([r for r, _ in results])
        scores = np.concatenate([s for _, s in results])
        top = np.argsort(-scores, kind="stable")[:k]
        return rows[top], scores[top]

    def _admissible(self, rows: np.ndarray, bad_authors: set[bytes], bad_ids: set[bytes]) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        if bad_authors:
            keep &= ~np.isin(self.refs["author"][rows], list(bad_authors))
        if bad_ids:
            keep &= ~np.isin(self.refs["id"][rows], list(bad_ids))
        return keep

    def _search_range(self, q, a: int, b: int, k: int, bad_authors, bad_ids) -> tuple[np.ndarray, np.ndarray]:
        n = b - a
        if n <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        params = None if (a, b) == (0, len(self)) else faiss.SearchParameters(sel=faiss.IDSelectorRange(a, b))
        fetch = min(n, k if not (bad_authors or bad_ids) else 4 * k + 16)
        while True:
            scores, rows = self.faiss_index.search(q, fetch, params=params)
            rows, scores = rows[0], scores[0]
            valid = rows >= 0
            rows, scores = rows[valid], scores[valid]
            keep = self._admissible(rows, bad_authors, bad_ids)
            if keep.sum() >= k or fetch >= n:
                return rows[keep][:k], scores[keep][:k]
            fetch = min(n, fetch * 4)

    def _search_rows(self, q, rows: np.ndarray, k: int, bad_authors, bad_ids) -> tuple[np.ndarray, np.ndarray]:
        rows = rows[self._admissible(rows, bad_authors, bad_ids)]
        best_rows, best_scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        chunk = 262_144  # bound the float32 copy of a huge gather
        for s in range(0, len(rows), chunk):
            part = rows[s : s + chunk]
            x = np.asarray(self.descriptors[part], dtype=np.float32)
            scores, idx = faiss.knn(q, x, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
            best_rows = np.concatenate([best_rows, part[idx[0]]])
            best_scores = np.concatenate([best_scores, scores[0]])
        top = np.argsort(-best_scores, kind="stable")[:k]
        return best_rows[top], best_scores[top]
