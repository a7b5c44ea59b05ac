"""``clip``: CLIP image embeddings (Radford et al. 2021) from the transformers vision tower.

Img2Loc and G3 retrieve their geo-neighbours with CLIP ViT-L/14 image embeddings: trained on web
image-text pairs, CLIP encodes *what kind of place* a photo shows (architecture, vegetation,
signage, road markings) rather than the exact view, so it recalls the right region where local
descriptors find nothing to match.

The weights are never downloaded, whatever ``HF_HUB_OFFLINE`` says: a build must not stall on (or
quietly depend on) the network. The ``model`` option is either a local ``save_pretrained`` folder
(``config.json``, ``model.safetensors``, ideally ``preprocessor_config.json``) or a hub id that is
already in the local Hugging Face cache (``$HF_HUB_CACHE``, filled by ``huggingface-cli download``
on a connected machine). Anything else fails when the descriptor is constructed, before any photo
is read, with a ``WeightsNotFoundError`` saying where to put the weights; transformers is only ever
called with ``local_files_only=True`` on the resolved folder.

Preprocessing is done here with PIL/numpy (resize shortest side, centre crop, normalise) from the
checkpoint's ``preprocessor_config.json``: transformers' default CLIP processor wants torchvision,
which geoguide does not install. The unit test checks it against transformers' PIL processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from geoguide.core.availability import Availability, local_weights
from geoguide.indices.descriptors.base import Descriptor, ModelLoadError, WeightsNotFoundError, l2_normalize
from geoguide.indices.descriptors.pca import OptionalPCA
from geoguide.indices.descriptors.registry import register

# OpenAI CLIP's normalisation, used when a checkpoint ships no preprocessor config.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize, centre-crop, scale to [0, 1], normalise: CLIPImageProcessor's steps and rounding."""

    resize: int | tuple[int, int]  # int: the shortest side becomes this; (w, h): exact size
    crop_height: int
    crop_width: int
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)
    center_crop: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any], image_size: int) -> ClipPreprocess:
        """From a ``preprocessor_config.json`` dict; missing keys default to the model's input size.

        Sizes are ints in old configs and ``{"shortest_edge": s}`` or ``{"height", "width"}`` dicts
        in new ones.
        """
        size = cfg.get("size", image_size)
        if isinstance(size, dict):
            size = (
                size["shortest_edge"]
                if "shortest_edge" in size
                else (int(size["width"]), int(size["height"]))
            )
        crop = cfg.get("crop_size", image_size)
        crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        return cls(
            resize=size if isinstance(size, tuple) else int(size),
            crop_height=int(crop_hw[0]),
            crop_width=int(crop_hw[1]),
            mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
            resample=int(cfg.get("resample", Image.Resampling.BICUBIC)),
            center_crop=bool(cfg.get("do_center_crop", True)),
        )

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._one(img) for img in images]))

    def _one(self, img: Image.Image) -> np.ndarray:
        img = img if img.mode == "RGB" else img.convert("RGB")
        w, h = img.size
        if isinstance(self.resize, tuple):
            size = self.resize
        else:  # same rounding as transformers: the short side becomes exactly ``resize``
            s = self.resize
            size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        img = img.resize(size, Image.Resampling(self.resample))
        if self.center_crop:
            top, left = (size[1] - self.crop_height) // 2, (size[0] - self.crop_width) // 2
            img = img.crop((left, top, left + self.crop_width, top + self.crop_height))
        x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x.transpose(2, 0, 1)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
DESCRIPTOR_OPTION = "--descriptor-opt model=/path/to/folder (conf {'model': '/path/to/folder'})"


def resolve_clip_weights(model: str, pass_it: str = DESCRIPTOR_OPTION, who: str = "clip") -> Path:
    """The local folder holding ``model``'s weights, or ``WeightsNotFoundError``; never the network.

    ``model`` is a folder, or a hub id looked up in the local Hugging Face cache only. ``pass_it``
    and ``who`` word the error for the caller (the descriptor's option, a backend's spec).
    """
    where = ("geoguide never downloads weights: put a save_pretrained copy of e.g. openai/clip-vit-large-patch14 "
              f"(config.json, model.safetensors, preprocessor_config.json) in a folder and pass it with {pass_it}")
    path = Path(model).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise WeightsNotFoundError(f"{who}: model={model!r} is a file; it must be the folder holding the model; {where}")
    elif path.is_absolute() or model.startswith((".", "~")):
        raise WeightsNotFoundError(f"{who}: model={model!r}: no such folder; {where}")
    else:
        from huggingface_hub import constants, try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(model, "config.json")
        except ValueError:  # not a valid hub id either
            cached = None
        if not isinstance(cached, str):
            raise WeightsNotFoundError(
                f"{who}: model={model!r} is neither a local folder nor in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}); {where}, or fill the cache on a connected machine "
                f"(huggingface-cli download {model})"
            )
        folder = Path(cached).parent
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"{who}: {folder} holds no config.json, so it is not a saved model; {where}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise WeightsNotFoundError(f"{who}: {folder} has no weights file ({', '.join(WEIGHT_FILES)}); {where}")
    return folder


