"""NetVLAD (Arandjelović et al., CVPR 2016): VGG16 conv5_3 + a 64-cluster NetVLAD layer, in torch.

Key names are those of Nanne/pytorch-NetVlad (``main.py``/``netvlad.py``, read at its HEAD), the
PyTorch re-training on Pittsburgh 30k whose released ``checkpoint.pth.tar`` holds
``{"state_dict": ...}`` with
- ``encoder.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}``: torchvision VGG16's ``features``
  cut before its last ReLU and max-pool (so conv5_3's raw output is aggregated, as in the paper);
- ``pool.conv.weight`` [64, 512, 1, 1] (soft-assignment, no bias: "vladv1") and
  ``pool.centroids`` [64, 512].
The layer: L2-normalise each 512-d local feature, soft-assign to the 64 clusters, sum the
residuals per cluster, intra-normalise, flatten cluster-major, L2-normalise: 32768-d.

``whiten`` (``Linear(32768, 4096)`` then L2) exists only for the paper's MatConvNet checkpoints
(``Pitts30K_struct.mat``, ``TokyoTM_struct.mat``), converted by ``netvlad.state_from_matconvnet``.
``NETVLAD_TINY`` keeps every name with narrow layers, for tests only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POOL = "M"
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                                       512, 512, 512, POOL, 512, 512, 512)
STRIDE = 16  # four 2x2 max-pools before conv5_3


@dataclass(frozen=True)
class NetVLADSpec:
    layout: tuple[int | str, ...] = VGG16_LAYOUT
    num_clusters: int = 64
    whiten_dim: int = 4096

    @property
    def feature_dim(self) -> int:
        return int(self.layout[-1])

    @property
    def vlad_dim(self) -> int:
        return self.num_clusters * self.feature_dim


NETVLAD_OFFICIAL = NetVLADSpec()
NETVLAD_TINY = NetVLADSpec(
    layout=tuple(c if c == POOL else max(4, int(c) // 16) for c in VGG16_LAYOUT), num_clusters=8, whiten_dim=16
)


def vgg16_conv5_3(layout: tuple[int | str, ...]) -> nn.Sequential:
    """VGG16 ``features`` up to conv5_3, before its ReLU: torchvision's indices 0..28."""
    layers: list[nn.Module] = []
    channels = 3
    for item in layout:
        if item == POOL:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers[:-1])


class NetVLADPool(nn.Module):
    """Local features [B, D, H, W] -> intra-normalised VLAD [B, K * D], L2-normed."""

    def __init__(self, num_clusters: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.zeros(num_clusters, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)
        assign = F.softmax(self.conv(x).flatten(2), dim=1)  # [B, K, N]
        x = x.flatten(2)  # [B, D, N]
        # sum_n a_kn (x_n - c_k) without materialising the [B, K, D, N] residuals
        vlad = torch.einsum("bkn,bdn->bkd", assign, x) - assign.sum(dim=2, keepdim=True) * self.centroids
        return F.normalize(F.normalize(vlad, dim=2).flatten(1), dim=1)


class NetVLAD(nn.Module):
    """Images [B, 3, H, W] (normalised as the checkpoint expects) -> [B, dim], L2-normed."""

    def __init__(self, spec: NetVLADSpec = NETVLAD_OFFICIAL, whiten: bool = False):
        super().__init__()
        self.encoder = vgg16_conv5_3(spec.layout)
        self.pool = NetVLADPool(spec.num_clusters, spec.feature_dim)
        self.whiten = nn.Linear(spec.vlad_dim, spec.whiten_dim) if whiten else None
        self.dim = spec.whiten_dim if whiten else spec.vlad_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.encoder(images))
        return x if self.whiten is None else F.normalize(self.whiten(x), dim=1)
