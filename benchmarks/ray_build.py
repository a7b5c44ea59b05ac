"""Throughput of the describing step of ``index build`` on Ray, with 1 and 2 actors (and in-process).

Builds ``--n`` photos of the shared split (default 200, ``effnet-gem``) three ways into fresh folders:
in this process (today's path), then on one local Ray runtime (``--cpus`` CPUs, started once) with
1 and 2 describing actors of one CPU each (one torch thread per describer, in-process too). For each:
images/s of the describing step (build start to the last shard written: actor start and model load
included), the same after the first shard (the steady rate a long build approaches) and of the whole build. Each way runs ``--repeats`` times in alternating order and the best
run counts (other jobs on a shared machine only ever slow a run down). Prints them and the 2-actor /
1-actor ratio; ``--json PATH`` writes them. Every build is checked to give the in-process reference table.

On a 2-core machine the ratio is bounded by the cores the actors share with the driver (which writes
the shards) and with anything else running; on a cluster it grows with the nodes. As a control, the
same Ray Data pipeline runs a UDF that sleeps ``--control-s`` per chunk instead of describing (no CPU
used): its 2 / 1 ratio shows what the pipeline gives when cores are not the limit.

    nice -n 10 .venv/bin/python benchmarks/ray_build.py --n 200 --json benchmarks/out/ray_build.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timed_build(samples, out: Path, config, ray_options) -> dict:
    from geoguide.indices.build import build_index

    shards: list[float] = []
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = build_index(samples, out, config, progress=False, ray=ray_options,
                           after_chunk=lambda ci: shards.append(time.perf_counter()))
    total = time.perf_counter() - t0
    describe = shards[-1] - t0
    return {"describe_s": round(describe, 2), "images_per_s": round(len(samples) / describe, 2),
            "first_shard_s": round(shards[0] - t0, 2),  # actor start and model load, then one chunk
            "after_first_images_per_s": round((len(samples) - min(config.chunk_size, len(samples)))
                                              / max(shards[-1] - shards[0], 1e-9), 2),
            "build_s": round(total, 2), "build_images_per_s": round(len(samples) / total, 2),
            "n_references": manifest.n_references}


class _Sleeper:
    """The control's UDF: the describing actor's shape without its CPU work."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, batch: dict) -> dict:
        time.sleep(self.seconds)
        return {"chunk": batch["chunk"]}


def control(ray, n_chunks: int, seconds: float) -> dict:
    """Seconds for ``n_chunks`` sleeping chunks through the build's pipeline shape, 1 and 2 actors."""
    from ray.data import ActorPoolStrategy

    took = {}
    for workers in (1, 2):
        ds = ray.data.from_items([{"chunk": i} for i in range(n_chunks)], override_num_blocks=n_chunks)
        ds = ds.map_batches(_Sleeper, batch_size=1, compute=ActorPoolStrategy(size=workers), num_cpus=1,
                            fn_constructor_kwargs={"seconds": seconds})
        t = time.perf_counter()
        for _ in ds.iter_batches(batch_size=None):
            pass
        took[f"ray_{workers}_s"] = round(time.perf_counter() - t, 2)
    return {"chunks": n_chunks, "sleep_s": seconds, **took, "ratio_2_to_1": round(took["ray_1_s"] / took["ray_2_s"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--n", type=int, default=200, help="photos to describe")
    ap.add_argument("--descriptor", default="effnet-gem")
    ap.add_argument("--chunk-size", type=int, default=16, help="images per shard (one Ray task each)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray runtime")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each way; the best counts")
    ap.add_argument("--control-s", type=float, default=0.5, help="sleep per chunk of the control pipeline")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if not (args.data / "labels.csv").exists():
        raise SystemExit(f"no labels.csv in {args.data}; give --data (the shared split: ../shared/data/im2gps3k)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from geoguide.indices.build import BuildConfig
    from geoguide.indices.distributed import RayOptions
    from geoguide.indices.photosets import load_dataset

    samples = load_dataset("csv", labels=args.data / "labels.csv", images=args.data / "images").samples[: args.n]
    # One torch thread per describer, in-process too, so the runs compare workers, not thread pools.
    config = BuildConfig(descriptor=args.descriptor, descriptor_conf={"num_threads": 1}, submaps="country",
                         chunk_size=args.chunk_size, load_workers=1)
    ways = {"in_process": None, "ray_1": RayOptions(workers=1), "ray_2": RayOptions(workers=2)}
    tries: dict[str, list[dict]] = {name: [] for name in ways}
    tmp = Path(tempfile.mkdtemp(prefix="ray_build_bench_"))
    try:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
        try:
            for r in range(args.repeats):
                for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                    tries[name].append(timed_build(samples, tmp / name, config, ways[name]))
                    print(f"  {name}: {tries[name][-1]}", flush=True)
            n_chunks = -(-len(samples) // args.chunk_size)
            pipeline = control(ray, n_chunks, args.control_s)
        finally:
            ray.shutdown()
        runs = {name: {**min(t, key=lambda x: x["describe_s"]), "tries": t} for name, t in tries.items()}
        reference = np.load(tmp / "in_process" / "refs" / "id.npy")
        for name in ("ray_1", "ray_2"):
            runs[name]["same_reference_table"] = bool(np.array_equal(reference, np.load(tmp / name / "refs" / "id.npy")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "n": len(samples), "descriptor": args.descriptor, "chunk_size": args.chunk_size, "ray_cpus": args.cpus,
        "machine_cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "python": platform.python_version(),
        "ray": ray.__version__, "runs": runs,
        "ratio_2_to_1_workers": round(runs["ray_2"]["images_per_s"] / runs["ray_1"]["images_per_s"], 2),
        "control": pipeline,
    }
    print(f"{len(samples)} photos, {args.descriptor}, chunks of {args.chunk_size}, {os.cpu_count()} CPUs "
          f"(load average {result['load_average'][0]:.1f})")
    for name, r in runs.items():
        print(f"  {name:<11} describe {r['describe_s']:>6.1f} s = {r['images_per_s']:>6.2f} img/s "
              f"(first shard at {r['first_shard_s']:.1f} s, then {r['after_first_images_per_s']:.2f} img/s)   "
              f"whole build {r['build_s']:>6.1f} s = {r['build_images_per_s']:>6.2f} img/s")
    print(f"  2 actors / 1 actor: {result['ratio_2_to_1_workers']}x")
    print(f"  control (the same pipeline, {pipeline['chunks']} chunks sleeping {pipeline['sleep_s']} s, no CPU): "
          f"1 actor {pipeline['ray_1_s']} s, 2 actors {pipeline['ray_2_s']} s = {pipeline['ratio_2_to_1']}x")
    if args.json:
        from geoguide.core import atomic

        atomic.write_json(args.json, result)


if __name__ == "__main__":
    main()
