"""Build an index from geotagged reference photos: fit, describe in chunks, write.

Resumable: work happens in ``OUT/work/``. The descriptor's learned state and every finished chunk
of descriptors are saved atomically there; a killed build re-run with the same arguments skips
them and produces the same index as an uninterrupted one (chunks are fixed slices of the input
order, so their content does not depend on when the build stopped).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

from indices import atomic
from indices.descriptors import get_descriptor
from indices.errors import GeoguideError
from indices.images import ImageLoadError, load_image
from indices.manifest import Manifest, SourceInfo
from indices.submaps import parse_schemes
from indices.writer import write_index

log = logging.getLogger(__name__)
MAX_PROBLEMS = 20


class ReferenceRecord(Protocol):
    """What a build needs of one reference photo (``eval.datasets.Sample`` satisfies it)."""

    image_id: str
    image_path: str | Path | None
    lat: float
    lon: float
    author: str | None


class BuildConfig(BaseModel):
    descriptor: str = Field("effnet-gem", description="registered descriptor name")
    descriptor_conf: dict[str, Any] = Field(default_factory=dict, description="overrides of its default_conf")
    submaps: str = Field("country,kmeans:100", description="schemes to store; the first is the storage order")
    faiss_index: Literal["flat", "fp16"] = Field("fp16", description="fp16 halves memory at no measurable cost")
    chunk_size: int = Field(256, ge=1, description="images per resumable unit of work")
    fit_sample: int = Field(1000, ge=1, description="images used to fit PCA / vocabularies")
    seed: int = 0
    load_workers: int = Field(2, ge=1, description="threads decoding images while the model runs")


class BuildError(GeoguideError, RuntimeError):
    pass


def _load_many(paths: Sequence[Path], workers: int):
    def one(p: Path):
        try:
            return load_image(p), None
        except ImageLoadError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def _work_key(config: BuildConfig, records: Sequence[ReferenceRecord]) -> str:
    h = hashlib.sha256(config.model_dump_json().encode())
    for r in records:
        h.update(f"{r.image_id}\t{r.image_path}\t{r.lat:.7f}\t{r.lon:.7f}\t{r.author}\n".encode())
    return h.hexdigest()


def validate_build_config(config: BuildConfig) -> None:
    """Raise ``ValueError`` for an unknown descriptor, option or submap scheme."""
    parse_schemes(config.submaps)
    get_descriptor(config.descriptor, config.descriptor_conf)


def build_index(
    records: Sequence[ReferenceRecord],
    out_dir: str | Path,
    config: BuildConfig | None = None,
    source: SourceInfo | None = None,
    progress: bool = True,
    after_chunk: Callable[[int], None] | None = None,
) -> Manifest:
    """Describe ``records`` and write an index to ``out_dir``; resumes an interrupted build."""
    config = config or BuildConfig()
    source = source or SourceInfo()
    if not records:
        raise BuildError("no usable reference records to index")
    out = Path(out_dir)
    work = out / "work"
    schemes = parse_schemes(config.submaps)
    descriptor = get_descriptor(config.descriptor, config.descriptor_conf)

    key = _work_key(config, records)
    key_file = work / "build_key.txt"
    if key_file.exists() and key_file.read_text().strip() != key:
        raise BuildError(
            f"{work} holds an unfinished build with other inputs or options; delete {work} to start over"
        )
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_text(key_file, key + "\n")
    paths = [Path(r.image_path) if r.image_path is not None else Path("") for r in records]

    # 1. Fit what the descriptor learns from references (PCA, vocabulary), once.
    state_file = work / "descriptor_state.npz"
    if state_file.exists():
        with np.load(state_file) as z:
            descriptor.load_state({k: z[k] for k in z.files})
    elif descriptor.trainable and not descriptor.is_fitted:
        rng = np.random.default_rng(config.seed)
        pick = np.sort(rng.choice(len(records), size=min(config.fit_sample, len(records)), replace=False))
        loaded = _load_many([paths[i] for i in pick], config.load_workers)
        images = [img for img, _ in loaded if img is not None]
        if not images:
            raise BuildError("none of the images sampled to fit the descriptor could be read")
        log.info("fitting %s on %d images", descriptor.name, len(images))
        descriptor.fit(images)
        atomic.save_npz(state_file, descriptor.state())

    # 2. Describe in fixed chunks; each finished chunk is a file, so a restart skips it.
    n = len(records)
    chunk_dir = work / "chunks"
    chunk_dir.mkdir(exist_ok=True)
    starts = list(range(0, n, config.chunk_size))
    bar = tqdm(total=n, desc=f"describing ({descriptor.name})", unit="img", disable=not progress)
    for ci, s in enumerate(starts):
        chunk_file = chunk_dir / f"{ci:06d}.npz"
        e = min(s + config.chunk_size, n)
        if not chunk_file.exists():
            loaded = _load_many(paths[s:e], config.load_workers)
            ok = np.array([img is not None for img, _ in loaded], dtype=bool)
            images = [img for img, _ in loaded if img is not None]
            vecs = descriptor.extract(images) if images else np.zeros((0, descriptor.dim), np.float32)
            errors = np.array([err or "" for _, err in loaded], dtype=object).astype(str)
            atomic.save_npz(chunk_file, {"desc": vecs.astype(np.float16), "ok": ok, "errors": errors})
            if after_chunk is not None:
                after_chunk(ci)
        bar.update(e - s)
    bar.close()

    # 3. Assemble and write the index.
    descs, oks, problems = [], [], list(source.problems)
    for ci in range(len(starts)):
        with np.load(chunk_dir / f"{ci:06d}.npz") as z:
            descs.append(z["desc"])
            oks.append(z["ok"])
            problems.extend(str(x) for x in z["errors"] if x)
    ok = np.concatenate(oks)
    vecs = np.concatenate(descs)
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise BuildError(f"none of the {n} images could be read; first problem: {problems[:1]}")
    n_failed = int(n - len(keep))
    if n_failed:
        log.warning("%d of %d images could not be read and were skipped", n_failed, n)
    from indices.geography import countries_at

    lat = np.array([records[i].lat for i in keep], dtype=np.float64)
    lon = np.array([records[i].lon for i in keep], dtype=np.float64)
    src = source.model_copy(update={"n_failed_images": n_failed, "problems": problems[:MAX_PROBLEMS]})
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
        faiss_index=config.faiss_index,
        source=src,
    )
    shutil.rmtree(work, ignore_errors=True)
    return manifest
