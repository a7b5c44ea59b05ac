"""Write an index directory from described references: a build's last step, or an update's.

A *generation* is one complete set of data files (reference table, fp16 descriptors, store
codes, submap tables) under ``manifest.data_dir`` ('' for the build, ``gen-NNNNNN`` for each
``index compact``); an ``index add`` writes the same layout for its new rows only into a segment
folder (``seg-NNNNNN``, ``indices.update``). The manifest is written last and names every file,
so a reader sees the old index or the new one, never a mix. What is learned once (the
descriptor's state, the store's quantizer) lives in the index folder itself and is shared by
every generation and segment.

Files a previous index in the same folder listed but this one does not write (another scheme's
submaps, say) are removed before the new manifest appears: an index folder holds one index.
Large arrays are written in chunks through a memory map, so a build of N references holds one
chunk of them twice at most, not all of them. The descriptors themselves may come as *parts*
(arrays, memory maps, or any object with ``shape``, ``dtype`` and row indexing by an integer
array): they are read a chunk at a time in storage order and never joined into one array here
(``benchmarks/scale.py`` writes 20M x 768-d, 30.7 GB of fp16, from generated parts on a 24 GB
machine; ``index build`` hands over its chunks as it loaded them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from geoguide.core import atomic
from geoguide.geo.geometry import haversine_km, latlon_to_unit, unit_to_latlon
from geoguide.indices.crashpoints import reached
from geoguide.indices.descriptors import Descriptor
from geoguide.indices.manifest import (
    MANIFEST_NAME,
    DescriptorInfo,
    Manifest,
    SchemeInfo,
    SourceInfo,
    StoreInfo,
    file_entry,
)
from geoguide.indices.stores import DEPRECATED_FAISS_INDEX, Store, StoreSpecError, parse_store
from geoguide.indices.stores.base import STORE_FILE
from geoguide.indices.submaps import Submap, SubmapScheme

COPY_CHUNK = 65_536
NO_COUNTRY = "XX"
DESCRIPTORS_FILE = "descriptors.f16.npy"
CODES_FILE = "codes.npy"
STATE_FILE = "descriptor_state.npz"
# Files only a geoguide index has: one of them in a folder makes it (part of) an index.
INDEX_MARKERS = (MANIFEST_NAME, "faiss.index", DESCRIPTORS_FILE, STATE_FILE, STORE_FILE, CODES_FILE)
TEXT_COLUMNS = ("id", "author", "path", "country")


def index_files(out: Path) -> list[Path]:
    """Every file an index (whole or half-written) may have in ``out``, found by name, not by manifest.

    What ``overwrite`` deletes: the markers, ``refs/*.npy``, ``submaps/*.json`` and ``*.npy``, every
    file of an update's generation and segment folders (``gen-*/``, ``seg-*/``), tombstones and
    removal records, lock and scratch space, and the temporary files of interrupted
    atomic writes (``.<name>.*.tmp``) beside them. The build's ``work/`` folder is handled by the
    builder (it is only removed when its key file proves it ours).
    """
    found = [out / name for name in INDEX_MARKERS]
    found += [*out.glob("refs/*.npy"), *out.glob("submaps/*.json"), *out.glob("submaps/*.npy")]
    found += [*out.glob("gen-*/**/*"), *out.glob("seg-*/**/*"), *out.glob("tombstones-*.npy"),
              *out.glob("removals-*.csv"), *out.glob("update-work/**/*"), out / ".update.lock"]  # indices.update's
    for folder in (out, out / "refs", out / "submaps"):
        found += folder.glob(".*.tmp")
    return [p for p in found if p.is_file() or p.is_symlink()]


def previous_files(out: Path) -> set[str]:
    """The files the manifest in ``out`` lists (empty when there is none or it is unreadable)."""
    try:
        return set(Manifest.model_validate_json((out / MANIFEST_NAME).read_text()).files)
    except (OSError, ValueError):
        return set()


def geoguide_version() -> str:
    try:
        return version("geoguide")
    except PackageNotFoundError:
        return "0+unknown"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _bytes_column(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """Fixed-width UTF-8 bytes, as wide as the longest value (byte strings are taken as they are)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        return values.astype(f"S{max(int(np.char.str_len(values).max()), 1) if len(values) else 1}")
    encoded = [v.encode("utf-8") for v in values]
    width = max([len(e) for e in encoded] + [1])
    return np.array(encoded, dtype=f"S{width}")


