"""``megaloc``: MegaLoc global descriptors (8448-d) from the official checkpoint on local disk.

MegaLoc (Berton & Masone 2025; DINOv2 ViT-B/14 + SALAD, trained on GSV-Cities, MSLS, MegaScenes,
ScanNet and SF-XL) is the strongest published visual-place-recognition descriptor, MIT-licensed.
The network is ``megaloc_model.MegaLoc``; this file loads the weights and feeds it photos.

Weights (never downloaded): ``--descriptor-opt weights=/path/to/file`` or ``$GEOGUIDE_MEGALOC_WEIGHTS``.
Two official files load key for key:
- ``model.safetensors`` from the Hugging Face repo ``gberton/MegaLoc`` (what ``torch.hub.load(
  "gmberton/MegaLoc", "get_trained_model")`` fetches since January 2026), keys ``backbone.*``;
- ``megaloc.torch`` from the GitHub release v1.0 (the hub's file before that), where the backbone
  was DINOv2's own hub module: keys ``backbone.model.*`` plus DINOv2's ``mask_token`` (a training-
  only token). Those keys are renamed to ``backbone.*`` and ``mask_token`` dropped; nothing else.
Any other missing, unexpected or mis-shaped key is an error that names the keys and the file.

Preprocessing is upstream's evaluation (gmberton/VPR-methods-evaluation): RGB in [0, 1],
ImageNet mean/std, sides rounded to multiples of 14. Upstream evaluates at the photo's full
resolution; here the short side defaults to 322 px (SALAD's training size; a 640 x 480 photo
becomes 434 x 322, 713 patches) so a photo's cost is bounded: 3.5 s per photo on 2 busy CPU
threads, 2 s to load the 872 MB file (``benchmarks/local_weights.py``). ``image_size``/``resize``
change that.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch

from geoguide.indices.descriptors.local_weights import load_into, read_state_dict
from geoguide.indices.descriptors.megaloc_model import (
    MEGALOC_OFFICIAL,
    MEGALOC_TINY,
    PATCH,
    MegaLoc,
    MegaLocSpec,
)
from geoguide.indices.descriptors.registry import register
from geoguide.indices.descriptors.torch_network import IMAGENET, LocalNetworkDescriptor, PixelNorm

ENV_VAR = "GEOGUIDE_MEGALOC_WEIGHTS"
HOW_TO_GET = (
    "on a connected machine download model.safetensors from https://huggingface.co/gberton/MegaLoc "
    "(or megaloc.torch from https://github.com/gmberton/MegaLoc/releases/tag/v1.0) and copy it here"
)
VARIANTS: dict[str, MegaLocSpec] = {"official": MEGALOC_OFFICIAL, "tiny": MEGALOC_TINY}
_LEGACY_PREFIX = "backbone.model."


def upgrade_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The v1.0 release's ``backbone.model.*`` keys as today's ``backbone.*``; others unchanged."""
    if not any(k.startswith(_LEGACY_PREFIX) for k in state):
        return state
    return {
        ("backbone." + k[len(_LEGACY_PREFIX) :] if k.startswith(_LEGACY_PREFIX) else k): v
        for k, v in state.items()
        if k != _LEGACY_PREFIX + "mask_token"
    }


@lru_cache(maxsize=2)
def load_megaloc(path: str, variant: str, device: str) -> MegaLoc:
    """The network with ``path``'s weights, cached per (file, variant, device)."""
    state = upgrade_legacy_keys(read_state_dict(Path(path), "megaloc"))
    spec = VARIANTS[variant]
    return load_into(lambda: MegaLoc(spec), state, source=f"megaloc: {path}").to(device)


@register
class MegaLocDescriptor(LocalNetworkDescriptor):
    name = "megaloc"
    # weights: the checkpoint file (.safetensors, .pth/.pt/.torch); None = $GEOGUIDE_MEGALOC_WEIGHTS.
    default_conf: ClassVar[dict[str, Any]] = {**LocalNetworkDescriptor.common_conf, "image_size": 322}
    multiple = PATCH
    env_var = ENV_VAR
    how_to_get = HOW_TO_GET
    variants = tuple(VARIANTS)

    @property
    def min_units(self) -> int:  # type: ignore[override]
        """Patches per side so that an extreme panorama still has more patches than clusters
        (SALAD's dustbin takes the surplus mass n - m): 9 x 9 = 81 > 64 for the official model."""
        return math.isqrt(VARIANTS[self.conf["variant"]].num_clusters) + 1

    @property
    def dim(self) -> int:
        return VARIANTS[self.conf["variant"]].feat_dim

    def _load(self, path: str, device: str) -> tuple[torch.nn.Module, PixelNorm]:
        return load_megaloc(path, self.conf["variant"], device), IMAGENET
