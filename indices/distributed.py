"""Descriptor extraction on Ray: the describing step of ``index build --ray / --ray-address``.

Only the describing of chunks moves; everything else stays on the driver, so the index is the one a
single-process build makes:

* the chunks are the build's own fixed slices (``indices.build``), one Ray Data row each, so the work
  folder's bookkeeping is the single-process one: a chunk whose shard ``work/chunks/NNNNNN.npz`` exists
  is never sent again, whichever path wrote it, and a killed distributed build resumes from the shards
  already written (by re-running the same command, with or without ``--ray``);
* learned parts (PCA-whitening, vocabularies) are fitted once on the driver; each actor rebuilds the
  descriptor from its name and options and loads that fitted state, so every worker describes alike;
* ``map_batches`` with a callable class puts one actor per worker, each loading its model once; an
  actor runs ``indices.describe.describe_chunk`` (the function the single-process loop calls) and sends
  the shard back as ``.npz`` bytes; the driver writes it atomically. Workers need to read the photos
  (a shared file system) but never write: the work folder may be local to the driver.

Nothing here imports ray until a distributed build starts; ray is an ordinary dependency (CPU wheels,
no torch or CUDA), installed by ``make setup``. Ray's usage statistics stay off (no network at run time).
"""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.indices.descriptors import Descriptor

log = logging.getLogger(__name__)


class RayOptions(BaseModel):
    """Where and how wide to describe. Not part of the index's identity: any width gives the same index."""

    address: str | None = Field(None, description="a running cluster (HOST:PORT, 'auto' or ray://...); "
                                                  "None starts a local Ray runtime for this build")
    workers: int | None = Field(None, ge=1, description="describing actors; None = the cluster's CPUs / cpus_per_worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor (its torch threads)")
    object_store_mb: int | None = Field(None, ge=64, description="object store of a local runtime; None = Ray's default")


class RayUnavailableError(GeoguideError, RuntimeError):
    """Ray is not installed or the cluster cannot be reached; the message says what to do."""


def _ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    try:
        import ray
        import ray.data  # noqa: F401 - ray without the data extra lacks it
    except ImportError as e:
        raise RayUnavailableError(
            f"a distributed build needs Ray Data ({e.name or e}): pip install 'geoguide[ray]' (make setup does), "
            "or build without --ray"
        ) from None
    return ray


def check_ray(options: RayOptions, timeout_s: float = 5.0) -> None:
    """Fail at once, before any work, when Ray is missing or a HOST:PORT cluster does not answer
    (``ray.init`` itself retries an unreachable address for minutes)."""
    _ray()
    host, sep, port = (options.address or "").rpartition(":")
    if not sep or "://" in options.address or not port.isdigit():
        return  # a local runtime, "auto" or a ray:// client address: ray.init reports those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayUnavailableError(
            f"no Ray cluster answers at {options.address} ({e.strerror or e}); start one with "
            f"`ray start --head --port={port}` there, or check the address"
        ) from None


def _connect(ray, options: RayOptions) -> bool:
    """Join the cluster or start a local runtime; True when this call started the connection."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if options.address is None:
        kwargs["include_dashboard"] = False
        if options.object_store_mb is not None:
            kwargs["object_store_memory"] = options.object_store_mb * 2**20
    try:
        ray.init(address=options.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailableError(f"cannot join the Ray cluster at {options.address}: {e}") from None
    return True


class ChunkDescriber:
    """One Ray actor: a descriptor (model loaded once) that turns a batch of chunk rows into shards."""

    def __init__(self, name: str, conf: dict[str, Any], state: dict[str, np.ndarray], load_workers: int,
                 hashes: bool) -> None:
        from geoguide.indices.descriptors import get_descriptor

        self.descriptor = get_descriptor(name, conf)
        self.descriptor.load_state(state)
        self.load_workers, self.hashes = load_workers, hashes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from geoguide.indices.describe import describe_chunk

        shards = []
        for paths in batch["paths"]:
            arrays = describe_chunk(self.descriptor, [Path(p) for p in paths], self.load_workers, self.hashes)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            shards.append(buf.getvalue())
        return {"chunk": np.asarray(batch["chunk"]), "shard": np.array(shards, dtype=object)}


def n_workers(ray, options: RayOptions, n_chunks: int) -> int:
    """Actors to start: as asked, else as many as the cluster's CPUs allow; never more than chunks."""
    wanted = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // options.cpus_per_worker))
    return max(1, min(wanted, n_chunks))


def describe_on_ray(
    chunks: Sequence[tuple[int, list[str]]],
    descriptor: Descriptor,
    chunk_dir: Path,
    load_workers: int,
    hashes: bool,
    options: RayOptions,
    finished: Callable[[int], None],
) -> None:
    """Describe ``(chunk index, image paths)`` on Ray; each shard is written to ``chunk_dir`` as it
    arrives and ``finished(index)`` is called, so a build killed at any moment keeps what was done."""
    if not chunks:
        return
    ray = _ray()
    started = _connect(ray, options)
    try:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the build's own bar counts images
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        rows = [{"chunk": ci, "paths": [os.path.abspath(p) for p in paths]} for ci, paths in chunks]
        # One block per chunk: shards come back (and are saved) one by one, and no actor idles
        # while another holds a block of several chunks.
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        size = n_workers(ray, options, len(rows))
        log.info("describing %d chunks on Ray with %d actors", len(rows), size)
        ds = ds.map_batches(
            ChunkDescriber,
            batch_size=1,
            compute=ActorPoolStrategy(size=size),
            num_cpus=options.cpus_per_worker,
            fn_constructor_kwargs={"name": descriptor.name, "conf": descriptor.conf, "state": descriptor.state(),
                                   "load_workers": load_workers, "hashes": hashes},
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for ci, shard in zip(batch["chunk"], batch["shard"], strict=True):
                atomic.write_bytes(chunk_dir / f"{int(ci):06d}.npz", bytes(shard))
                finished(int(ci))
    except ray.exceptions.RayError as e:
        if isinstance(e, (ray.exceptions.RayTaskError, ray.exceptions.UserCodeException)):
            raise  # geoguide's own code failed on a worker: the same failure as in one process
        first = (str(e).strip().splitlines() or [""])[0]
        raise RayUnavailableError(
            f"the Ray cluster failed during the build ({type(e).__name__}: {first}); the shards written so far "
            "are kept: run the same command again to resume"
        ) from None
    finally:
        if started:
            ray.shutdown()
