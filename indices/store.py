"""The on-disk reference index and submap-restricted search over it.

Layout of an index directory (every file written atomically, ``manifest.json`` last)::

    manifest.json            schema version, descriptor config, store, counts, schemes, file checksums
    descriptor_state.npz     what the descriptor learned (PCA, vocabulary); frozen after the build
    store.faiss              the store's trained quantizer (compressed stores only); frozen too
    [gen-NNNNNN/]            the data files below: at the top for a build, in a generation
                             folder after each ``index add`` / ``index remove`` (``manifest.data_dir``)
      refs/{id,author,country,path}.npy   fixed-width UTF-8 byte strings, memory-mapped
      refs/{lat,lon}.npy     float64 degrees
      descriptors.f16.npy    (N, D) float16, memory-mapped; the codes of the fp16 store
      codes.npy              (N, code_size) uint8 codes of a compressed store, storage order
      submaps/<prefix>.json  a scheme's submaps, label -> [start, end) in its order
      submaps/<prefix>.order.npy / .codes.npy   a non-primary scheme's row order and its own copy
                             of the codes in that order

References are stored sorted by the *primary* scheme (the first one built), so each of its
submaps is a contiguous slice of the codes; every other stored scheme keeps its own copy of the
codes in its own order, so its submaps are slices too. A submap search hands exactly that slice
to the store's scanner (``indices.stores``): it reads only the submap's own codes, in one
sequential pass. Radius submaps are rows found at query time, gathered chunk by chunk. A union
(what widening produces) is searched slice by slice and merged.

Measured with ``benchmarks/scale.py`` at 1M x 256-d fp16, one thread (see the README table):
before, a country went through FAISS ``IDSelectorRange`` over one flat index, which still visits
every one of the 1M ids (2.58 ms for BE's 7.6k refs, 9.6x faster than the whole map); a slice
scan takes 0.2-0.3 ms for the same rows.

Opening reads the manifest, checks file sizes (a stat each) and memory-maps the arrays: it is
well under a second at any size, and a query process's memory holds only what its searches
touch. Full checksums are ``geoguide index verify`` (``verify=True``). A reader keeps the files it
mapped even when an update replaces them, so an opened index never sees half an update.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
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
from indices.stores import Store, StoreSpecError, parse_store
from indices.stores.base import STORE_FILE, RowReader
from indices.submaps import Submap, SubmapScheme, parse_scheme
from indices.submaps.radius import parse_radius_label

REF_COLUMNS = ("id", "author", "country", "path", "lat", "lon")
GATHER_CHUNK = 262_144  # rows of a radius submap gathered at a time (bounds the copy)


class SubmapError(GeoguideError, ValueError):
    """An unknown or malformed submap id; the message lists what is valid."""


@dataclass(frozen=True)
class Selection:
    """A set of reference rows: slices of storage order, slices of another scheme's order, or rows."""

    ranges: tuple[tuple[int, int], ...] = ()
    rows: np.ndarray | None = None
    permuted: tuple[tuple[str, int, int], ...] = ()  # (scheme prefix, start, end) in that scheme's order

    @property
    def size(self) -> int:
        n = sum(b - a for a, b in self.ranges) + sum(b - a for _, a, b in self.permuted)
        return n + (0 if self.rows is None else len(self.rows))


@dataclass
class SchemeTable:
    """One scheme's submaps as stored: label -> [start, end) in ``order`` (None = storage order)."""

    scheme: SubmapScheme
    submaps: dict[str, Submap]  # by label
    spans: dict[str, tuple[int, int]]
    order: np.ndarray | None
    codes: np.ndarray | None = None  # the codes in ``order`` (None: gather rows, as version-1 indices do)

    def selection(self, labels: list[str]) -> Selection:
        spans = sorted(self.spans[lab] for lab in labels)
        if self.order is None:
            return Selection(ranges=tuple(spans))
        if self.codes is not None:
            return Selection(permuted=tuple((self.scheme.prefix, a, b) for a, b in spans))
        return Selection(rows=np.sort(np.concatenate([self.order[a:b] for a, b in spans])))


