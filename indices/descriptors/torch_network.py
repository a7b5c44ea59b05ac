"""Descriptors that run a published torch network from a checkpoint the user has on disk.

``megaloc`` (a ViT on 14-px patches) and ``netvlad`` (VGG16, stride 16) share everything but the
network: the ``weights`` option (else an environment variable), a test-only ``variant`` with the
official key names, the input size, batching and threads. ``LocalNetworkDescriptor`` is that
common part; a subclass names its network's loader, pixel normalisation and size multiple.

Each photo keeps its aspect ratio (short or long side at ``image_size``, rounded to the network's
multiple so nothing is padded); photos of equal input size form dense batches. Resizing is PIL's
antialiased bilinear on 8-bit RGB: a photo is resampled once, before normalisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from geoguide.core.availability import Availability, local_weights
from geoguide.indices.descriptors.base import Descriptor
from geoguide.indices.descriptors.local_weights import file_identity, resolve_weights_file

RESIZE_MODES = ("short", "long", "square")


@dataclass(frozen=True)
class PixelNorm:
    """How a checkpoint wants its pixels: ``(x * scale - mean) / std`` of 0..255 RGB."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


IMAGENET = PixelNorm(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def input_size(
    width: int, height: int, image_size: int, resize: str, multiple: int, min_units: int = 1
) -> tuple[int, int]:
    """(width, height) fed to the network: sides are multiples of ``multiple``, at least ``min_units`` of them.

    ``short``: the short side becomes ``image_size`` with the long side capped at twice that (so a
    panorama does not explode the token count); ``long``: the long side becomes ``image_size``;
    ``square``: ``image_size`` x ``image_size`` regardless of the aspect ratio.
    """
    if resize == "square":
        sides = (image_size, image_size)
    else:
        long_side, short_side = max(width, height), min(width, height)
        scale = image_size / (short_side if resize == "short" else long_side)
        if resize == "short":
            scale = min(scale, 2 * image_size / long_side)
        sides = (width * scale, height * scale)
    w, h = (max(min_units, round(s / multiple)) * multiple for s in sides)
    return w, h


def batches_by_size(
    images: Sequence[Image.Image], sizes: Sequence[tuple[int, int]], batch_size: int
) -> Iterator[tuple[list[int], tuple[int, int]]]:
    """(indices, size) chunks of at most ``batch_size`` photos that share one input size."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, size in enumerate(sizes):
        groups[size].append(i)
    for size, idx in groups.items():
        for start in range(0, len(idx), batch_size):
            yield idx[start : start + batch_size], size


def to_tensor(images: Sequence[Image.Image], size: tuple[int, int], pixels: PixelNorm) -> torch.Tensor:
    """NCHW float32: the photos resized to ``size`` and normalised by ``pixels``."""
    rgb = (img if img.mode == "RGB" else img.convert("RGB") for img in images)
    arr = np.stack([np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) for img in rgb])
    arr = (arr * np.float32(pixels.scale) - np.asarray(pixels.mean, np.float32)) / np.asarray(pixels.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (process-global: restored after)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class LocalNetworkDescriptor(Descriptor):
    """A torch network from a local checkpoint, loaded at construction (so a wrong file stops a
    build before it reads any photo); ``extract`` returns its L2-normalised outputs."""

    multiple: ClassVar[int]  # input sides are multiples of this (patch size, network stride)
    env_var: ClassVar[str]  # where the weights file is looked up when the option is not set
    how_to_get: ClassVar[str]  # the sentence that says where the official file is published
    weights_form: ClassVar[str] = "FILE"  # what the weights option names ("DIR" for a model folder)
    variants: ClassVar[tuple[str, ...]] = ("official", "tiny")
    min_units: int = 1  # fewest ``multiple``s per input side (an instance may raise it)
    common_conf: ClassVar[dict[str, Any]] = {
        "weights": None,
        # "short" (aspect kept, short side = image_size, long side <= 2x), "long" or "square".
        "resize": "short",
        "image_size": 224,
        # "official" (the published network); "tiny" = same key names, small shapes: tests only.
        "variant": "official",
        "batch_size": 8,
        # torch intra-op threads during extract (None = leave torch's setting alone).
        "num_threads": None,
        # "cuda", "cpu", ...; None = cuda when available.
        "device": None,
    }
    runtime_options: ClassVar[frozenset[str]] = frozenset({"batch_size", "num_threads", "device"})

    @classmethod
    def resolve(cls, option: str | None) -> Path:
        """The weights file the ``weights`` option (else ``$env_var``) names, or ``WeightsNotFoundError``."""
        return resolve_weights_file(cls.name, option, cls.env_var, cls.how_to_get)

    @classmethod
    def availability(cls) -> Availability:
        """``geoguide models``: the weights file from ``$env_var`` (the option is per build)."""
        return local_weights(option=f"--descriptor-opt weights={cls.weights_form}", env_var=cls.env_var, hub_id=None,
                             check=cls.resolve, how_to_get=cls.how_to_get)

    def __init__(self, conf: dict[str, Any] | None = None):
        super().__init__(conf)
        c = self.conf
        if c["resize"] not in RESIZE_MODES:
            raise ValueError(f"{self.name}: resize must be one of {RESIZE_MODES}, got {c['resize']!r}")
        if c["variant"] not in self.variants:
            raise ValueError(f"{self.name}: variant must be one of {self.variants}, got {c['variant']!r}")
        if int(c["image_size"]) < self.multiple or int(c["batch_size"]) < 1:
            raise ValueError(f"{self.name}: image_size must be >= {self.multiple} and batch_size >= 1")
        path = self.resolve(c["weights"])
        self._weights_id = file_identity(path)
        self._device = c["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        self._net, self._pixels = self._load(str(path.resolve()), self._device)

    def fingerprint(self) -> str:
        """Options that change the vectors and the weights file's content, not its path.

        The file may come from an environment variable, which the options do not show, or move;
        what must match between an index and its queries is the checkpoint itself.
        """
        conf = {k: v for k, v in self.conf.items() if k not in self.runtime_options and k != "weights"}
        blob = json.dumps({"name": self.name, "conf": conf, "weights": self._weights_id}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def dim(self) -> int:
        """The loaded network's output length."""
        return self._net.dim

    @abstractmethod
    def _load(self, path: str, device: str) -> tuple[nn.Module, PixelNorm]:
        """The network with ``path``'s weights on ``device`` (cached by the subclass) and its pixel norm."""

    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        c = self.conf
        sizes = [input_size(*img.size, int(c["image_size"]), c["resize"], self.multiple, self.min_units)
                 for img in images]
        with intra_op_threads(c["num_threads"]), torch.inference_mode():
            for idx, size in batches_by_size(images, sizes, int(c["batch_size"])):
                x = to_tensor([images[i] for i in idx], size, self._pixels)
                out[idx] = self._net(x.to(self._device)).float().cpu().numpy()
        return out
