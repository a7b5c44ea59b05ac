"""``thumbnail``: the "tiny images" baseline (Torralba et al. 2008) — a 16x16 colour thumbnail.

Weak for place recognition but instant and dependency-free: the fast descriptor for tests, smoke
runs and sanity baselines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from geoguide.indices.descriptors.base import Descriptor, l2_normalize
from geoguide.indices.descriptors.registry import register


@register
class Thumbnail(Descriptor):
    name = "thumbnail"
    default_conf = {"size": 16}  # side of the square thumbnail; dim = 3 * size**2

    @property
    def dim(self) -> int:
        return 3 * int(self.conf["size"]) ** 2

    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        s = int(self.conf["size"])
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, img in enumerate(images):
            x = np.asarray(img.convert("RGB").resize((s, s), Image.Resampling.BOX), dtype=np.float32).reshape(-1)
            out[i] = x - x.mean()  # zero-mean so brightness shifts do not dominate the cosine
        return l2_normalize(out)
