"""The on-disk reference index and submap-restricted search over it.

Layout of an index directory (every file written atomically, ``manifest.json`` last)::

    manifest.json            schema version, descriptor config, store, counts, schemes, file checksums
    descriptor_state.npz     what the descriptor learned (PCA, vocabulary); frozen after the build
    store.faiss              the store's trained quantizer (compressed stores only); frozen too
    [gen-NNNNNN/]            the base's data files below: at the top for a build, in a generation
                             folder after an ``index compact`` (``manifest.data_dir``)
      refs/{id,author,country,path}.npy   fixed-width UTF-8 byte strings, memory-mapped
      refs/{lat,lon}.npy     float64 degrees
      descriptors.f16.npy    (N, D) float16, memory-mapped; the codes of the fp16 store
      codes.npy              (N, code_size) uint8 codes of a compressed store, storage order
      submaps/<prefix>.json  a scheme's submaps, label -> [start, end) in its order
      submaps/<prefix>.order.npy / .codes.npy   a non-primary scheme's row order and its own copy
                             of the codes in that order
    seg-NNNNNN/              rows one ``index add`` appended, the same layout for its rows only
    tombstones-NNNNNN.npy    sorted int64 global rows that ``index remove`` took out (not yet compacted)
    removals-NNNNNN.csv      every removal so far: id, author, place, reason, time, generation

An index is a *base* plus *segments* (schema 3; ``manifest.segments``): a row's global number is
its segment's offset plus its row there, and no row moves until ``index compact`` writes a new
base from the live rows. Each segment is sorted by the primary scheme too, so a submap is one
slice of the base and one of each segment; removed rows are dropped by the same admissibility
check as excluded ids, so exclusion stays exact. Without segments and tombstones every array is
the base's own memory map and search runs exactly as it always has.

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
touch. Full checksums are ``geoguide index verify`` (``verify=True``). A reader maps or opens every
file at open time and keeps them even when a compaction deletes them, so an opened index never
sees half an update (an add or remove deletes nothing a reader uses but the small tombstone and
removals files, which are read whole at open).
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from geoguide.core.errors import GeoguideError
from geoguide.geo.geometry import km_to_chord, latlon_to_unit, spherical_centroid
from geoguide.indices.descriptors import Descriptor, get_descriptor
from geoguide.indices.manifest import IndexFormatError, Manifest, SchemeInfo, verify_files
from geoguide.indices.parts import (
    ConcatRows,
    Part,
    SchemePart,
    SchemeTable,
    Selection,
    decode,
    merged_submaps,
    plain,
    read_manifest,
    search_sorted_ids,
)
from geoguide.indices.stores import Store, StoreSpecError, parse_store
from geoguide.indices.stores.base import STORE_FILE, RowReader
from geoguide.indices.submaps import Submap, parse_scheme
from geoguide.indices.submaps.radius import parse_radius_label

REF_COLUMNS = ("id", "author", "country", "path", "lat", "lon")
GATHER_CHUNK = 262_144  # rows of a radius submap gathered at a time (bounds the copy)
MERGE_ROWS = 2_048  # a submap's segment slices, up to this many rows in all, are gathered into one scan
GATHERED_KEPT = 1_024  # gathered segment pieces kept per opened index (at most MERGE_ROWS rows each)


class SubmapError(GeoguideError, ValueError):
    """An unknown or malformed submap id; the message lists what is valid."""


class ReferenceIndex:
    """An opened index directory: reference table, descriptors, store codes and submaps."""

    def __init__(self, root: str | Path, verify: bool = False):
        self.root = Path(root)
        self._descriptor_lock = threading.Lock()
        self._descriptor: Descriptor | None = None
        manifest = read_manifest(self.root)
        try:
            self._open(manifest, verify)
        except (IndexFormatError, OSError):
            # An update may have swapped generations between reading the manifest and opening
            # its files (and deleted the old tombstones); the new manifest names files that are there.
            again = read_manifest(self.root)
            if again.generation == manifest.generation:
                raise
            self._open(again, verify)

    def _open(self, m: Manifest, verify: bool) -> None:
        self.manifest = m
        verify_files(self.root, m, full=verify)
        self.store = self._open_store(m)
        base_codes = (m.store.codes if m.store else None) if not self.store.codes_are_descriptors else None
        parts = [self._open_part(m, 0, m.n_base_rows, m.data, base_codes, m.schemes)]
        for seg in m.segments:
            offset = parts[-1].offset + parts[-1].n
            parts.append(self._open_part(m, offset, seg.n_rows, lambda rel, d=seg.data_dir: f"{d}/{rel}",
                                         None if self.store.codes_are_descriptors else seg.codes, seg.schemes))
        self._parts = parts
        self._offsets = np.array([p.offset for p in parts] + [parts[-1].offset + parts[-1].n], dtype=np.int64)
        self._starts = [p.offset for p in parts]  # for bisect: per-query lookups stay off numpy's call overhead
        self._dead = self._open_tombstones(m)
        self._dead_list = self._dead.tolist()  # bisect per query piece: cheaper than a numpy call
        self._dead_set = frozenset(self._dead_list)
        self._gathered: dict[tuple, tuple] = {}
        if len(parts) == 1:  # the base's own maps, exactly as before segments existed
            base = parts[0]
            self.refs: dict[str, Any] = base.refs
            self.descriptors: Any = base.descriptors
            self.codes: Any = base.codes
        else:
            self.refs = {c: ConcatRows([p.refs[c] for p in parts]) for c in REF_COLUMNS}
            self.descriptors = ConcatRows([p.descriptors for p in parts])
            self.codes = ConcatRows([p.codes for p in parts])
        self._rows = parts[0].reader
        self.schemes: dict[str, SchemeTable] = {}
        merged = len(parts) > 1 or len(self._dead) > 0
        dead_per_label = m.tombstones.per_label if m.tombstones else {}
        for info in m.schemes:
            scheme = parse_scheme(info.spec)
            scheme.load_state(parts[0].states[info.prefix])  # frozen since the build: the base's
            base = parts[0].tables[info.prefix]
            order, codes = parts[0].mapped[info.prefix]
            if not merged:
                self.schemes[info.prefix] = SchemeTable(scheme=scheme, submaps=parts[0].metas[info.prefix],
                                                        spans=base.spans, order=order, codes=codes, parts=[base])
                continue
            submaps = merged_submaps([p.metas[info.prefix] for p in parts], dead_per_label.get(info.prefix, {}))
            self.schemes[info.prefix] = SchemeTable(
                scheme=scheme, submaps=submaps, spans={lab: base.spans.get(lab, (0, 0)) for lab in submaps},
                order=order, codes=codes, parts=[p.tables[info.prefix] for p in parts], dead=self._dead)

    def _open_part(self, m: Manifest, offset: int, n: int, data, codes_rel: str | None,
                   schemes: list[SchemeInfo]) -> Part:
        """Map one part's files (every one now, not on first use: a compaction may delete them later)."""
        dim = m.descriptor.dim
        refs = {c: np.load(self.root / data(f"refs/{c}.npy"), mmap_mode="r") for c in REF_COLUMNS}
        descriptors = np.load(self.root / data("descriptors.f16.npy"), mmap_mode="r")
        if descriptors.shape != (n, dim) or any(len(v) != n for v in refs.values()):
            raise IndexFormatError(f"{self.root}: array shapes disagree with the manifest ({n} references); rebuild it")
        codes = descriptors.view(np.uint8) if codes_rel is None else np.load(self.root / codes_rel, mmap_mode="r")
        if codes.shape != (n, self.store.code_size):
            raise IndexFormatError(f"{self.root}: the store's codes do not match the manifest; rebuild it")
        order_rel = data("refs/id_order.npy")
        id_order = np.load(self.root / order_rel, mmap_mode="r") if order_rel in m.files else None
        tables, mapped, metas, states = {}, {}, {}, {}
        for info in schemes:
            meta = json.loads((self.root / data(f"submaps/{info.prefix}.json")).read_text())
            order = None if info.contiguous else np.load(self.root / data(f"submaps/{info.prefix}.order.npy"),
                                                         mmap_mode="r")
            copy = np.load(self.root / info.codes, mmap_mode="r") if info.codes else None
            if copy is not None and copy.shape != codes.shape:
                raise IndexFormatError(f"{self.root}: {info.codes} does not match the store's codes; rebuild it")
            tables[info.prefix] = SchemePart(offset, {s["label"]: tuple(s["span"]) for s in meta["submaps"]},
                                             plain(order), plain(copy))
            mapped[info.prefix] = (order, copy)
            metas[info.prefix] = {s["label"]: Submap.model_validate(s["submap"]) for s in meta["submaps"]}
            states[info.prefix] = meta.get("state", {})
        return Part(offset=offset, n=n, refs=refs, descriptors=descriptors, codes=codes, scan=np.asarray(codes),
                     reader=RowReader(descriptors), id_order=id_order, tables=tables, mapped=mapped, metas=metas,
                     states=states)

    def _open_tombstones(self, m: Manifest) -> np.ndarray:
        if m.tombstones is None:
            return np.zeros(0, dtype=np.int64)
        dead = np.load(self.root / m.tombstones.file)
        n = int(self._offsets[-1])
        if (dead.ndim != 1 or len(dead) != m.tombstones.n or (len(dead) and (dead[0] < 0 or dead[-1] >= n))
                or np.any(np.diff(dead) <= 0)):
            raise IndexFormatError(f"{self.root}: {m.tombstones.file} does not match the manifest; run geoguide index verify")
        return dead.astype(np.int64, copy=False)

    def _open_store(self, m: Manifest) -> Store:
        """The store (version-1 indices: fp16, whatever their old faiss.index), its quantizer loaded."""
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
        return store

    @property
    def n_rows(self) -> int:
        """Physical rows, tombstoned ones included: global row numbers run from 0 to this."""
        return int(self._offsets[-1])

    @property
    def n_dead(self) -> int:
        return len(self._dead)

    @property
    def tombstones(self) -> np.ndarray:
        """The removed (tombstoned) global rows, sorted; empty after a compaction."""
        return self._dead

    def part_arrays(self, name: str) -> list[np.ndarray]:
        """The base's and each segment's ``descriptors`` or ``codes``, memory-mapped, in row order."""
        return [getattr(p, name) for p in self._parts]

    def live_rows(self) -> np.ndarray:
        """Every row not removed, in row order (``arange(len(index))`` for an index without tombstones)."""
        if not len(self._dead):
            return np.arange(self.n_rows)
        keep = np.ones(self.n_rows, dtype=bool)
        keep[self._dead] = False
        return np.flatnonzero(keep)

    def live_column(self, name: str) -> np.ndarray:
        """One reference column (``REF_COLUMNS``) for the live rows, in row order, as an array."""
        col = self.refs[name]
        return np.asarray(col) if not len(self._dead) else col[self.live_rows()]

    def is_dead(self, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` were removed (tombstoned) and not compacted away yet."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self._dead):
            return np.zeros(len(rows), dtype=bool)
        pos = np.minimum(np.searchsorted(self._dead, rows), len(self._dead) - 1)
        return self._dead[pos] == rows

    def _live(self, rows: np.ndarray) -> np.ndarray:
        return rows if not len(self._dead) else rows[~self.is_dead(rows)]

    def _dead_in(self, a: int, b: int) -> int:
        """How many tombstoned rows lie in the global rows [a, b)."""
        d = self._dead_list
        return bisect.bisect_left(d, b) - bisect.bisect_left(d, a) if d else 0

    def _part_of(self, row: int) -> int:
        return bisect.bisect_right(self._starts, row) - 1

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """fp16 descriptors of global rows, as float32, read with ``pread`` (see ``RowReader``)."""
        if len(self._parts) == 1:
            return self._rows.read(rows)
        which = np.searchsorted(self._offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.manifest.descriptor.dim), dtype=np.float32)
        for j in np.unique(which):
            mask = which == j
            out[mask] = self._parts[j].reader.read(rows[mask] - self._parts[j].offset)
        return out

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
            "ref_id": decode(r["id"][i]),
            "author": decode(r["author"][i]),
            "country": decode(r["country"][i]),
            "path": decode(r["path"][i]),
            "lat": float(r["lat"][i]),
            "lon": float(r["lon"][i]),
        }

    def _ids_of(self, part: int) -> dict[str, int]:
        cache = self.__dict__.setdefault("_id_dicts", {})
        if part not in cache:
            cache[part] = {decode(b): i for i, b in enumerate(self._parts[part].refs["id"])}
        return cache[part]

    def row_of(self, ref_id: str) -> int | None:
        """The row of a live reference id: a binary search through each part's ``refs/id_order.npy``
        (memory-mapped, ~25 reads at 20M rows); indices written before it build an id -> row dict
        once. A removed id is None, even while its row is still on disk."""
        row = int(self.rows_of([ref_id])[0])
        return None if row < 0 else row

    def rows_of(self, ref_ids: Sequence[str]) -> np.ndarray:
        """The rows of many ids at once (-1: not in the index, or removed): the binary searches run
        side by side, one numpy gather per step instead of a Python loop per id."""
        encoded = [i.encode("utf-8") for i in ref_ids]
        keys = np.array(encoded or [b""], dtype=bytes)[: len(ref_ids)]
        out = np.full(len(keys), -1, dtype=np.int64)
        # numpy's fixed-width bytes drop trailing NULs, so "a.jpg\0" would match "a.jpg"; no stored id
        # can end in one (the same arrays hold them), so such a key is simply not in the index
        searchable = np.array([not k.endswith(b"\0") for k in encoded], dtype=bool)
        for j, p in enumerate(self._parts):
            todo = np.flatnonzero((out < 0) & searchable)
            if not len(todo):
                break
            if p.id_order is None:
                found = self._ids_of(j)
                local = np.array([found.get(k.decode("utf-8"), -1) for k in keys[todo]], dtype=np.int64)
            else:
                local = search_sorted_ids(p.refs["id"], p.id_order, keys[todo])
            hit = local >= 0
            rows = p.offset + local[hit]
            live = ~self.is_dead(rows)
            out[todo[hit][live]] = rows[live]
        return out

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
            return Selection(ranges=tuple((p.offset, p.offset + p.n) for p in self._parts))
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
            return Selection(rows=self._live(np.sort(ids.astype(np.int64))))
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
        from geoguide.geo import continent_of, continents

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
        """The live global rows of a selection."""
        parts = [np.arange(a, b) for a, b in sel.ranges]
        for prefix, j, a, b in sel.permuted:
            t = self.schemes[prefix].parts[j]
            order = np.asarray(t.order[a:b])
            parts.append(order if t.offset == 0 else t.offset + order)
        if sel.rows is not None:
            parts.append(np.asarray(sel.rows))
        return self._live(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

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
        scanner = self.store.scanner(q)  # one per search, shared by its blocks (not by threads)
        results = [self._search_block(q, codes, rows_of, k, bad_authors, bad_ids, dead, scanner)
                   for codes, rows_of, dead in self._blocks(sel, bad_authors, bad_ids)]
        if not results:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        first_rows, first = results[0]
        if len(results) == 1 or (len(first) >= k and all(not len(x) or x[0] <= first[k - 1] for _, x in results[1:])):
            return first_rows[:k], first[:k]  # already best first, nothing else reaches its top k (ties: first wins)
        rows = np.concatenate([r for r, _ in results])
        scores = np.concatenate([s for _, s in results])
        top = np.argsort(-scores, kind="stable")[:k]
        return rows[top], scores[top]

    def _blocks(self, sel: Selection, bad_authors, bad_ids) -> Iterator[tuple[np.ndarray, int | np.ndarray, int]]:
        """(codes, rows, removed) pieces of a selection: slices of mapped codes, or gathered ones.

        ``rows`` is the first row of a storage-order slice, or an array mapping positions to rows;
        ``removed`` is how many tombstoned rows the piece holds (-1: some, how many not counted).
        The base's slices are scanned in place; the segments' small slices of a submap (what was
        added since the last compaction) are gathered into one piece, one scan for them all, and
        the gathered piece is kept for the next search of the same submap (segments never change).
        """
        added: list[tuple] = []  # ("r", global start, end) or (scheme prefix, part, start, end)
        for a, b in sel.ranges:
            if b > a:
                j = self._part_of(a)
                if j == 0:
                    yield self._parts[0].scan[a:b], a, self._dead_in(a, b)
                else:
                    added.append(("r", j, a, b))
        for prefix, j, a, b in sel.permuted:
            if b > a:
                t = self.schemes[prefix].parts[j]
                if j == 0:
                    yield t.codes[a:b], np.asarray(t.order[a:b]), -1 if self._dead_in(0, self._parts[0].n) else 0
                else:
                    added.append((prefix, j, a, b))
        if len(added) == 1 or sum(x[3] - x[2] for x in added) > MERGE_ROWS:
            yield from map(self._segment_piece, added)  # whole segments (global, say): each scanned in place
        elif added:
            key = tuple(added)
            piece = self._gathered.get(key)
            if piece is None:
                pieces = [self._segment_piece(x) for x in added]
                removed = -1 if any(d < 0 for _, _, d in pieces) else sum(d for _, _, d in pieces)
                rows = [np.arange(r, r + len(c)) if isinstance(r, int) else r for c, r, _ in pieces]
                piece = (np.concatenate([c for c, _, _ in pieces]), np.concatenate(rows), removed)
                if len(self._gathered) >= GATHERED_KEPT:
                    self._gathered.clear()
                self._gathered[key] = piece
            yield piece
        if sel.rows is not None and len(sel.rows):
            rows = np.asarray(sel.rows)
            rows = rows[self._admissible(rows, bad_authors, bad_ids)]  # removed rows too
            which = np.searchsorted(self._offsets, rows, side="right") - 1 if len(self._parts) > 1 else None
            for j, p in enumerate(self._parts):
                mine = rows if which is None else rows[which == j]
                for s in range(0, len(mine), GATHER_CHUNK):
                    part = mine[s : s + GATHER_CHUNK]
                    yield p.scan[part - p.offset if p.offset else part], part, 0

    def _segment_piece(self, item: tuple) -> tuple[np.ndarray, int | np.ndarray, int]:
        if item[0] == "r":
            _, j, a, b = item
            p = self._parts[j]
            return p.scan[a - p.offset : b - p.offset], a, self._dead_in(a, b)
        prefix, j, a, b = item
        t, n = self.schemes[prefix].parts[j], self._parts[j].n
        return t.codes[a:b], t.offset + np.asarray(t.order[a:b]), -1 if self._dead_in(t.offset, t.offset + n) else 0

    def _admissible(self, rows: np.ndarray, bad_authors: set[bytes], bad_ids: set[bytes]) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        if bad_authors:
            keep &= ~np.isin(self.refs["author"][rows], list(bad_authors))
        if bad_ids:
            keep &= ~np.isin(self.refs["id"][rows], list(bad_ids))
        if len(self._dead):
            keep &= ~self.is_dead(rows)
        return keep

    def _search_block(self, q, codes: np.ndarray, rows_of, k: int, bad_authors, bad_ids,
                      dead: int = 0, scanner=None) -> tuple[np.ndarray, np.ndarray]:
        n = len(codes)
        # Room for the removed rows the block holds, up to k/2 of them (a longer heap slows the scan:
        # +5% from 10 to 30; more removed rows than that among the best is rare, and then the
        # fetch grows below); with exclusions, room for those too.
        room = max(4, k // 2)
        extra = min(dead, room) if dead >= 0 else room
        fetch = min(n, k + extra + (3 * k + 16 if bad_authors or bad_ids else 0))
        exact = self.store.exact
        while True:
            shortlist = self.store.shortlist(fetch, n)
            scores, pos = self.store.scan(q, codes, shortlist, scanner)
            rows = rows_of + pos if isinstance(rows_of, int) else rows_of[pos]
            if not exact:  # re-score the shortlist from the fp16 descriptors: exact scores, true order
                scores = self._read_rows(rows) @ q
                order = np.argsort(-scores, kind="stable")
                rows, scores = rows[order], scores[order]
            bad = bool(bad_authors or bad_ids)
            if not bad and (not dead or self._dead_set.isdisjoint(rows.tolist())):  # every row admissible
                if len(rows) >= k or shortlist >= n:
                    return rows[:k], scores[:k]
                keep = np.ones(len(rows), dtype=bool)
            else:
                keep = self._admissible(rows, bad_authors, bad_ids)
            if keep.sum() >= k or shortlist >= n:
                return rows[keep][:k], scores[keep][:k]
            fetch = min(n, fetch * 4)
