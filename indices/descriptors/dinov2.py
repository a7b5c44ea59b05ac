"""``dinov2``: DINOv2 image features (Oquab et al. 2023), ViT-S/B/L/g, from a local folder.

DINOv2 is one of the two foundation models the paper compares with the VPR methods (and the
backbone inside MegaLoc and AnyLoc): self-supervised on 142M curated images, its features
describe a scene without any place-recognition training. The network is transformers'
``Dinov2Model``, built from the folder's ``config.json`` (which fixes S/B/L/g: hidden size,
depth, heads, the giant's SwiGLU MLP) and filled key for key from its ``model.safetensors`` (or
``pytorch_model.bin``) through ``local_weights.load_into``: a missing, unexpected or mis-shaped
key is an error naming it (``from_pretrained`` would only warn and leave random weights). A
classification checkpoint (``dinov2.*`` keys and a ``classifier``) loads its backbone.

Weights are never downloaded: ``--descriptor-opt weights=DIR`` (the folder, or its weights file)
or ``$GEOGUIDE_DINOV2_WEIGHTS``. Two global descriptors (``pooling``):
- ``cls``: the final-normed CLS token, ``Dinov2Model``'s own ``pooler_output``;
- ``gem``: GeM (p = ``gem_p``, 3) over the final-normed patch tokens (register tokens left out),
  clamped at 1e-6 first as AnyLoc and GeM's authors do, so only positive evidence pools.
Both L2-normalised; the dimension is the model's hidden size (384 / 768 / 1024 / 1536).

Input: RGB in [0, 1] with the folder's ``preprocessor_config.json`` mean/std (ImageNet's when
absent), aspect kept with the short side at ``image_size`` (224, the pretraining crop size),
sides rounded to the 14-px patch; position embeddings are interpolated by the model for any size.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from geoguide.core.errors import first_line
from geoguide.indices.descriptors.base import ModelLoadError, WeightsNotFoundError
from geoguide.indices.descriptors.local_weights import load_into, read_state_dict, where_weights_go
from geoguide.indices.descriptors.registry import register
from geoguide.indices.descriptors.torch_network import IMAGENET, LocalNetworkDescriptor, PixelNorm

ENV_VAR = "GEOGUIDE_DINOV2_WEIGHTS"
HOW_TO_GET = (
    "on a connected machine run `huggingface-cli download facebook/dinov2-base --local-dir DIR` (or "
    "dinov2-small, -large, -giant, or a -with-registers model) and copy DIR here"
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
POOLINGS = ("cls", "gem")
# The published files' attention keys (transformers 4's module names) -> transformers 5's, which
# reads the same files through a conversion table: applied only where the model lacks the key.
PUBLISHED_NAMES = (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
                   ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"))
# config.json's model_type -> transformers' (config, model) classes: plain DINOv2 and "with registers"
MODELS = {"dinov2": ("Dinov2Config", "Dinov2Model"),
          "dinov2_with_registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel")}


def weights_in(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``...ForImageClassification`` checkpoint's backbone (``dinov2.*`` / ``dinov2_with_registers.*``),
    its classifier dropped."""
    for prefix in ("dinov2.", "dinov2_with_registers."):
        if state and all(k.startswith((prefix, "classifier.")) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def split_swiglu(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """ViT-g's published SwiGLU MLP (``mlp.weights_in``: gate and up stacked; ``mlp.weights_out``)
    as transformers 5's ``gate_proj`` / ``up_proj`` / ``down_proj``, halves in that order, as its
    own conversion table does; only where the model has the new names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        gate = key.replace("mlp.weights_in.", "mlp.gate_proj.")
        if "mlp.weights_in." in key and gate in own and value.shape[0] % 2 == 0:
            out[gate], out[key.replace("mlp.weights_in.", "mlp.up_proj.")] = value.chunk(2, dim=0)
        elif "mlp.weights_out." in key and (down := key.replace("mlp.weights_out.", "mlp.down_proj.")) in own:
            out[down] = value
        else:
            out[key] = value
    return out


class Dinov2Global(nn.Module):
    """``Dinov2Model`` -> one L2-normalised vector per photo (CLS, or GeM of the patch tokens)."""

    def __init__(self, model: nn.Module, pooling: str, gem_p: float):
        super().__init__()
        self.model, self.pooling, self.gem_p = model, pooling, float(gem_p)
        self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)  # CLS, registers

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=pixels).last_hidden_state  # final layer norm applied
        if self.pooling == "cls":
            out = tokens[:, 0]
        else:
            out = tokens[:, self.skip:].clamp(min=1e-6).pow(self.gem_p).mean(dim=1).pow(1.0 / self.gem_p)
        return nn.functional.normalize(out, dim=-1)


@lru_cache(maxsize=2)
def load_dinov2(path: str, pooling: str, gem_p: float, device: str) -> tuple[Dinov2Global, PixelNorm]:
    """The network in ``path``'s folder and its pixel normalisation, cached per arguments."""
    from geoguide.core.extras import require

    transformers = require("transformers", "hf", "the dinov2 descriptor")
    file = Path(path)
    folder = file.parent
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except Exception as e:  # unreadable, not JSON
        raise ModelLoadError(f"dinov2: cannot read {folder / 'config.json'} ({type(e).__name__}: "
                             f"{first_line(e)[:200]}); the weights folder must hold "
                             "the model's config.json beside its weights") from None
    if model_type not in MODELS:
        raise ModelLoadError(f"dinov2: {folder / 'config.json'} describes a {model_type!r} model, not one of "
                             f"{', '.join(MODELS)}")
    config_cls, model_cls = (getattr(transformers, n) for n in MODELS[model_type])
    config = config_cls.from_json_file(str(folder / "config.json"))
    state = backbone_state(read_state_dict(file, "dinov2"))
    model = load_into(lambda: model_cls(config), state, source=f"dinov2: {file}", renames=PUBLISHED_NAMES,
                      adapt=split_swiglu)
    pixels = IMAGENET
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        pixels = PixelNorm(1 / 255, tuple(cfg.get("image_mean", IMAGENET.mean)), tuple(cfg.get("image_std", IMAGENET.std)))
    return Dinov2Global(model, pooling, gem_p).to(device).eval(), pixels


@register
class Dinov2Descriptor(LocalNetworkDescriptor):
    name = "dinov2"
    # weights: the model's folder (config.json + model.safetensors) or its weights file;
    # None = $GEOGUIDE_DINOV2_WEIGHTS.
    default_conf: ClassVar[dict[str, Any]] = {
        **LocalNetworkDescriptor.common_conf,
        "pooling": "cls",  # "cls" (the model's own global token) or "gem" (GeM of the patch tokens)
        "gem_p": 3.0,
        "image_size": 224,
    }
    multiple = 14
    env_var = ENV_VAR
    how_to_get = HOW_TO_GET
    variants = ("official",)  # the folder's config.json says which ViT it is
    weights_form = "DIR"

    @classmethod
    def resolve(cls, option: str | None) -> Path:
        """The weights file of the folder the option (else ``$GEOGUIDE_DINOV2_WEIGHTS``) names; a
        weights file is accepted too when its ``config.json`` lies beside it."""
        import os

        where = where_weights_go(ENV_VAR, HOW_TO_GET, "the folder", "DIR")
        value = option or os.environ.get(ENV_VAR)
        if not value:
            raise WeightsNotFoundError(f"dinov2: no weights given; {where}")
        path = Path(value).expanduser()
        file = weights_in(path) if path.is_dir() else (path if path.is_file() else None)
        if file is None:
            found = "no such folder" if not path.exists() else f"no {' or '.join(WEIGHT_FILES)} in it"
            raise WeightsNotFoundError(f"dinov2: {value}: {found}; {where}")
        if not (file.parent / "config.json").is_file():
            raise WeightsNotFoundError(f"dinov2: {file.parent} has no config.json beside {file.name}; {where}")
        return file

    def __init__(self, conf: dict[str, Any] | None = None):
        merged = {**self.default_conf, **(conf or {})}
        if merged["pooling"] not in POOLINGS:
            raise ValueError(f"dinov2: pooling must be one of {POOLINGS}, got {merged['pooling']!r}")
        if float(merged["gem_p"]) <= 0:
            raise ValueError(f"dinov2: gem_p must be > 0, got {merged['gem_p']!r}")
        super().__init__(conf)

    def _load(self, path: str, device: str) -> tuple[nn.Module, PixelNorm]:
        return load_dinov2(path, self.conf["pooling"], float(self.conf["gem_p"]), device)