def _decode(b: bytes) -> str:
    return b.decode("utf-8")


def read_manifest(root: Path) -> Manifest:
    mpath = root / MANIFEST_NAME
    if not mpath.exists():
        hint = " (an interrupted build? run the same build command again to resume)" if (root / "work").exists() else ""
        raise IndexFormatError(f"{root}: not a geoguide index (no {MANIFEST_NAME}){hint}")
    try:
        return Manifest.model_validate_json(mpath.read_text())
    except ValueError as e:
        raise IndexFormatError(f"{mpath}: unreadable or unsupported manifest ({str(e).splitlines()[0]})") from None


class ReferenceIndex:
    """An opened index directory: reference table, descriptors, store codes and submaps."""

    def __init__(self, root: str | Path, verify: bool = False):
        self.root = Path(root)
        self._descriptor_lock = threading.Lock()
        self._descriptor: Descriptor | None = None
        manifest = read_manifest(self.root)
        try:
            self._open(manifest, verify)
        except IndexFormatError:
            # An update may have swapped generations between reading the manifest and opening
            # its files; the new manifest then names files that are all there.
            again = read_manifest(self.root)
            if again.generation == manifest.generation:
                raise
            self._open(again, verify)

    def _open(self, m: Manifest, verify: bool) -> None:
        self.manifest = m
        verify_files(self.root, m, full=verify)
        n, dim = m.n_references, m.descriptor.dim
        self.refs: dict[str, np.ndarray] = {
            c: np.load(self.root / m.data(f"refs/{c}.npy"), mmap_mode="r") for c in REF_COLUMNS
        }
        self.descriptors = np.load(self.root / m.data("descriptors.f16.npy"), mmap_mode="r")
        if self.descriptors.shape != (n, dim) or any(len(v) != n for v in self.refs.values()):
            raise IndexFormatError(f"{self.root}: array shapes disagree with the manifest ({n} references); rebuild it")
        self.store, self.codes = self._open_store(m)
        self._rows = RowReader(self.descriptors)
        # Mapped now, not on first use: after an update deletes this generation, it is too late.
        order_rel = m.data("refs/id_order.npy")
        self._id_order = np.load(self.root / order_rel, mmap_mode="r") if order_rel in m.files else None
        self.schemes: dict[str, SchemeTable] = {}
        for info in m.schemes:
            meta = json.loads((self.root / m.data(f"submaps/{info.prefix}.json")).read_text())
            scheme = parse_scheme(info.spec)
            scheme.load_state(meta.get("state", {}))
            order = None if info.contiguous else np.load(self.root / m.data(f"submaps/{info.prefix}.order.npy"), mmap_mode="r")
            codes = np.load(self.root / info.codes, mmap_mode="r") if info.codes else None
            if codes is not None and codes.shape != self.codes.shape:
                raise IndexFormatError(f"{self.root}: {info.codes} does not match the store's codes; rebuild it")
            self.schemes[info.prefix] = SchemeTable(
                scheme=scheme,
                submaps={s["label"]: Submap.model_validate(s["submap"]) for s in meta["submaps"]},
                spans={s["label"]: tuple(s["span"]) for s in meta["submaps"]},
                order=order,
                codes=codes,
            )

    def _open_store(self, m: Manifest) -> tuple[Store, np.ndarray]:
        """The store (version-1 indices: fp16, whatever their old faiss.index) and its codes, mapped."""
        try:
            store = parse_store(m.store.spec if m.store else "fp16")
        except StoreSpecError as e:
            raise IndexFormatError(f"{self.root}: {e} (made by a newer geoguide?)") from None
        path = self.root / STORE_FILE if store.trainable else None
        if path is not None and not path.exists():
            raise IndexFormatError(f"{self.root}: missing {STORE_FILE}; the index is incomplete — rebuild it")
        store.load(path, m.descriptor.dim)
        if m.store is not None:
            # The shortlist as built, whatever the defaults are now.
            store.rerank = int(m.store.params.get("rerank", store.rerank))
            store.shortlist_fraction = float(m.store.params.get("shortlist_fraction", store.shortlist_fraction))
        if store.codes_are_descriptors:
            codes = self.descriptors.view(np.uint8)
        else:
            codes = np.load(self.root / m.store.codes, mmap_mode="r")
        if codes.shape != (m.n_references, store.code_size):
            raise IndexFormatError(f"{self.root}: the store's codes do not match the manifest; rebuild it")
        return store, codes

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
        """The row of a reference id: a binary search through ``refs/id_order.npy`` (memory-mapped,
        ~25 reads at 20M rows); indices written before it build an id -> row dict once."""
        if self._id_order is None:
            return self._row_of_id.get(ref_id)
        ids, order, key = self.refs["id"], self._id_order, ref_id.encode("utf-8")
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[order[mid]] < key:
                lo = mid + 1
            else:
                hi = mid
        return int(order[lo]) if lo < len(order) and ids[order[lo]] == key else None

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
        parts += [np.asarray(self.schemes[p].order[a:b]) for p, a, b in sel.permuted]
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

        Returns (rows, scores), best first; scores are exact inner products for every store.
        Exclusion is exact: candidates are over-fetched and the fetch grows until ``k``
        admissible rows are found or the selection is exhausted.
        """
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(-1))
        bad_authors = {a.encode("utf-8") for a in exclude_authors}
        bad_ids = {i.encode("utf-8") for i in exclude_ids}
        results = [self._search_block(q, codes, rows_of, k, bad_authors, bad_ids)
                   for codes, rows_of in self._blocks(sel, bad_authors, bad_ids)]
        if not results:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        rows = np.concatenate([r for r, _ in results])
        scores = np.concatenate([s for _, s in results])
        top = np.argsort(-scores, kind="stable")[:k]
        return rows[top], scores[top]

    def _blocks(self, sel: Selection, bad_authors, bad_ids) -> Iterator[tuple[np.ndarray, int | np.ndarray]]:
        """(codes, rows) pieces of a selection: slices of mapped codes, or gathered ones for rows.

        ``rows`` is the first row of a storage-order slice, or an array mapping positions to rows.
        """
        for a, b in sel.ranges:
            if b > a:
                yield self.codes[a:b], a
        for prefix, a, b in sel.permuted:
            table = self.schemes[prefix]
            if b > a:
                yield table.codes[a:b], np.asarray(table.order[a:b])
        if sel.rows is not None and len(sel.rows):
            rows = np.asarray(sel.rows)
            rows = rows[self._admissible(rows, bad_authors, bad_ids)]
            for s in range(0, len(rows), GATHER_CHUNK):
                part = rows[s : s + GATHER_CHUNK]
                yield self.codes[part], part

    def _admissible(self, rows: np.ndarray, bad_authors: set[bytes], bad_ids: set[bytes]) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        if bad_authors:
            keep &= ~np.isin(self.refs["author"][rows], list(bad_authors))
        if bad_ids:
            keep &= ~np.isin(self.refs["id"][rows], list(bad_ids))
        return keep

    def _search_block(self, q, codes: np.ndarray, rows_of, k: int, bad_authors, bad_ids) -> tuple[np.ndarray, np.ndarray]:
        n = len(codes)
        fetch = min(n, k if not (bad_authors or bad_ids) else 4 * k + 16)
        exact = self.store.exact
        while True:
            shortlist = self.store.shortlist(fetch, n)
            scores, pos = self.store.scan(q, codes, shortlist)
            rows = rows_of + pos if isinstance(rows_of, int) else rows_of[pos]
            if not exact:  # re-score the shortlist from the fp16 descriptors: exact scores, true order
                scores = self._rows.read(rows) @ q
                order = np.argsort(-scores, kind="stable")
                rows, scores = rows[order], scores[order]
            keep = self._admissible(rows, bad_authors, bad_ids)
            if keep.sum() >= k or shortlist >= n:
                return rows[keep][:k], scores[keep][:k]
            fetch = min(n, fetch * 4)
