"""``amosnet``: AMOSNet (Chen et al., ICRA 2017) as VPR-Bench uses it, from the published Caffe model.

AMOSNet is one of the four VPR methods the paper compares: a CaffeNet trained to classify 2,543
places of the SPED dataset (webcams over months and seasons). VPR-Bench (Zaffar et al. 2021,
``VPR_Techniques/AMOSNet.py``) describes a photo by its ``conv5`` activations (after the in-place
ReLU) max-pooled over a spatial pyramid of 1 + 4 + 9 + 16 = 30 regions of the 13 x 13 map, 256 x 30
= 7,680 values. Why conv5 and not fc7: the convolutional map keeps where things are in the view,
which the pyramid turns into coarse layout, and it is what VPR-Bench evaluates; the
classification head (conv6, fc7_new, fc8_new) is trained for SPED's 2,543 places, not for the world.
The regions are VPR-Bench's own index ranges (they skip row and column 6 and 12 at the 2 x 2
level, and so on): copied, not "fixed", so descriptors match theirs.

The network (conv1..conv5 of CaffeNet: 11 x 11 / 4, LRN after pooling, grouped conv2/4/5, Caffe's
ceil-rounded max-pooling) is ours; the weights come from ``AmosNet.caffemodel`` read by our own
protobuf reader (``caffe_model.py``), never pycaffe. conv1..conv5 must be there with their
CaffeNet shapes and AMOSNet's head layers may be; any other layer is an error naming it.

Input as VPR-Bench feeds Caffe: the photo resized to 227 x 227 (aspect not kept), BGR in 0..255
minus ``amosnet_mean.npy`` (VPR-Bench ``VPR_Techniques/AmosNet/``; per channel (3,) or a
3 x 227 x 227 image, the two shapes Caffe's Transformer accepts). VPR-Bench compares descriptors
by L1 distance; here they are L2-normalised and compared by cosine, like every geoguide index.

Weights never downloaded: ``--descriptor-opt weights=FILE`` or ``$GEOGUIDE_AMOSNET_WEIGHTS``;
``mean=FILE`` (default: ``amosnet_mean.npy`` beside the weights).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geoguide.indices.descriptors.base import ModelLoadError
from geoguide.indices.descriptors.caffe_model import read_caffemodel
from geoguide.indices.descriptors.efficientnet_lite import load_state_dict_strict
from geoguide.indices.descriptors.registry import register
from geoguide.indices.descriptors.torch_network import LocalNetworkDescriptor, PixelNorm

ENV_VAR = "GEOGUIDE_AMOSNET_WEIGHTS"
HOW_TO_GET = (
    "on a connected machine get AmosNet.caffemodel and amosnet_mean.npy as VPR-Bench's "
    "VPR_Techniques/AmosNet/ReadMe.txt says (https://github.com/MubarizZaffar/VPR-Bench) and copy them here"
)
SIZE = 227
# name: (out, in / groups, kernel, stride, pad, groups)
CONVS = {"conv1": (96, 3, 11, 4, 0, 1), "conv2": (256, 48, 5, 1, 2, 2), "conv3": (384, 256, 3, 1, 1, 1),
         "conv4": (384, 192, 3, 1, 1, 2), "conv5": (256, 192, 3, 1, 1, 2)}
HEAD = frozenset({"conv6", "fc7_new", "fc8_new"})  # AMOSNet's classifier: in the file, not used
# VPR-Bench's pyramid over the 13 x 13 conv5 map: (rows, cols) slices, 1 + 4 + 9 + 16 regions.
_S2 = ((0, 6), (7, 12))
_S3 = ((0, 4), (5, 8), (9, 12))
_S4 = ((0, 3), (4, 6), (7, 9), (10, 12))
REGIONS = [((0, 13), (0, 13))] + [(r, c) for grid in (_S2, _S3, _S4) for r in grid for c in grid]


class AmosNet(nn.Module):
    """CaffeNet conv1..conv5 (RGB in, 0..255 minus the mean) -> the 7,680-d pyramid, L2-normalised."""

    def __init__(self, mean_rgb: np.ndarray):
        super().__init__()
        for name, (out, per_group, k, stride, pad, groups) in CONVS.items():
            setattr(self, name, nn.Conv2d(per_group * groups, out, k, stride=stride, padding=pad, groups=groups))
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # Caffe's LRN (alpha / n inside)
        self.register_buffer("mean", torch.from_numpy(np.ascontiguousarray(mean_rgb, np.float32)), persistent=False)

    @property
    def dim(self) -> int:
        return 256 * len(REGIONS)

    def conv5_map(self, x: torch.Tensor) -> torch.Tensor:
        pool = nn.functional.max_pool2d
        x = x - self.mean
        x = self.lrn(pool(torch.relu(self.conv1(x)), 3, 2, ceil_mode=True))
        x = self.lrn(pool(torch.relu(self.conv2(x)), 3, 2, ceil_mode=True))
        x = torch.relu(self.conv4(torch.relu(self.conv3(x))))
        return torch.relu(self.conv5(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.conv5_map(x)
        cells = [fmap[:, :, r0:r1, c0:c1].amax(dim=(2, 3)) for (r0, r1), (c0, c1) in REGIONS]
        return nn.functional.normalize(torch.stack(cells, dim=2).flatten(1), dim=-1)  # channel-major, as (256, 30)


def read_mean(path: Path) -> np.ndarray:
    """``amosnet_mean.npy`` (BGR) as an RGB array broadcastable over a 3 x 227 x 227 input."""
    try:
        mean = np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"amosnet: cannot read the mean {path} ({e}); {HOW_TO_GET}") from None
    mean = mean.reshape(mean.shape[1:]) if mean.ndim == 4 and mean.shape[0] == 1 else mean
    if mean.shape == (3,):
        mean = mean[:, None, None]
    elif mean.shape != (3, SIZE, SIZE):
        raise ModelLoadError(f"amosnet: the mean {path} has shape {mean.shape}; Caffe takes (3,) or (3, {SIZE}, "
                             f"{SIZE}) for this network")
    return mean[::-1].copy()  # BGR -> RGB


def state_from_caffe(path: Path) -> dict[str, torch.Tensor]:
    """conv1..conv5 of the file as a state dict; conv1 takes RGB (Caffe's BGR columns reversed)."""
    layers = read_caffemodel(path)
    unexpected = sorted(set(layers) - set(CONVS) - HEAD)
    if unexpected:
        raise ModelLoadError(f"amosnet: {path} has layers AMOSNet does not: {', '.join(unexpected)} (another network?)")
    state: dict[str, torch.Tensor] = {}
    for name in CONVS:
        if name not in layers:
            continue  # named by load_state_dict_strict as missing
        blobs = layers[name][1]
        state[f"{name}.weight"] = torch.from_numpy(blobs[0].copy())
        if len(blobs) > 1:
            state[f"{name}.bias"] = torch.from_numpy(blobs[1].reshape(-1).copy())
    if "conv1.weight" in state and state["conv1.weight"].ndim == 4:
        state["conv1.weight"] = state["conv1.weight"].flip(1).contiguous()
    return state


@lru_cache(maxsize=2)
def load_amosnet(path: str, mean: str | None, device: str) -> AmosNet:
    weights = Path(path)
    mean_path = Path(mean).expanduser() if mean else weights.with_name("amosnet_mean.npy")
    if not mean_path.is_file():
        raise ModelLoadError(f"amosnet: no mean file {mean_path} (pass --descriptor-opt mean=FILE); {HOW_TO_GET}")
    net = AmosNet(read_mean(mean_path))
    load_state_dict_strict(net, state_from_caffe(weights), source=f"amosnet: {path}")
    return net.float().eval().to(device)


@register
class AmosNetDescriptor(LocalNetworkDescriptor):
    name = "amosnet"
    # weights: AmosNet.caffemodel; None = $GEOGUIDE_AMOSNET_WEIGHTS. mean: amosnet_mean.npy (None: beside it).
    default_conf: ClassVar[dict[str, Any]] = {**LocalNetworkDescriptor.common_conf, "mean": None, "resize": "square",
                                              "image_size": SIZE, "batch_size": 16}
    multiple = 1
    env_var = ENV_VAR
    how_to_get = HOW_TO_GET
    variants = ("official",)

    def __init__(self, conf: dict[str, Any] | None = None):
        merged = {**self.default_conf, **(conf or {})}
        if merged["resize"] != "square" or int(merged["image_size"]) != SIZE:
            raise ValueError(f"amosnet: the pyramid's regions are those of a {SIZE} x {SIZE} input (resize=square, "
                             f"image_size={SIZE}), as VPR-Bench feeds Caffe")
        super().__init__(conf)

    def _load(self, path: str, device: str) -> tuple[nn.Module, PixelNorm]:
        return load_amosnet(path, self.conf["mean"], device), PixelNorm(1.0, (0.0, 0.0, 0.0))
