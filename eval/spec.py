"""What one benchmark run is (``RunSpec``) and how it runs into a directory (``execute``).

``geoguide eval`` and every variant of ``geoguide ablate`` go through these two, so a variant in
an ablation plan and a hand-typed ``geoguide eval`` with the same settings are the same run and
resume each other's work. A ``RunSpec`` is a ``ContextSpec`` (the index, the models, the config
overrides every command takes) plus what only a benchmark has: the photos, the labels, the
leakage rule, corruption of the prior, the oracle.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from geoguide.agent.settings import ContextSpec

if TYPE_CHECKING:  # the runner pulls in langgraph and faiss: imported when a command runs, not for --help
    from geoguide.eval.corruption import CorruptionSpec
    from geoguide.eval.records import RunSummary
    from geoguide.eval.runner import DatasetRef
    from geoguide.indices.photosets import LoadedDataset


class RunSpec(ContextSpec):
    """Everything that defines one benchmark run; ``config`` holds dotted AgentConfig overrides."""

    images: Path | None = Field(None, description="folder of query photos")
    labels: Path | None = Field(None, description="ground-truth file (IMG_ID,AUTHOR,LAT,LON)")
    dataset: str | None = Field(
        None, description="geoguide.indices.photosets loader; default csv with labels, else shared"
    )
    exclude_same_author: bool = False
    limit: int | None = Field(None, ge=1, description="only the first N photos (of the sample, with sample)")
    sample: int | None = Field(None, ge=1, description="a random N of the usable photos, drawn with seed (the same "
                               "N on every run), kept in file order; label rows dropped at load are not counted")
    workers: int = Field(1, ge=1)
    corrupt_prior: float = Field(0.0, ge=0.0, le=1.0)
    corrupt_mode: str = "neighbour"
    corrupt_noise_km: float = Field(0.0, ge=0.0)
    seed: int = 0
    oracle: bool = Field(False, description="the nearest other photographer's reference by GPS: the ceiling")

    def corruption(self) -> CorruptionSpec | None:
        from geoguide.eval.corruption import CorruptionSpec

        if self.corrupt_prior <= 0:
            return None
        return CorruptionSpec(
            p=self.corrupt_prior, mode=self.corrupt_mode, noise_km=self.corrupt_noise_km, seed=self.seed
        )


# ---------------------------------------------------------------------------------- execution


@lru_cache(maxsize=8)
def _dataset(name: str, labels: str | None, images: str | None, labels_sha256: str | None) -> LoadedDataset:
    """Loaded once per content (the hash is in the key: an edited file is read again)."""
    from geoguide.indices.photosets import load_dataset

    return load_dataset(name, labels=labels, images=images)


def content_sha256(path: str | None) -> str | None:
    """The file's SHA-256 (streamed: a labels file of millions of rows is never read whole)."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_for(spec: RunSpec) -> tuple[LoadedDataset, DatasetRef]:
    from geoguide.eval.runner import DatasetRef

    name = spec.dataset or ("csv" if spec.labels else "shared")
    labels = str(spec.labels.resolve()) if spec.labels else None
    images = str(spec.images.resolve()) if spec.images else None
    sha = content_sha256(labels)
    data = _dataset(name, labels, images, sha)
    if spec.sample is not None and spec.sample < len(data.samples):
        data = _sampled(data, spec.sample, spec.seed)
    return data, DatasetRef(name=name, labels=labels, labels_sha256=sha, images=images, report=data.report)


def _sampled(data: LoadedDataset, n: int, seed: int) -> LoadedDataset:
    """``n`` of the usable photos drawn at random (``seed``), in file order. Rows dropped at load
    are not part of a sample, so they are not counted as its misses (as with ``limit``)."""
    import numpy as np

    from geoguide.indices.photosets import LoadedDataset

    pick = np.sort(np.random.default_rng(seed).choice(len(data.samples), size=n, replace=False))
    note = f"a random sample of {n} of the {len(data.samples)} usable photos (seed {seed})"
    report = data.report.model_copy(update={"n_bad": 0, "dropped": [], "problems": [],
                                            "warnings": [*data.report.warnings, note]})
    return LoadedDataset([data.samples[i] for i in pick.tolist()], report)


def execute(spec: RunSpec, out: Path, *, restart: bool = False, progress: bool | str = False) -> RunSummary:
    """Run ``spec`` into ``out`` (resuming what is there unless ``restart``)."""
    from geoguide.agent.factory import build_context
    from geoguide.eval.oracle import run_oracle
    from geoguide.eval.runner import run_eval
    from geoguide.indices.store import ReferenceIndex

    if spec.index is None:
        raise ValueError("give the reference index (--index DIR, or index = ... in the plan)")
    data, ref = dataset_for(spec)
    if not data.samples:
        raise ValueError(f"no usable photos in {ref.labels or ref.name} (see the warnings above)")
    if not spec.oracle and all(s.image_path is None for s in data.samples):
        raise ValueError("the photos are needed to run the agent: give --images DIR (images = ... in a plan)")
    if spec.oracle:
        return run_oracle(
            data.samples,
            ReferenceIndex(spec.index),
            out,
            exclude_same_author=spec.exclude_same_author,
            limit=spec.limit,
            resume=not restart,
            dataset=ref,
        )
    corruption = spec.corruption()
    ctx = build_context(spec, data.samples)
    try:
        return run_eval(
            data.samples,
            ctx,
            out,
            exclude_same_author=spec.exclude_same_author,
            limit=spec.limit,
            workers=spec.workers,
            prior_corruption=corruption,
            resume=not restart,
            dataset=ref,
            extra={"spec": spec.model_dump(mode="json")},
            progress=progress,
        )
    finally:
        ctx.close()
