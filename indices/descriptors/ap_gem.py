"""``ap-gem``: ResNet-101 + GeM + whitening trained with the AP loss (Revaud et al., ICCV 2019).

AP-GeM ("Learning with Average Precision", naver/deep-image-retrieval, "dirtorch") is one of the
four VPR methods the paper compares. Its network, re-implemented here key for key with the
published ``Resnet-101-AP-GeM.pt`` (read at naver/deep-image-retrieval 610247f): dirtorch's
``ResNet_RMAC`` = a ResNet (7x7 stem, max-pool, Bottleneck blocks with the stride on the 3x3
conv, 1x1-conv + BN downsample) -> GeM pooling with a learned power (``adpool.p``, init 3) ->
a 2048 -> 2048 linear layer (``fc``) -> L2 norm. The ResNet-50 file (``Resnet50-AP-GeM.pt``)
loads too: the checkpoint's ``model_options.arch`` says which.

The checkpoint (never downloaded: ``--descriptor-opt weights=FILE`` or
``$GEOGUIDE_APGEM_WEIGHTS``) is a dict: ``model_options`` (arch, pooling, out_dim, ...),
``state_dict`` (``module.``-prefixed: it was saved from DataParallel), ``preprocess`` (mean,
std) and ``pca``: {"Landmarks_clean": a scikit-learn ``PCA``}, the whitening learned on
Landmarks-clean that the authors apply at evaluation. It is read with ``torch.load(weights_only=
True)``: nothing in it is run; the PCA comes back as ``PCAState`` (its fields only: mean_,
components_, explained_variance_, whiten), with just NumPy's array constructors allowed through,
so scikit-learn is not needed. Any other object in the file is an error naming it.

Evaluation as the authors': single scale (their README's numbers are "using a single
resolution"), the photo at full size (their datasets' long side is 1024 px: ``image_size``,
``resize=long``), ImageNet mean/std from ``preprocess``, then whitening with ``whitenp`` = 0.25
(``--whiten Landmarks_clean --whitenp 0.25`` in their commands) and an L2 norm; ``whiten=false``
gives the raw 2048-d output. Multi-scale was not used for the published table, so it is not
offered. ResNet-101 at 1024 px is the cost: about 4x NetVLAD's VGG16 at 640 px on CPU;
``image_size=512`` costs a quarter.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geoguide.core.errors import first_line
from geoguide.indices.descriptors.base import ModelLoadError
from geoguide.indices.descriptors.local_weights import load_into, numpy_scalar_globals
from geoguide.indices.descriptors.registry import register
from geoguide.indices.descriptors.torch_network import IMAGENET, LocalNetworkDescriptor, PixelNorm

ENV_VAR = "GEOGUIDE_APGEM_WEIGHTS"
HOW_TO_GET = (
    "on a connected machine download Resnet-101-AP-GeM.pt (linked from the README of "
    "https://github.com/naver/deep-image-retrieval) and copy it here"
)
ARCHS = {"resnet101_rmac": (3, 4, 23, 3), "resnet50_rmac": (3, 4, 6, 3)}
TINY_LAYERS = (1, 1, 1, 1)  # tests only: the same key names, one block per stage
WHITENING = "Landmarks_clean"


class PCAState:
    """A scikit-learn ``PCA`` from the checkpoint, rebuilt as plain fields (nothing of it runs)."""

    mean_: np.ndarray | None
    components_: np.ndarray
    explained_variance_: np.ndarray
    whiten: bool

    def transform(self, x: np.ndarray, power: float) -> np.ndarray:
        """dirtorch's ``common.transform``: centre, project, divide by the variance to ``power``."""
        if getattr(self, "mean_", None) is not None:
            x = x - self.mean_
        out = x @ np.asarray(self.components_).T
        if getattr(self, "whiten", True):
            out = out / np.power(self.explained_variance_, power)
        return out


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class GeM(nn.Module):
    """dirtorch's ``GeneralizedMeanPoolingP``: (mean of clamp(x, 1e-6)^p)^(1/p), ``p`` learned."""

    def __init__(self, p: float = 3.0):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class ResNetGeM(nn.Module):
    """dirtorch's ``ResNet_RMAC`` with GeM pooling; the module names are the checkpoint's keys."""

    def __init__(self, layers: tuple[int, ...], out_dim: int = 2048, with_fc: bool = True, norm_features: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride=1 if i == 0 or b > 0 else 2))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.adpool = GeM()
        self.fc = nn.Linear(2048, out_dim)  # dirtorch makes it even when without_fc (then unused)
        self.with_fc = with_fc
        self.norm_features = norm_features
        self.out_dim = out_dim if with_fc else 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.adpool(x)
        if self.norm_features:
            x = nn.functional.normalize(x, dim=-1)
        if self.with_fc:
            x = self.fc(x)
        return nn.functional.normalize(x, dim=-1)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The published checkpoint dict, read without running anything (the PCA as ``PCAState``)."""
    from numpy._core.multiarray import _reconstruct

    allowed = [*numpy_scalar_globals(), np.ndarray, (_reconstruct, "numpy.core.multiarray._reconstruct"),
               _reconstruct, *(type(np.dtype(t)) for t in ("u1", "O"))]  # the scalar globals bring f4 f8 i4 i8 bool
    allowed += [(PCAState, f"sklearn.decomposition.{m}.PCA") for m in ("_pca", "pca")]
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, or an object this reader does not rebuild (named by torch)
        first = first_line(e)
        raise ModelLoadError(f"ap-gem: cannot read {path} ({type(e).__name__}: {first[:240]}); it must be "
                             "dirtorch's checkpoint (Resnet-101-AP-GeM.pt)") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelLoadError(f"ap-gem: {path} is not dirtorch's checkpoint (no 'state_dict' in it)")
    return ckpt


def network_for(options: dict[str, Any], variant: str, path: Path) -> ResNetGeM:
    arch = options.get("arch", "resnet101_rmac")
    if arch not in ARCHS:
        raise ModelLoadError(f"ap-gem: {path} holds a {arch!r} network; only {', '.join(ARCHS)} are supported")
    if not str(options.get("pooling", "gem")).startswith("gem"):  # dirtorch: "gem", "gemp" ... all GeM
        raise ModelLoadError(f"ap-gem: {path} pools with {options['pooling']!r}; only GeM is supported")
    return ResNetGeM(TINY_LAYERS if variant == "tiny" else ARCHS[arch], out_dim=int(options.get("out_dim", 2048)),
                     with_fc=not options.get("without_fc", False), norm_features=bool(options.get("norm_features")))


class ApGem(nn.Module):
    """The network, then (optionally) the checkpoint's whitening and a second L2 norm."""

    def __init__(self, net: ResNetGeM, pca: PCAState | None, power: float):
        super().__init__()
        self.net, self.pca, self.power = net, pca, power

    @property
    def dim(self) -> int:
        return int(np.asarray(self.pca.components_).shape[0]) if self.pca is not None else self.net.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.pca is None:
            return out
        white = self.pca.transform(out.double().cpu().numpy(), self.power)
        return nn.functional.normalize(torch.from_numpy(white).float(), dim=-1).to(out.device)


