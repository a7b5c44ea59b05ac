"""``netvlad``: VGG16 + NetVLAD descriptors from a Pittsburgh-trained checkpoint on local disk.

NetVLAD is one of the four VPR methods the paper compares, and the retrieval that hloc, COLMAP-era
pipelines and most VPR baselines still ship. The network is ``netvlad_model.NetVLAD``; this file
reads the two released checkpoint families into it:

- pytorch-NetVlad's ``checkpoint.pth.tar`` (Nanne, VGG16 trained on Pittsburgh 30k, R@1 85.2):
  any torch or safetensors file with ``encoder.*``/``pool.*`` keys (a DataParallel
  ``encoder.module.*`` is accepted). Input: RGB in [0, 1] with ImageNet mean/std. 32768-d.
- the authors' MatConvNet checkpoints (``Pitts30K_struct.mat``, ``TokyoTM_struct.mat``: the files
  hloc and VPR-methods-evaluation download), converted exactly as hloc's ``netvlad.py`` does
  (conv kernels S x S x IN x OUT -> OUT x IN x S x S, centres stored negated, the PCA-whitening
  layer 33), with the whitening's input columns reordered from MatConvNet's dimension-major to
  this layer's cluster-major VLAD layout. Input: RGB in 0..255 minus the file's average colour.
  4096-d when whitened (the default for these files), 32768-d with ``whiten=false``.

Weights are never downloaded: ``--descriptor-opt weights=/path/to/file`` or
``$GEOGUIDE_NETVLAD_WEIGHTS``. A missing, unexpected or mis-shaped key is an error naming the keys
and the file. Photos keep their aspect ratio with the long side at 640 px by default (the
Pittsburgh images' own 640 x 480), rounded to the network's stride of 16: VGG16 at that size is
the expensive part, 5.9 s per photo on 2 busy CPU threads (``benchmarks/local_weights.py``);
``image_size=320`` costs a quarter.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geoguide.indices.descriptors.base import ModelLoadError
from geoguide.indices.descriptors.local_weights import load_into, read_state_dict
from geoguide.indices.descriptors.netvlad_model import (
    NETVLAD_OFFICIAL,
    NETVLAD_TINY,
    STRIDE,
    NetVLAD,
    NetVLADSpec,
    vgg16_conv5_3,
)
from geoguide.indices.descriptors.registry import register
from geoguide.indices.descriptors.torch_network import IMAGENET, LocalNetworkDescriptor, PixelNorm

ENV_VAR = "GEOGUIDE_NETVLAD_WEIGHTS"
HOW_TO_GET = (
    "on a connected machine download Pitts30K_struct.mat from https://cvg-data.inf.ethz.ch/hloc/netvlad/ "
    "(the authors' MatConvNet weights, 4096-d whitened) or pytorch-NetVlad's checkpoint.pth.tar "
    "(linked from https://github.com/Nanne/pytorch-NetVlad) and copy it here"
)
VARIANTS: dict[str, NetVLADSpec] = {"official": NETVLAD_OFFICIAL, "tiny": NETVLAD_TINY}
VLAD_LAYER, WHITEN_LAYER = 30, 33  # indices in the MatConvNet struct's layer list (hloc's)


def state_from_matconvnet(
    path: Path, spec: NetVLADSpec, whiten: bool | None
) -> tuple[dict[str, torch.Tensor], PixelNorm]:
    """A MatConvNet ``*_struct.mat`` as this module's state dict (+ its pixel normalisation).

    ``whiten``: None = convert the whitening layer when the file has one, True = it must.
    """
    from scipy.io import loadmat

    try:
        net = loadmat(path, struct_as_record=False, squeeze_me=True)["net"]
        layers, average = list(net.layers), net.meta.normalization.averageImage
        mean = tuple(float(v) for v in np.asarray(average, np.float64).reshape(-1, 3)[0])
        with torch.device("meta"):  # only to walk its layer indices; the weights come from the file
            encoder = vgg16_conv5_3(spec.layout)
        state = {}
        for i, module in enumerate(encoder):
            if isinstance(module, nn.Conv2d):
                kernel, bias = layers[i].weights
                state[f"encoder.{i}.weight"] = torch.tensor(kernel).float().permute(3, 2, 0, 1)
                state[f"encoder.{i}.bias"] = torch.tensor(bias).float().reshape(-1)
        score, centres = layers[VLAD_LAYER].weights  # D x K each, centres negated
        state["pool.conv.weight"] = torch.tensor(score).float().t()[:, :, None, None]
        state["pool.centroids"] = -torch.tensor(centres).float().t()
        if whiten is True and len(layers) <= WHITEN_LAYER:
            raise ValueError(f"whiten=true but the file has {len(layers)} layers, no whitening at {WHITEN_LAYER}")
        if whiten is not False and len(layers) > WHITEN_LAYER:
            w, b = layers[WHITEN_LAYER].weights  # 1 x 1 x (D*K) x OUT, squeezed to (D*K) x OUT
            w = torch.tensor(w).float().reshape(-1, np.shape(w)[-1]).t()
            d, k = state["pool.centroids"].shape[1], state["pool.centroids"].shape[0]
            state["whiten.weight"] = w.reshape(-1, d, k).transpose(1, 2).reshape(w.shape[0], k * d)
            state["whiten.bias"] = torch.tensor(b).float().reshape(-1)
    except Exception as e:  # not a .mat, another network's struct, a truncated file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ModelLoadError(
            f"netvlad: {path} is not a usable MatConvNet NetVLAD struct ({type(e).__name__}: {first}); "
            "expected net.layers with VGG16 convs, the NetVLAD layer at 30 and whitening at 33, "
            "as in Pitts30K_struct.mat"
        ) from None
    return state, PixelNorm(1.0, mean)


def state_from_torch(path: Path) -> dict[str, torch.Tensor]:
    """pytorch-NetVlad's state dict, with a DataParallel ``.module`` level removed."""
    state = read_state_dict(path, "netvlad")
    state = {k.replace("encoder.module.", "encoder.").replace("pool.module.", "pool."): v for k, v in state.items()}
    if "pool.conv.bias" in state:
        raise ModelLoadError(
            f"netvlad: {path} was trained with --vladv2 (its soft-assignment has a bias, "
            "pool.conv.bias); only the default vladv1 checkpoints are supported"
        )
    return state


