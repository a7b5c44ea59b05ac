"""Build an index from geotagged reference photos: fit, describe in chunks, write.

Resumable: work happens in ``OUT/work/``. The descriptor's learned state and every finished chunk
of descriptors are saved atomically there; a killed build re-run with the same arguments skips
them and produces the same index as an uninterrupted one (chunks are fixed slices of the input
order, so their content does not depend on when the build stopped).

What ``OUT`` may already hold, decided before anything is written (``build_key`` = hash of the
options and every reference row, kept in ``work/build_key.txt`` and in the manifest):

* nothing, or the same build (unfinished, or finished: rebuilt in place, same files) -> go on;
* another index, another unfinished build, or files that are no index at all -> ``IndexExistsError``
  unless ``overwrite=True``. Overwriting first deletes the old index's files (those its manifest
  lists and every name an index uses, ``writer.index_files``) and the old ``work/``, so none of them
  can survive into the new one; files geoguide did not write are never deleted. An interrupted
  overwrite resumes without the flag: its work folder carries the new key.

A build that fails leaves no half-made folders: scratch work that could not be resumed from (no
fitted state, no finished chunk) is removed, and so is every folder the build itself created, if
that leaves it empty. A folder the user made is never removed. Photos that cannot be read are
skipped, counted and named in the manifest (``source.failed_images``).

``overwrite`` is an argument of ``build_index``, not a ``BuildConfig`` field: the config is hashed
into the build key, and whether to replace what is there is no property of the index.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.core.progress import Progress
from geoguide.indices.describe import describe_chunk, load_many
from geoguide.indices.descriptors import Descriptor, get_descriptor
from geoguide.indices.distributed import RayOptions, check_ray
from geoguide.indices.filtering import (
    REMOVED_NAME,
    FilterConfig,
    duplicate_removals,
    exclude_near_records,
    is_removed_record,
    record_removals,
)
from geoguide.indices.manifest import MANIFEST_NAME, FailedImage, Manifest, SourceInfo
from geoguide.indices.stores import parse_store
from geoguide.indices.submaps import SubmapScheme, parse_schemes
from geoguide.indices.writer import (
    INDEX_MARKERS,
    check_trainable,
    index_files,
    previous_files,
    take,
    write_index,
)

log = logging.getLogger(__name__)
MAX_PROBLEMS = 20
MAX_FAILED_IMAGES = 1000  # named in the manifest; enough to act on, small enough to print


class ReferenceRecord(Protocol):
    """What a build needs of one reference photo (``indices.photosets.Sample`` satisfies it)."""

    image_id: str
    image_path: str | Path | None
    lat: float
    lon: float
    author: str | None


class BuildConfig(BaseModel):
    descriptor: str = Field("effnet-gem", description="registered descriptor name")
    descriptor_conf: dict[str, Any] = Field(default_factory=dict, description="overrides of its default_conf")
    submaps: str = Field("country,kmeans:100", description="schemes to store; the first is the storage order")
    store: str = Field("fp16", description="vector store (indices.stores): fp16 (exact) | sq8 | pq:M | opq:M")
    faiss_index: Literal["flat", "fp16"] | None = Field(None, description="deprecated; both values mean store fp16")
    chunk_size: int = Field(256, ge=1, description="images per resumable unit of work")
    fit_sample: int = Field(1000, ge=1, description="images used to fit PCA / vocabularies")
    seed: int = 0
    load_workers: int = Field(2, ge=1, description="threads decoding images while the model runs")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="dedupe / exclude-near rules")


class BuildError(GeoguideError, RuntimeError):
    """A build that cannot go on; the message says why and what to do."""


class IndexExistsError(BuildError):
    """The output folder holds something else (another index, another unfinished build, other files)."""


def _work_key(config: BuildConfig, records: Sequence[ReferenceRecord]) -> str:
    # Filters enter the key only when set, so indices built before they existed keep their key.
    h = hashlib.sha256(config.model_dump_json(exclude=None if config.filters.active else {"filters"}).encode())
    for r in records:
        h.update(f"{r.image_id}\t{r.image_path}\t{r.lat:.7f}\t{r.lon:.7f}\t{r.author}\n".encode())
    return h.hexdigest()


def validate_build_config(config: BuildConfig) -> None:
    """Raise ``ValueError`` for an unknown descriptor, option or submap scheme, and
    ``WeightsNotFoundError`` (a ``FileNotFoundError``) when the descriptor's model is not on this machine."""
    parse_schemes(config.submaps)
    desc = get_descriptor(config.descriptor, config.descriptor_conf)
    parse_store(config.store).factory(desc.dim)  # e.g. pq:M with M not dividing the dimension