def check_pca(pca: PCAState, dim: int, path: str) -> None:
    """The whitening fits the network's output: components (d, dim), variances (d,), mean (dim,)."""
    comps = np.asarray(getattr(pca, "components_", None))
    var = np.asarray(getattr(pca, "explained_variance_", None))
    mean = getattr(pca, "mean_", None)
    ok = (comps.ndim == 2 and comps.shape[1] == dim and var.shape == (comps.shape[0],)
          and (mean is None or np.asarray(mean).shape == (dim,)))
    if not ok:
        raise ModelLoadError(f"ap-gem: {path}'s {WHITENING} whitening does not fit the {dim}-d output "
                             f"(components {comps.shape}, variances {var.shape}, mean "
                             f"{None if mean is None else np.asarray(mean).shape})")


@lru_cache(maxsize=2)
def load_ap_gem(path: str, variant: str, whiten: bool, power: float, device: str) -> tuple[ApGem, PixelNorm]:
    file = Path(path)
    ckpt = read_checkpoint(file)
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    options = ckpt.get("model_options") or {}
    net = load_into(lambda: network_for(options, variant, file), state, source=f"ap-gem: {path}")
    pca = None
    if whiten:
        pca = (ckpt.get("pca") or {}).get(WHITENING)
        if not isinstance(pca, PCAState):
            raise ModelLoadError(f"ap-gem: {path} has no {WHITENING} whitening ('pca' entry); pass "
                                 "--descriptor-opt whiten=false for the unwhitened 2048-d output")
        check_pca(pca, net.out_dim, path)
    pre = ckpt.get("preprocess") or {}
    pixels = PixelNorm(1 / 255, tuple(pre.get("mean", IMAGENET.mean)), tuple(pre.get("std", IMAGENET.std)))
    return ApGem(net.to(device), pca, power), pixels


@register
class ApGemDescriptor(LocalNetworkDescriptor):
    name = "ap-gem"
    # weights: dirtorch's Resnet-101-AP-GeM.pt; None = $GEOGUIDE_APGEM_WEIGHTS.
    default_conf: ClassVar[dict[str, Any]] = {
        **LocalNetworkDescriptor.common_conf,
        "resize": "long",
        "image_size": 1024,
        "batch_size": 2,
        "whiten": True,  # the checkpoint's Landmarks-clean PCA whitening (the authors' evaluation)
        "whiten_power": 0.25,
    }
    multiple = 32  # the network's stride
    env_var = ENV_VAR
    how_to_get = HOW_TO_GET

    def _load(self, path: str, device: str) -> tuple[nn.Module, PixelNorm]:
        if self.conf["whiten"] not in (True, False):
            raise ValueError(f"ap-gem: whiten must be true or false, got {self.conf['whiten']!r}")
        return load_ap_gem(path, self.conf["variant"], bool(self.conf["whiten"]), float(self.conf["whiten_power"]),
                           device)
