"""Add references to an index, remove them, and compact it, without rebuilding it.

An index is a *base* plus append-only *segments* and a *tombstone* set (``indices.store``):

* ``index add`` describes the new photos and writes them as one new segment ``seg-NNNNNN/``
  (reference table, fp16 descriptors, codes from the frozen quantizer, submap tables for its
  rows only, sorted by the primary scheme), then the manifest. That is O(new rows): no old file
  is read or rewritten, and the manifest carries the old files' checksums instead of recomputing them.
* ``index remove`` (and ``index filter``) writes the global numbers of every row removed since
  the last compaction into a new ``tombstones-NNNNNN.npy`` (sorted int64) and the removal
  history into a new ``removals-NNNNNN.csv``, then the manifest: O(rows removed so far), no
  reference data touched.
* ``index compact`` writes one new base generation ``gen-NNNNNN/`` from the live rows (the full
  rewrite, O(N); an explicit command, never implied), swaps the manifest, then deletes the old
  base, segments and tombstones.

Guarantees:

* atomic and durable — every file is written under a temporary name, fsynced and renamed
  (``core.atomic``), the manifest last: until it is replaced the index is the old one,
  whole; after, the new one. SIGKILL at any moment leaves at most files the manifest does not
  list (a half-written segment or generation, a tombstone file, temporaries); the next update
  deletes them first (``writer.remove_unlisted``), ``index verify`` checks only listed files, and
  re-running the killed command completes it (an add skips ids already in, and reuses its
  described chunks; a remove skips ids already gone; a compaction with nothing left to merge
  just finishes deleting);
* safe for readers — a process that opened the index keeps every file it mapped or opened (an
  add or remove deletes none of them; a compaction's deletions leave them alive while mapped),
  so it answers from one consistent index until it reopens; an opener that races a swap
  retries once on the new manifest;
* resumable — photos are described in fixed chunks saved under ``IDX/update-work/`` (keyed by
  the generation and the new records), so a killed ``index add`` re-run with the same
  arguments skips the finished chunks;
* exclusive — one update (add, remove, filter, compact) at a time per index: an advisory
  ``flock`` on ``IDX/.update.lock``; a second one fails at once with a one-line error (exit 2).

Nothing learned is refitted: the descriptor's state (PCA, vocabulary), the store's quantizer and
the K-means centroids stay as built, and the manifest's ``frozen`` field says so. New references
join their submaps (country by position, K-means cluster by nearest frozen centroid). Adding an
id that is already there skips it, so an add repeated after it finished changes nothing.

Measured with ``benchmarks/update.py`` (256-d fp16, one thread, the shared 2-core machine; the
vectors pre-described, so the CNN is not timed): adding 1,000 references takes 0.11 s at 1M
references and 0.09 s at 5M, removing 1,000 0.16 s and 0.08 s (flat in the map size; the spread
is the machine's); searching with 3 segments and 3,000 tombstones takes 1.13x the compacted
map's time for a typical country and 1.00x for the whole map at 1M, 1.15x and 1.04x at 5M;
``index compact`` takes 6.2 s at 1M and 41 s at 5M. Before segments every update rewrote the
whole generation: 16.5 s to remove 1,000 references at 1M and 10.9 s to add 1,000, growing
with the map (~31 GB rewritten per update at 20M).

Why one module of ~450 lines: a third of it is these guarantees, and the three commands share the
update lock, the report, the removal record and the frozen-parts check; apart, each would import
the other two's helpers back.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.core.progress import Progress
from geoguide.indices.crashpoints import reached
from geoguide.indices.describe import describe_chunk
from geoguide.indices.filtering import FilterPlan, read_removed, write_removed
from geoguide.indices.manifest import (
    SEGMENTED_SCHEMA,
    Manifest,
    Removal,
    SegmentInfo,
    SourceInfo,
    TombstoneInfo,
)
from geoguide.indices.store import ReferenceIndex
from geoguide.indices.stores.base import STORE_FILE
from geoguide.indices.writer import (
    NO_COUNTRY,
    STATE_FILE,
    TEXT_COLUMNS,
    remove_stale,
    remove_unlisted,
    utc_now,
    write_generation,
    write_manifest,
)

log = logging.getLogger(__name__)
WORK = "update-work"
LOCK = ".update.lock"
REMOVED = "removals.csv"  # removed.csv at the top is index filter's record of a filtered build
REMOVED_COLUMNS = ["id", "author", "lat", "lon", "reason", "utc", "generation"]


class UpdateError(GeoguideError, RuntimeError):
    """An add, remove or compaction that cannot go on; the message says why."""


class UpdateReport(BaseModel):
    n_added: int = 0
    n_removed: int = 0
    n_skipped: int = Field(0, description="ids already in the index (add) or not in it (remove)")
    n_failed_images: int = 0
    generation: int
    n_references: int
    n_segments: int = Field(0, description="segments after the update (compact: before it, merged)")
    n_tombstones: int = Field(0, description="removed rows not compacted away (compact: before it, dropped)")
    problems: list[str] = Field(default_factory=list)


@contextlib.contextmanager
def exclusive(index_dir: Path) -> Iterator[None]:
    if not index_dir.is_dir():
        raise UpdateError(f"{index_dir}: no such index directory")
    with open(index_dir / LOCK, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError(f"{index_dir}: another index add/remove/filter/compact is running on it; "
                              "wait for it to finish and run this again") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _open_for_update(root: Path) -> ReferenceIndex:
    """Open the index (under the lock) and delete what a killed update left unlisted."""
    index = ReferenceIndex(root)
    gone = remove_unlisted(root, index.manifest)
    if gone:
        log.info("%s: removed %d files an interrupted update left (first: %s)", root, len(gone), gone[0])
    return index


def _report(index: ReferenceIndex, m: Manifest | None = None, **kw) -> UpdateReport:
    m = m or index.manifest
    return UpdateReport(generation=m.generation, n_references=m.n_references, n_segments=len(m.segments),
                        n_tombstones=m.tombstones.n if m.tombstones else 0, **kw)


def _labels(index: ReferenceIndex) -> dict[str, np.ndarray]:
    """Every stored scheme's label per physical row, read back from the spans (no re-assignment)."""
    out = {}
    for prefix, table in index.schemes.items():
        labels = np.empty(index.n_rows, dtype=object)
        for part in table.parts:
            for label, (a, b) in part.spans.items():
                local = np.arange(a, b) if part.order is None else np.asarray(part.order[a:b])
                labels[part.offset + local] = label
        out[prefix] = labels.astype(str)
    return out


