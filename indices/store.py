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
codes in its own order, so its submaps are slices too, which ``indices.search`` scans in place.

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

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from geoguide.indices.descriptors import Descriptor, get_descriptor
from geoguide.indices.manifest import IndexFormatError, Manifest, SchemeInfo, verify_files
from geoguide.indices.parts import ConcatRows, Part, merged_submaps, read_manifest
from geoguide.indices.rows import IndexRows
from geoguide.indices.search import BlockedSearch
from geoguide.indices.selection import SubmapSelection
from geoguide.indices.stores import Store, StoreSpecError, parse_store
from geoguide.indices.stores.base import STORE_FILE, RowReader
from geoguide.indices.submaps import Submap, SubmapError, parse_scheme
from geoguide.indices.submaps.base import SchemePart, SchemeTable, plain

REF_COLUMNS = ("id", "author", "country", "path", "lat", "lon")
__all__ = ["REF_COLUMNS", "ReferenceIndex", "SubmapError"]


class ReferenceIndex(IndexRows, SubmapSelection, BlockedSearch):
    """An opened index directory: reference table, descriptors, store codes and submaps.

    A thin front: opening is here; rows and ids (``indices.rows``), submap ids -> rows
    (``indices.selection``) and the blocked search (``indices.search``) each have their module.
    """

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