@lru_cache(maxsize=2)
def load_netvlad(path: str, variant: str, whiten: bool | None, device: str) -> tuple[NetVLAD, PixelNorm]:
    """The network with ``path``'s weights and its pixel normalisation, cached per arguments."""
    spec, file = VARIANTS[variant], Path(path)
    if file.suffix == ".mat":
        state, norm = state_from_matconvnet(file, spec, whiten)
    else:
        if whiten:
            raise ModelLoadError(
                f"netvlad: whiten=true but {path} is a PyTorch checkpoint, which has no PCA-whitening "
                "layer (only the MatConvNet .mat files do); drop the option for 32768-d descriptors"
            )
        state, norm = state_from_torch(file), IMAGENET
    has_whitening = "whiten.weight" in state
    net = load_into(lambda: NetVLAD(spec, whiten=has_whitening), state, source=f"netvlad: {path}")
    return net.to(device), norm


@register
class NetVLADDescriptor(LocalNetworkDescriptor):
    name = "netvlad"
    # weights: a MatConvNet *_struct.mat or pytorch-NetVlad torch file; None = $GEOGUIDE_NETVLAD_WEIGHTS.
    default_conf: ClassVar[dict[str, Any]] = {
        **LocalNetworkDescriptor.common_conf,
        # PCA-whitening to 4096-d: None = when the file has it (.mat), true = require it, false = 32768-d.
        "whiten": None,
        "resize": "long",
        "image_size": 640,
        "batch_size": 4,
    }
    multiple = STRIDE
    env_var = ENV_VAR
    how_to_get = HOW_TO_GET
    variants = tuple(VARIANTS)

    def _load(self, path: str, device: str) -> tuple[nn.Module, PixelNorm]:
        if self.conf["whiten"] not in (None, True, False):
            raise ValueError(f"netvlad: whiten must be null, true or false, got {self.conf['whiten']!r}")
        return load_netvlad(path, self.conf["variant"], self.conf["whiten"], device)