def _read_removed(root: Path, m: Manifest) -> list[list[str]]:
    rel = m.removals_path
    if rel is None:
        return []
    with open(root / rel, newline="") as f:
        return list(csv.reader(f))[1:]


def _removals_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(REMOVED_COLUMNS)
    w.writerows(rows)
    return buf.getvalue()


def _frozen_parts(index: ReferenceIndex) -> list[str]:
    parts = []
    with np.load(index.root / STATE_FILE) as state:  # what the descriptor learned (no model is loaded)
        learned = bool(state.files)
    if learned:
        parts.append(f"descriptor {index.manifest.descriptor.name} state ({STATE_FILE})")
    if index.store.trainable:
        parts.append(f"store {index.store.spec} quantizer ({STORE_FILE})")
    # A scheme that learned something at build time (K-means: its centroids) keeps it as built.
    parts += [f"{p} {', '.join(t.scheme.state())}" for p, t in index.schemes.items() if t.scheme.state()]
    return parts


# ---- remove -------------------------------------------------------------------------------------
def remove_references(index_dir: str | Path, ids: Iterable[str], reason: str) -> UpdateReport:
    """Remove references by id; each is recorded in the removals history with ``reason``.

    Writes a tombstone file and the manifest only (no reference data is rewritten). Ids not in the
    index are counted (``n_skipped``), not an error; removing every reference is.
    """
    root = Path(index_dir)
    with exclusive(root):
        return _remove(root, ids, reason)