@lru_cache(maxsize=2)
def load_clip_vision(folder: str, device: str) -> tuple[torch.nn.Module, ClipPreprocess]:
    """The vision tower + projection and its preprocessing, cached per (folder, device).

    ``folder`` is what ``resolve_clip_weights`` returned. Accepts a full CLIP checkpoint (e.g.
    ``openai/clip-vit-large-patch14``) or a vision-only one.
    """
    from geoguide.core.extras import require

    require("transformers", "hf", "the clip descriptor")
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # A full CLIP checkpoint carries the text tower too; its "unexpected keys" report is noise.
    hf_logging.set_verbosity_error()
    try:
        net, info = CLIPVisionModelWithProjection.from_pretrained(
            folder, local_files_only=True, output_loading_info=True
        )
    except Exception as e:  # OSError, ValueError, SafetensorError...: all mean "these files are unusable"
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelLoadError(
            f"clip: cannot load CLIP vision weights from {folder} ({type(e).__name__}: {first}); "
            "it must be a save_pretrained copy (config.json, model.safetensors, preprocessor_config.json) "
            "of a CLIP model such as openai/clip-vit-large-patch14"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        # Missing weights would be silently random: refuse rather than return noise embeddings.
        raise ModelLoadError(
            f"clip: {folder} lacks {len(info['missing_keys'])} vision weights, e.g. {sorted(info['missing_keys'])[:3]}"
        )
    return net.eval().to(device), clip_preprocess(folder, int(net.config.image_size))


def clip_preprocess(folder: str, image_size: int) -> ClipPreprocess:
    """The checkpoint's ``preprocessor_config.json`` as a ``ClipPreprocess``; without one, OpenAI's
    defaults at the model's input size."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        cfg, _ = ImageProcessingMixin.get_image_processor_dict(folder, local_files_only=True)
    except (OSError, ValueError):
        cfg = {}
    return ClipPreprocess.from_config(cfg, image_size)


@register
class CLIPDescriptor(Descriptor):
    name = "clip"
    default_conf: ClassVar[dict[str, Any]] = {
        # Local save_pretrained folder, or a hub id already in the local HF cache (never downloaded);
        # the Img2Loc / G3 retrieval backbone by default.
        "model": "openai/clip-vit-large-patch14",
        # PCA on the reference set: None = off (raw projection_dim embedding, nothing to fit).
        "pca_dim": None,
        "whiten": True,
        # Images per forward pass.
        "batch_size": 32,
        # "cuda", "cpu", ...; None = cuda when available.
        "device": None,
    }
    # The builder reads this to decide whether to call ``fit``; the instance refines it (PCA or not).
    trainable: ClassVar[bool] = True
    runtime_options: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})

    @classmethod
    def availability(cls) -> Availability:
        return local_weights(option="--descriptor-opt model=FOLDER", env_var=None, hub_id=cls.default_conf["model"],
                             check=resolve_clip_weights, how_to_get=f"on a connected machine: huggingface-cli "
                             f"download {cls.default_conf['model']} (or save_pretrained it), then copy it here")

    def __init__(self, conf: dict[str, Any] | None = None):
        super().__init__(conf)
        c = self.conf
        if int(c["batch_size"]) < 1:
            raise ValueError(f"clip: batch_size must be >= 1, got {c['batch_size']}")
        if c["pca_dim"] is not None and int(c["pca_dim"]) < 1:
            raise ValueError(f"clip: pca_dim must be None or >= 1, got {c['pca_dim']}")
        self._pca = OptionalPCA("clip", c["pca_dim"], whiten=bool(c["whiten"]))
        self.trainable = self._pca.enabled  # type: ignore[misc]  # per-instance refinement
        # Here, not on first use: a missing model must stop a build before it reads any photo.
        self._weights = resolve_clip_weights(str(c["model"]))

    def _net(self) -> tuple[torch.nn.Module, ClipPreprocess]:
        device = self.conf["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        return load_clip_vision(str(self._weights), device)

    @property
    def embed_dim(self) -> int:
        return int(self._net()[0].config.projection_dim)

    @property
    def dim(self) -> int:
        return self._pca.dim(self.embed_dim)

    @property
    def is_fitted(self) -> bool:
        return self._pca.is_fitted

    def _embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> (n, projection_dim) L2-normalised CLIP image embeddings, before any PCA."""
        net, preprocess = self._net()
        if not images:
            return np.zeros((0, self.embed_dim), np.float32)
        device = next(net.parameters()).device
        bs = int(self.conf["batch_size"])
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), bs):
                x = preprocess(images[start : start + bs]).to(device)
                out.append(net(pixel_values=x).image_embeds.float().cpu().numpy())
        return l2_normalize(np.concatenate(out))

    def fit(self, images: Sequence[Image.Image]) -> None:
        self._pca.fit(lambda: self._embed(images))

    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        self._pca.require_fitted()
        return self._pca.transform(self._embed(images))

    def state(self) -> dict[str, np.ndarray]:
        return self._pca.state()

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._pca.load_state(state)