def take(parts: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of the row-wise concatenation of ``parts`` (memory-mapped ones read in place)."""
    offsets = np.cumsum([0] + [len(p) for p in parts])
    which = np.searchsorted(offsets, idx, side="right") - 1
    out = np.empty((len(idx), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for j, part in enumerate(parts):
        mask = which == j
        if mask.any():
            out[mask] = part[idx[mask] - offsets[j]]
    return out


def save_rows(target: Path, n_rows: int, row_shape: tuple[int, ...], dtype, fill) -> None:
    """Write an ``(n_rows, *row_shape)`` .npy atomically, chunk by chunk: ``fill(start, end)`` gives rows."""
    with atomic.atomic_path(target) as tmp:
        header = 128  # .npy header (the format pads it to a multiple of 64; 128 covers every shape here)
        atomic.reserve(tmp, header + n_rows * int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize, target)
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_rows, *row_shape))
        for s in range(0, n_rows, COPY_CHUNK):
            e = min(s + COPY_CHUNK, n_rows)
            arr[s:e] = fill(s, e)
        arr.flush()
        del arr


def _submaps_of(scheme: SubmapScheme, labels: np.ndarray, lat: np.ndarray, lon: np.ndarray, order: np.ndarray):
    """Per-label span in ``order`` plus centroid, size and 90%-radius, all vectorised."""
    sorted_labels = labels[order]
    uniq, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    xyz = latlon_to_unit(lat[order], lon[order])
    sums = np.add.reduceat(xyz, starts, axis=0)
    clat, clon = unit_to_latlon(sums)
    entries = []
    for i, label in enumerate(uniq):
        a, n = int(starts[i]), int(counts[i])
        d = haversine_km(clat[i], clon[i], lat[order[a : a + n]], lon[order[a : a + n]])
        lab = str(label)
        sub = Submap(
            id=scheme.submap_id(lab),
            scheme=scheme.prefix,
            name=scheme.label_name(lab, float(clat[i]), float(clon[i])),
            lat=round(float(clat[i]), 6),
            lon=round(float(clon[i]), 6),
            size=n,
            radius_km=round(float(np.percentile(d, 90)), 1),
        )
        entries.append({"label": lab, "span": [a, a + n], "submap": sub.model_dump()})
    return entries


def write_generation(
    out: Path,
    data_dir: str,
    *,
    refs: dict[str, np.ndarray],
    vectors: Sequence[np.ndarray],
    perm: np.ndarray,
    labels: dict[str, np.ndarray],
    schemes: list[SubmapScheme],
    store: Store,
    codes: Sequence[np.ndarray] | None = None,
) -> tuple[list[str], list[SchemeInfo], str]:
    """Write one generation's data files; rows come from ``refs`` / ``vectors`` in the order ``perm``.

    ``vectors`` (fp16) and ``codes`` are lists of parts whose row-wise concatenation is the source
    (an update passes the old generation's memory maps plus the new rows; nothing is concatenated
    in memory). Without ``codes`` the store encodes the vectors. Returns (files written, scheme
    infos, the codes file), paths relative to ``out``.
    """
    prefix = f"{data_dir}/" if data_dir else ""
    files: list[str] = []
    n, dim = len(perm), vectors[0].shape[1]

    def save(rel: str, arr: np.ndarray) -> None:
        atomic.save_npy(out / prefix / rel, arr)
        files.append(prefix + rel)

    for col in TEXT_COLUMNS:
        column = np.asarray(refs[col])[perm]
        save(f"refs/{col}.npy", _bytes_column(column if column.dtype.kind == "S" else column.tolist()))
    lat, lon = np.asarray(refs["lat"], dtype=np.float64)[perm], np.asarray(refs["lon"], dtype=np.float64)[perm]
    save("refs/lat.npy", lat)
    ids = np.load(out / prefix / "refs/id.npy", mmap_mode="r")
    save("refs/id_order.npy", np.argsort(ids, kind="stable").astype(np.int64))  # row_of by binary search
    save("refs/lon.npy", lon)
    reached("write:refs")

    desc_path = out / prefix / DESCRIPTORS_FILE
    save_rows(desc_path, n, (dim,), np.float16, lambda s, e: take(vectors, perm[s:e]))
    files.append(prefix + DESCRIPTORS_FILE)
    desc = np.load(desc_path, mmap_mode="r")
    if store.codes_are_descriptors:
        codes_rel, primary_codes = prefix + DESCRIPTORS_FILE, desc.view(np.uint8)
    else:
        codes_rel = prefix + CODES_FILE
        if codes is not None:
            fill = lambda s, e: take(codes, perm[s:e])  # noqa: E731
        else:
            fill = lambda s, e: store.encode(np.asarray(desc[s:e], dtype=np.float32))  # noqa: E731
        save_rows(out / codes_rel, n, (store.code_size,), np.uint8, fill)
        files.append(codes_rel)
        primary_codes = np.load(out / codes_rel, mmap_mode="r")
    reached("write:vectors")

    infos = []
    for i, s in enumerate(schemes):
        contiguous = i == 0
        lab = np.asarray(labels[s.prefix])[perm]
        order = np.arange(n) if contiguous else np.argsort(lab, kind="stable")
        entries = _submaps_of(s, lab, lat, lon, order)
        copy_rel = None
        if not contiguous:
            save(f"submaps/{s.prefix}.order.npy", order.astype(np.int64))
            # Its own contiguous copy of the codes: a cluster is a slice, not a gather of rows.
            copy_rel = f"submaps/{s.prefix}.codes.npy"
            save_rows(out / prefix / copy_rel, n, (primary_codes.shape[1],), np.uint8,
                      lambda a, b, order=order: primary_codes[order[a:b]])
            files.append(prefix + copy_rel)
        atomic.write_json(out / prefix / "submaps" / f"{s.prefix}.json", {"scheme": s.spec, "state": s.state(), "submaps": entries})
        files.append(f"{prefix}submaps/{s.prefix}.json")
        infos.append(SchemeInfo(spec=s.spec, prefix=s.prefix, n_submaps=len(entries), contiguous=contiguous,
                                codes=prefix + copy_rel if copy_rel else None))
    return files, infos, codes_rel


def write_manifest(out: Path, manifest: Manifest, files: Sequence[str], reuse: dict | None = None) -> Manifest:
    """Checksum ``files`` (entries in ``reuse`` are kept for files not rewritten) and write the manifest last."""
    reuse = reuse or {}
    entries = {rel: reuse[rel] if rel in reuse else file_entry(out / rel) for rel in files}
    manifest = manifest.model_copy(update={"files": entries})
    reached("manifest:before")
    atomic.write_text(out / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")
    reached("manifest:after")
    return manifest


def remove_stale(out: Path, old_files: set[str], keep: set[str]) -> None:
    """Delete files an earlier index listed that the current one does not, and empty generation
    and segment folders."""
    for i, rel in enumerate(sorted(old_files - keep)):
        stale = out / rel
        if stale.resolve().is_relative_to(out.resolve()):  # a tampered manifest must not reach outside
            stale.unlink(missing_ok=True)
        if i == 0:
            reached("stale:partial")
    for folder in (out / "refs", out / "submaps"):  # the build's, once a generation replaced it
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    for folder in sorted([*out.glob("gen-*"), *out.glob("seg-*")], reverse=True):
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


SHARED_FILES = {MANIFEST_NAME, STATE_FILE, STORE_FILE, "faiss.index", ".update.lock"}  # never an update's to delete


def remove_unlisted(out: Path, manifest: Manifest) -> list[str]:
    """Delete what an interrupted update or compaction left behind: data files, segment and
    generation folders and temporary files the current manifest does not list (never the learned
    files, the lock or ``update-work/``, an add's resumable chunks). Returns what was deleted."""
    listed = set(manifest.files) | SHARED_FILES
    stale = []
    for p in index_files(out):
        rel = p.relative_to(out).as_posix()
        if rel not in listed and not rel.startswith("update-work/"):
            stale.append(rel)
    remove_stale(out, set(stale), set())
    return stale


def as_parts(descriptors: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One (N, D) array, or a sequence of (n_i, D) row parts, as a list of parts (nothing copied)."""
    parts = [descriptors] if hasattr(descriptors, "shape") else list(descriptors)
    if not parts or any(len(p.shape) != 2 or p.shape[1] != parts[0].shape[1] for p in parts):
        raise ValueError("descriptors must be an (N, D) array or a non-empty sequence of (n, D) parts")
    return parts


def check_trainable(store: Store, n: int) -> None:
    """A clear error (exit 2) for a map too small for its store, instead of FAISS's assertion."""
    if store.trainable and n < store.min_train_points:
        raise StoreSpecError(
            f"--store {store.spec} learns {store.min_train_points} centroids per sub-space and needs at least "
            f"that many references to train; this map has {n}: use --store fp16 or sq8, or fewer bits (pq:MxBITS)"
        )


def train_store(store: Store, parts: Sequence[np.ndarray], seed: int = 0) -> int:
    """Fit the store's quantizer on a fixed random sample of the vectors; returns the sample size."""
    n, dim = sum(len(p) for p in parts), parts[0].shape[1]
    check_trainable(store, n)
    if not store.trainable:
        store.train(np.zeros((0, dim), dtype=np.float32))
        return 0
    pick = np.sort(np.random.default_rng(seed).choice(n, size=min(store.train_sample, n), replace=False))
    store.train(take(parts, pick).astype(np.float16).astype(np.float32))  # the vectors as stored
    return len(pick)


def write_index(
    out_dir: str | Path,
    *,
    ids: list[str],
    authors: list[str],
    paths: list[str],
    lat: np.ndarray,
    lon: np.ndarray,
    country: np.ndarray,
    descriptors: np.ndarray | Sequence[np.ndarray],
    descriptor: Descriptor,
    schemes: list[SubmapScheme],
    source: SourceInfo,
    store: str | None = None,
    faiss_index: str | None = None,
    build_key: str | None = None,
) -> Manifest:
    """Sort references by the primary scheme, train the store, write every file and the manifest last.

    ``descriptors`` is one array or a sequence of row parts (see the module docstring); rows are
    converted to fp16 a chunk at a time. ``faiss_index`` is the old name of ``store`` (``fp16`` and
    ``flat`` both mean ``--store fp16``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = parse_store(store or DEPRECATED_FAISS_INDEX.get(faiss_index or "fp16", faiss_index or "fp16"))
    old_files = previous_files(out)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # a half-replaced index must not look whole
    stored = [s for s in schemes if s.stored]
    if not stored:
        raise ValueError("at least one stored submap scheme is needed (country, kmeans:K or global)")
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    # References farther offshore than any country's reach get "XX" (international waters).
    country = np.array([c if c else NO_COUNTRY for c in np.asarray(country, dtype=object)], dtype=str)
    labels = {}
    for s in stored:
        s.fit(lat, lon)
        labels[s.prefix] = s.assign(lat, lon, country)
    # Storage order: grouped by the primary scheme's label, stable within a group.
    perm = np.argsort(labels[stored[0].prefix], kind="stable")
    parts = as_parts(descriptors)
    dim, n_rows = parts[0].shape[1], sum(len(p) for p in parts)
    if n_rows != len(perm):
        raise ValueError(f"{n_rows} descriptor rows for {len(perm)} references")
    trained_on = train_store(st, parts)
    files = [STATE_FILE]
    atomic.save_npz(out / STATE_FILE, descriptor.state())
    if st.trainable:
        with atomic.atomic_path(out / STORE_FILE) as tmp:
            st.save(tmp)
        files.append(STORE_FILE)
    refs = {"id": np.asarray(ids, dtype=object), "author": np.asarray(authors, dtype=object),
            "path": np.asarray(paths, dtype=object), "country": country, "lat": lat, "lon": lon}
    written, infos, codes_rel = write_generation(out, "", refs=refs, vectors=parts, perm=perm, labels=labels,
                                                 schemes=stored, store=st)
    files += written
    remove_stale(out, old_files, set(files))
    manifest = Manifest(
        build_key=build_key,
        geoguide_version=geoguide_version(),
        created_utc=utc_now(),
        descriptor=DescriptorInfo(name=descriptor.name, conf=descriptor.conf, dim=dim, fingerprint=descriptor.fingerprint()),
        n_references=len(perm),
        faiss_index=st.spec,
        store=StoreInfo(spec=st.spec, params=st.params(dim), codes=codes_rel, trained_on=trained_on),
        schemes=infos,
        source=source,
        image_roots=[source.images] if source.images else [],
    )
    return write_manifest(out, manifest, files)