def _records_without_images(records: Sequence[ReferenceRecord]) -> None:
    missing = [r.image_id for r in records if r.image_path is None or str(r.image_path) in ("", ".")]
    if missing:
        raise BuildError(
            f"{len(missing)} of {len(records)} records have no image file (first: {missing[0]!r}): the labels "
            "were read without an image folder; give the folder of reference photos (--images DIR)"
        )


def _read_key(work: Path) -> str | None:
    try:
        return (work / "build_key.txt").read_text().strip()
    except FileNotFoundError:
        return None


def what_is_there(out: Path, key: str) -> str | None:
    """None when a build with ``key`` may write into ``out``; else what is in the way."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise BuildError(f"{out} is a file, not a folder; choose a folder for the index")
    work = out / "work"
    work_key = _read_key(work)
    if work_key is None and work.is_dir() and any(work.iterdir()):
        # The build's scratch folder would be filled and finally deleted: never a user's own "work".
        raise BuildError(f"{work} is not a geoguide build folder; move or rename it (a build uses OUT/work)")
    if work_key == key:
        return None  # resume this very build
    if work_key is not None:
        return f"{out / 'work'} holds an unfinished build with other inputs or options"
    mpath = out / MANIFEST_NAME
    if mpath.exists():
        try:
            m = Manifest.model_validate_json(mpath.read_text())
        except (OSError, ValueError):
            return f"{out} holds an index whose manifest cannot be read"
        if m.build_key == key:
            return None  # the same index again: rebuilt in place, the same files
        about = f"{m.descriptor.name}, {m.n_references} references, submaps {','.join(s.spec for s in m.schemes)}"
        if m.build_key is None:
            return f"{out} holds an index ({about}) that does not record what it was built from"
        return f"{out} holds another index ({about}) built from other inputs or options"
    if any((out / name).exists() for name in INDEX_MARKERS):
        return f"{out} holds part of an index (no {MANIFEST_NAME})"
    if any(out.iterdir()):
        return f"{out} is not empty and holds no geoguide index"
    return None


def clear_index(out: Path) -> None:
    """Delete an old index's files and its build's work folder; anything else stays."""
    listed = [out / rel for rel in previous_files(out)]
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # first: no moment where a mix looks whole
    for target in [*listed, *index_files(out)]:
        if target.resolve().is_relative_to(out.resolve()):  # a tampered manifest must not reach outside
            target.unlink(missing_ok=True)
    for folder in (out / "refs", out / "submaps"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if is_removed_record(out / REMOVED_NAME):
        (out / REMOVED_NAME).unlink()
    if _read_key(out / "work") is not None:  # our scratch space (another build's); never a user's "work"
        shutil.rmtree(out / "work")


def _resumable(work: Path) -> bool:
    """Whether ``work`` holds anything a re-run would reuse (a fitted state or a finished chunk)."""
    return (work / "descriptor_state.npz").exists() or any((work / "chunks").glob("*.npz"))


def _clean_up_after_failure(work: Path, created: list[Path]) -> None:
    """Remove scratch work nothing can resume from, then the folders this build made, if now empty."""
    try:
        if work.is_dir() and not _resumable(work):
            shutil.rmtree(work)
        for folder in created:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    except OSError as e:  # never hide the real failure behind a clean-up one
        log.warning("could not clean up after the failed build: %s", e)


def _reason(error: str, path: Path) -> str:
    """An ``ImageLoadError`` message without its leading path (the manifest has the path already)."""
    prefix = f"{path}: "
    return error[len(prefix):] if error.startswith(prefix) else error


def build_index(
    records: Sequence[ReferenceRecord],
    out_dir: str | Path,
    config: BuildConfig | None = None,
    source: SourceInfo | None = None,
    progress: bool | str = True,
    after_chunk: Callable[[int], None] | None = None,
    *,
    overwrite: bool = False,
    ray: RayOptions | None = None,
) -> Manifest:
    """Describe ``records`` and write an index to ``out_dir``; resumes an interrupted build.

    ``overwrite``: replace another index (or unfinished build) in ``out_dir``, or write into a
    non-empty folder that is no index; without it those raise ``IndexExistsError``.
    ``ray``: describe the chunks on Ray (a local runtime or a cluster) instead of in this process;
    the index is the same (same chunks, same fitted state), and either way resumes the other's chunks.
    """
    config = config or BuildConfig()
    source = source or SourceInfo()
    if not records:
        raise BuildError("no usable reference records to index")
    _records_without_images(records)
    out = Path(out_dir)
    work = out / "work"
    schemes = parse_schemes(config.submaps)
    descriptor = get_descriptor(config.descriptor, config.descriptor_conf)  # a missing model stops here
    if ray is not None:
        check_ray(ray)  # an unreachable cluster stops here too, not after the fit
    key = _work_key(config, records)
    in_the_way = what_is_there(out, key)
    if in_the_way is not None:
        if not overwrite:
            raise IndexExistsError(
                f"{in_the_way}; pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        log.warning("%s; overwriting it", in_the_way)
        clear_index(out)
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        return _build(records, out, config, source, progress, after_chunk, descriptor, schemes, key, ray)
    except BaseException:
        _clean_up_after_failure(work, created)
        raise


def _build(
    records: Sequence[ReferenceRecord],
    out: Path,
    config: BuildConfig,
    source: SourceInfo,
    progress: bool | str,
    after_chunk: Callable[[int], None] | None,
    descriptor: Descriptor,
    schemes: list[SubmapScheme],
    key: str,
    ray: RayOptions | None,
) -> Manifest:
    """Filter, fit, describe and write; ``build_index`` has already decided that ``out`` may be written."""
    work = out / "work"
    # Described chunks and the final descriptors (fp16) plus the reference table: refuse a build
    # that cannot fit before minutes of describing, not at its last write.
    done = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) if work.is_dir() else 0  # a resumed build
    atomic.check_room(out, 2 * len(records) * descriptor.dim * 2 + 400 * len(records) - done,
                      f"indexing {len(records)} photos")
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_text(work / "build_key.txt", key + "\n")
    records, removals = exclude_near_records(records, config.filters)
    check_trainable(parse_store(config.store), len(records))  # before minutes of describing, not after
    paths = [Path(r.image_path) if r.image_path is not None else Path("") for r in records]
    _fit(descriptor, paths, work, config)
    chunks = _describe(descriptor, paths, work / "chunks", config, progress, after_chunk, ray)

    # Assemble and write the index.
    descs, oks, hashes, problems = [], [], [], list(source.problems)
    failed: list[FailedImage] = []
    for ci, s, _ in chunks:
        with np.load(work / "chunks" / f"{ci:06d}.npz") as z:
            descs.append(z["desc"])
            oks.append(z["ok"])
            if config.filters.dedupe:
                hashes.append((z["sha256"], z["dhash"]))
            for i, err in enumerate(z["errors"], start=s):
                if err:
                    problems.append(str(err))
                    if len(failed) < MAX_FAILED_IMAGES:
                        failed.append(FailedImage(id=records[i].image_id, path=str(paths[i]),
                                                  reason=_reason(str(err), paths[i])))
    ok = np.concatenate(oks)
    vecs: list[np.ndarray] = descs  # rows of the readable images only, as parts: never joined in memory
    keep = np.flatnonzero(ok)
    n = len(records)
    if len(keep) == 0:
        # The chunks record only failures: resuming from them could only fail again.
        shutil.rmtree(work, ignore_errors=True)
        raise BuildError(f"none of the {n} images could be read; first problem: {problems[:1]}")
    n_failed = int(n - len(keep))
    if n_failed:
        log.warning("%d of %d images could not be read and were skipped", n_failed, n)
    if config.filters.dedupe:
        sha = np.concatenate([h[0] for h in hashes])[keep]
        dhash = np.concatenate([h[1] for h in hashes])[keep]
        unique, dropped = duplicate_removals([records[i].image_id for i in keep], [str(paths[i]) for i in keep],
                                             np.array([records[i].lat for i in keep]),
                                             np.array([records[i].lon for i in keep]),
                                             sha, dhash, config.filters.max_hamming)
        keep, vecs, removals = keep[unique], [take(descs, np.flatnonzero(unique))], removals + dropped
    from geoguide.geo import countries_at

    lat = np.array([records[i].lat for i in keep], dtype=np.float64)
    lon = np.array([records[i].lon for i in keep], dtype=np.float64)
    src = source.model_copy(
        update={"n_failed_images": n_failed, "failed_images": failed, "problems": problems[:MAX_PROBLEMS]}
    )
    manifest = write_index(
        out,
        ids=[records[i].image_id for i in keep],
        authors=[records[i].author or "" for i in keep],
        paths=[str(paths[i]) for i in keep],
        lat=lat,
        lon=lon,
        country=countries_at(lat, lon),
        descriptors=vecs,
        descriptor=descriptor,
        schemes=schemes,
        store=config.store,
        source=src,
        build_key=key,
    )
    record_removals(out, removals, config.filters)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _fit(descriptor: Descriptor, paths: list[Path], work: Path, config: BuildConfig) -> None:
    """Fit what the descriptor learns from references (PCA, vocabulary) once, on this process;
    a distributed build ships the fitted state to its workers, so both paths describe alike."""
    state_file = work / "descriptor_state.npz"
    if state_file.exists():
        with np.load(state_file) as z:
            descriptor.load_state({k: z[k] for k in z.files})
    elif descriptor.trainable and not descriptor.is_fitted:
        rng = np.random.default_rng(config.seed)
        pick = np.sort(rng.choice(len(paths), size=min(config.fit_sample, len(paths)), replace=False))
        loaded = load_many([paths[i] for i in pick], config.load_workers)
        images = [img for img, _ in loaded if img is not None]
        if not images:
            raise BuildError("none of the images sampled to fit the descriptor could be read")
        log.info("fitting %s on %d images", descriptor.name, len(images))
        descriptor.fit(images)
        atomic.save_npz(state_file, descriptor.state())


def _describe(descriptor: Descriptor, paths: list[Path], chunk_dir: Path, config: BuildConfig,
              progress: bool | str, after_chunk: Callable[[int], None] | None,
              ray: RayOptions | None) -> list[tuple[int, int, int]]:
    """Describe in fixed chunks ``(index, start, end)``; each finished chunk is a file, so a restart
    (on either path) skips it. Returns every chunk."""
    n = len(paths)
    chunk_dir.mkdir(exist_ok=True)
    chunks = [(ci, s, min(s + config.chunk_size, n)) for ci, s in enumerate(range(0, n, config.chunk_size))]
    todo = [c for c in chunks if not (chunk_dir / f"{c[0]:06d}.npz").exists()]
    if len(todo) < len(chunks):
        log.warning("resuming the build in %s: %d of %d chunks already described",
                    chunk_dir.parent, len(chunks) - len(todo), len(chunks))
    bar = Progress(n, f"describing ({descriptor.name})", "img", progress)
    bar.update(sum(e - s for ci, s, e in chunks) - sum(e - s for ci, s, e in todo))
    sizes = {ci: e - s for ci, s, e in todo}

    def finished(ci: int) -> None:
        if after_chunk is not None:
            after_chunk(ci)
        bar.update(sizes[ci])

    if ray is not None:
        from geoguide.indices.distributed import describe_on_ray

        describe_on_ray([(ci, [str(p) for p in paths[s:e]]) for ci, s, e in todo], descriptor, chunk_dir,
                        config.load_workers, config.filters.dedupe, ray, finished)
    else:
        for ci, s, e in todo:
            atomic.save_npz(chunk_dir / f"{ci:06d}.npz",
                            describe_chunk(descriptor, paths[s:e], config.load_workers, config.filters.dedupe))
            finished(ci)
    bar.close()
    return chunks
