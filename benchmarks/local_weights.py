"""Cost of the bring-your-own-weights descriptors at full size: load time, seconds per photo, memory.

No trained weights can be downloaded here, so each network gets random weights of the official
shapes, written in the official file format (MegaLoc: ``model.safetensors``, 872 MB; NetVLAD:
pytorch-NetVlad's ``{"state_dict": ...}``, 56 MB), and is loaded through the real path
(``get_descriptor(name, {"weights": file})``, strict key check included). Speed does not depend on
the weight values. One process per descriptor, so peak RSS is that descriptor's.

    .venv/bin/python benchmarks/local_weights.py [--descriptors megaloc,netvlad] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_checkpoint(name: str, folder: Path) -> Path:
    """Random weights of the official shapes, in the official file format."""
    import torch
    from safetensors.torch import save_file

    from geoguide.indices.descriptors.local_weights import shapes
    from geoguide.indices.descriptors.megaloc_model import MegaLoc
    from geoguide.indices.descriptors.netvlad_model import NetVLAD

    torch.manual_seed(0)
    with torch.device("meta"):
        model = MegaLoc() if name == "megaloc" else NetVLAD()
    state = {k: torch.randn(s) * 0.02 for k, s in shapes(model).items()}
    if name == "megaloc":
        save_file(state, str(folder / "model.safetensors"))
        return folder / "model.safetensors"
    torch.save({"state_dict": state}, folder / "checkpoint.pth.tar")
    return folder / "checkpoint.pth.tar"


def measure(name: str, threads: int, photos: int) -> dict:
    """Load + describe ``photos`` 640 x 480 photos with the default options, in this process."""
    import numpy as np

    from geoguide.indices.descriptors import get_descriptor
    from tests.synthetic import place_image

    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        path = write_checkpoint(name, Path(tmp))
        size_mb = path.stat().st_size / 2**20
        t = time.perf_counter()
        desc = get_descriptor(name, {"weights": str(path), "num_threads": threads})
        load_s = time.perf_counter() - t
        images = [place_image(i, size=(640, 480)) for i in range(photos + 1)]
        desc.extract(images[:1])  # warm-up
        t = time.perf_counter()
        x = desc.extract(images[1:])
        per_photo = (time.perf_counter() - t) / photos
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    return {"descriptor": name, "dim": desc.dim, "conf": {k: v for k, v in desc.conf.items() if k != "weights"},
            "file_mb": round(size_mb), "load_s": round(load_s, 2), "s_per_photo_640x480": round(per_photo, 3),
            "threads": threads, "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--descriptors", default="megaloc,netvlad")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--work", default="benchmarks/out")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one descriptor and print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads, args.photos)))
        return
    results = []
    for name in args.descriptors.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--threads", str(args.threads),
                              "--photos", str(args.photos)], capture_output=True, text=True, check=True, cwd=ROOT)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name:<8} {r['dim']:>6}-d  file {r['file_mb']:>4} MB  load {r['load_s']:5.2f} s  "
              f"{r['s_per_photo_640x480']:6.3f} s/photo ({r['threads']} threads)  peak RSS {r['peak_rss_gb']} GB")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (Path(args.work) / "local_weights.json").write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