def _remove(root: Path, ids: Iterable[str], reason: str,
            before_commit: Callable[[], None] | None = None) -> UpdateReport:
    index = _open_for_update(root)
    old = index.manifest
    wanted = list(dict.fromkeys(str(i) for i in ids))
    found = np.unique(index.rows_of(wanted))
    found = found[found >= 0]
    report = _report(index, n_skipped=len(wanted) - len(found))
    if not len(found):
        return report
    if len(found) == len(index):
        raise UpdateError(f"{root}: removing all {len(index)} references would leave an empty index; build another")
    if before_commit is not None:
        before_commit()
    rows = found.astype(np.int64)
    gen = old.generation + 1
    utc = utc_now()
    cols = {c: index.refs[c][rows] for c in ("id", "author", "country", "lat", "lon")}  # sorted reads
    lat, lon = cols["lat"].astype(np.float64), cols["lon"].astype(np.float64)
    country = np.array([c.decode("utf-8") for c in cols["country"]], dtype=str)
    history = _read_removed(root, old) + [
        [i.decode("utf-8"), a.decode("utf-8"), f"{la:.6f}", f"{lo:.6f}", reason, utc, str(gen)]
        for i, a, la, lo in zip(cols["id"], cols["author"], lat.tolist(), lon.tolist(), strict=True)]
    dead = np.union1d(index.tombstones, rows).astype(np.int64)
    per_label = {k: dict(v) for k, v in (old.tombstones.per_label if old.tombstones else {}).items()}
    for prefix, table in index.schemes.items():  # the frozen assignment: what each row was labelled
        counts = per_label.setdefault(prefix, {})
        for label in table.scheme.assign(lat, lon, country):
            counts[str(label)] = counts.get(str(label), 0) + 1
    tomb_rel, removals_rel = f"tombstones-{gen:06d}.npy", f"removals-{gen:06d}.csv"
    atomic.save_npy(root / tomb_rel, dead)
    atomic.write_text(root / removals_rel, _removals_csv(history))
    replaced = {old.tombstones.file if old.tombstones else None, old.removals_path}
    files = [rel for rel in old.files if rel not in replaced] + [tomb_rel, removals_rel]
    manifest = old.model_copy(update={
        "schema_version": SEGMENTED_SCHEMA, "generation": gen, "n_references": len(index) - len(rows),
        "base_rows": old.n_base_rows, "build_key": None, "removals_file": removals_rel,
        "tombstones": TombstoneInfo(file=tomb_rel, n=len(dead), per_label=per_label),
        "removals": old.removals + [Removal(utc=utc, reason=reason, n=len(rows))],
    })
    manifest = write_manifest(root, manifest, files, reuse=old.files)
    remove_stale(root, set(old.files), set(manifest.files))
    return _report(index, manifest, n_removed=len(rows), n_skipped=report.n_skipped)


def apply_filter(plan: FilterPlan) -> UpdateReport:
    """Remove what ``index filter`` found (tombstones, safe for readers, logged in the removals
    history) and add the removals, with their evidence, to ``removed.csv``. Here rather than in
    ``indices.filtering`` so that the filter decides and the update acts (no import cycle).

    The evidence is written first (merged by id, so writing it again changes nothing), then the
    removal: a run killed between the two lists removals not yet applied, and re-running the
    same filter finds the same references and applies them.
    """
    root = Path(plan.index_dir)
    ids = [r.id for r in plan.removals]
    rules = ", ".join(sorted({r.rule for r in plan.removals}))

    def evidence() -> None:
        merged = {r.id: r for r in read_removed(root)}
        for r in plan.removals:
            merged.setdefault(r.id, r)
        write_removed(root, list(merged.values()))
        reached("filter:evidence")

    with exclusive(root):
        return _remove(root, ids, f"index filter: {rules} (evidence in removed.csv)", before_commit=evidence)


def ids_of_author(index_dir: str | Path, author: str) -> list[str]:
    index = ReferenceIndex(index_dir)
    rows = index.live_rows()[index.live_column("author") == author.encode("utf-8")]
    return [index.row(int(r))["ref_id"] for r in rows]


# ---- compact ------------------------------------------------------------------------------------
def compact_index(index_dir: str | Path) -> UpdateReport:
    """Merge the base, every segment and the tombstones into one new base generation.

    The full rewrite (O(N) copying and checksumming, nothing re-described or retrained): the live
    rows, grouped by the primary scheme (a submap's base rows first, then its added rows, in the
    order they came), the removal history carried over. Then the manifest is swapped and the old
    base, segments and tombstones deleted. Killed, it leaves the old index whole (or the new one,
    with old files the next update deletes); run again, it completes. The report's
    ``n_segments`` / ``n_tombstones`` are what it merged and dropped.
    """
    root = Path(index_dir)
    with exclusive(root):
        index = _open_for_update(root)
        old = index.manifest
        report = _report(index)
        if not old.segments and old.tombstones is None:
            return report.model_copy(update={"n_segments": 0, "n_tombstones": 0})
        live = index.live_rows()
        # The new base is written beside the old one: refused before a byte when it cannot fit.
        atomic.check_room(root, len(live) * (index.manifest.descriptor.dim * 2 + 400),
                          f"compacting {len(live)} references")
        labels = _labels(index)
        perm = live[np.argsort(labels[old.primary.prefix][live], kind="stable")]
        refs = {c: index.refs[c] for c in (*TEXT_COLUMNS, "lat", "lon")}
        codes = None if index.store.codes_are_descriptors else index.part_arrays("codes")
        m = _write(index, refs=refs, vectors=index.part_arrays("descriptors"), codes=codes, perm=perm, labels=labels)
        return report.model_copy(update={"generation": m.generation, "n_references": m.n_references})


def _write(index: ReferenceIndex, *, refs: dict, vectors, codes, perm: np.ndarray,
           labels: dict[str, np.ndarray]) -> Manifest:
    """Write base generation g+1 from the given sources, swap the manifest, delete the old files."""
    root, old = index.root, index.manifest
    gen = old.generation + 1
    data_dir = f"gen-{gen:06d}"
    shutil.rmtree(root / data_dir, ignore_errors=True)  # a half-written try of this same generation
    schemes = [index.schemes[s.prefix].scheme for s in old.schemes]
    files, infos, codes_rel = write_generation(root, data_dir, refs=refs, vectors=vectors, perm=perm, labels=labels,
                                               schemes=schemes, store=index.store, codes=codes)
    previous = _read_removed(root, old)
    if previous:
        atomic.write_text(root / data_dir / REMOVED, _removals_csv(previous))
        files.append(f"{data_dir}/{REMOVED}")
    kept = [rel for rel in (STATE_FILE, STORE_FILE, old.calibration) if rel and rel in old.files]
    store = old.store.model_copy(update={"codes": codes_rel}) if old.store else None
    manifest = old.model_copy(update={
        "schema_version": 2, "generation": gen, "data_dir": data_dir, "n_references": len(perm), "schemes": infos,
        "store": store, "build_key": None, "base_rows": None, "segments": [], "tombstones": None,
        "removals_file": None,
    })
    manifest = write_manifest(root, manifest, kept + files, reuse=old.files)
    remove_stale(root, set(old.files), set(manifest.files))
    return manifest


# ---- add ----------------------------------------------------------------------------------------
def _work_key(m: Manifest, records: Sequence) -> str:
    h = hashlib.sha256(f"add\t{m.generation}\t{m.files.get(m.data('refs/id.npy'))}\n".encode())
    for r in records:
        h.update(f"{r.image_id}\t{r.image_path}\t{r.lat:.7f}\t{r.lon:.7f}\t{r.author}\n".encode())
    return h.hexdigest()


def _describe(index: ReferenceIndex, records: Sequence, work: Path, chunk_size: int, progress: bool | str,
              after_chunk: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Describe new photos in resumable chunks with the index's frozen descriptor."""
    descriptor = index.descriptor()
    paths = [Path(r.image_path) for r in records]
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    bar = Progress(len(records), f"describing ({descriptor.name})", "img", progress)
    vecs, oks, problems = [], [], []
    for ci, s in enumerate(range(0, len(records), chunk_size)):
        chunk = work / "chunks" / f"{ci:06d}.npz"
        part = paths[s : s + chunk_size]
        if not chunk.exists():
            atomic.save_npz(chunk, describe_chunk(descriptor, part, load_workers=2, hashes=False))
            if after_chunk is not None:
                after_chunk(ci)
        with np.load(chunk) as z:
            vecs.append(z["desc"])
            oks.append(z["ok"])
            problems += [str(e) for e in z["errors"] if e]
        bar.update(len(part))
    bar.close()
    return np.concatenate(vecs), np.concatenate(oks), problems


def add_references(index_dir: str | Path, records: Sequence, *, source: SourceInfo | None = None,
                   chunk_size: int = 256, progress: bool | str = False,
                   after_chunk: Callable[[int], None] | None = None) -> UpdateReport:
    """Describe ``records`` (``indices.photosets.Sample``-like) and add them to the index as one segment."""
    root = Path(index_dir)
    with exclusive(root):
        index = _open_for_update(root)
        fresh = [records[i] for i in _fresh(index, records)]
        report = _report(index, n_skipped=len(records) - len(fresh), problems=list(source.problems if source else []))
        if not fresh:
            shutil.rmtree(root / WORK, ignore_errors=True)
            return report
        missing = [r.image_id for r in fresh if r.image_path is None]
        if missing:
            raise UpdateError(f"{len(missing)} new records have no image file (first: {missing[0]!r}); give --images DIR")
        # Refused before describing anything: the scratch vectors and the segment (fp16), plus the rows.
        atomic.check_room(root, len(fresh) * (2 * index.manifest.descriptor.dim * 2 + 400),
                          f"adding {len(fresh)} references")
        work = root / WORK
        key = _work_key(index.manifest, fresh)
        if (work / "key.txt").exists() and (work / "key.txt").read_text().strip() != key:
            log.warning("discarding an unfinished add with other inputs in %s", work)
            shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        atomic.write_text(work / "key.txt", key + "\n")
        vecs, ok, problems = _describe(index, fresh, work, chunk_size, progress, after_chunk)
        new = [r for r, good in zip(fresh, ok, strict=True) if good]
        if not new:
            raise UpdateError(f"none of the {len(fresh)} new images could be read; first problem: {problems[:1]}")
        m = append_segment(index, new, vecs, image_root=source.images if source else None)  # readable images only
        shutil.rmtree(work, ignore_errors=True)
        return _report(index, m, n_added=len(new), n_failed_images=len(fresh) - len(new), n_skipped=report.n_skipped,
                       problems=(report.problems + problems)[:20])


def _fresh(index: ReferenceIndex, records: Sequence) -> list[int]:
    """Positions of the records to add: the last of each id (an id given twice is added once), and
    none whose id the index already holds (an add repeated after it finished changes nothing)."""
    last = list(dict((r.image_id, i) for i, r in enumerate(records)).values())
    there = index.rows_of([records[i].image_id for i in last])
    return [i for i, row in zip(last, there, strict=True) if row < 0]


def add_described(index_dir: str | Path, records: Sequence, vectors: np.ndarray) -> UpdateReport:
    """``add_references`` for records already described with the index's descriptor (``vectors``,
    one row each): the index update alone, as ``benchmarks/update.py`` times it."""
    root = Path(index_dir)
    with exclusive(root):
        index = _open_for_update(root)
        keep = _fresh(index, records)
        if not keep:
            return _report(index, n_skipped=len(records))
        m = append_segment(index, [records[i] for i in keep], np.asarray(vectors)[keep])
        return _report(index, m, n_added=len(keep), n_skipped=len(records) - len(keep))


def append_segment(index: ReferenceIndex, new: Sequence, vecs: np.ndarray, image_root: str | None = None) -> Manifest:
    """Write ``new`` records (``image_id``, ``image_path``, ``lat``, ``lon``, ``author``) with their
    described ``vecs`` as one new segment and swap the manifest. The caller holds the update lock."""
    from geoguide.geo import countries_at

    root, old = index.root, index.manifest
    gen = old.generation + 1
    data_dir = f"seg-{gen:06d}"
    shutil.rmtree(root / data_dir, ignore_errors=True)  # a half-written try of this same segment
    lat = np.array([r.lat for r in new], dtype=np.float64)
    lon = np.array([r.lon for r in new], dtype=np.float64)
    country = np.array([c if c else NO_COUNTRY for c in countries_at(lat, lon)], dtype=str)
    refs = {"id": np.array([r.image_id for r in new], dtype=object),
            "author": np.array([r.author or "" for r in new], dtype=object),
            "path": np.array([str(r.image_path) for r in new], dtype=object),
            "country": country, "lat": lat, "lon": lon}
    labels = {prefix: table.scheme.assign(lat, lon, country) for prefix, table in index.schemes.items()}
    perm = np.argsort(labels[old.primary.prefix], kind="stable")  # each submap a slice, as in the base
    schemes = [index.schemes[s.prefix].scheme for s in old.schemes]
    files, infos, codes_rel = write_generation(root, data_dir, refs=refs, vectors=[np.asarray(vecs)], perm=perm,
                                               labels=labels, schemes=schemes, store=index.store)
    segment = SegmentInfo(data_dir=data_dir, n_rows=len(new), generation=gen, codes=codes_rel, schemes=infos)
    manifest = old.model_copy(update={
        "schema_version": SEGMENTED_SCHEMA, "generation": gen, "n_references": old.n_references + len(new),
        "base_rows": old.n_base_rows, "segments": [*old.segments, segment], "build_key": None,
        "frozen": sorted(set(old.frozen) | set(_frozen_parts(index))),
        "image_roots": sorted(set(old.image_roots) | ({image_root} if image_root else set())),
    })
    return write_manifest(root, manifest, [*old.files, *files], reuse=old.files)
