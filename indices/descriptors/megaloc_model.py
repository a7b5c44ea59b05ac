"""MegaLoc (Berton & Masone, CVPRW 2025) in plain torch, key for key with the official checkpoint.

Architecture, from gmberton/MegaLoc ``megaloc_model.py`` (MIT; read at commit 1af071c, 2026-03):
a DINOv2 ViT-B/14 (768-d, 12 blocks, 12 heads, LayerScale, 518-px position grid of 37 x 37 + CLS)
whose normalised patch tokens and CLS token feed a SALAD aggregator (Izquierdo & Civera 2024:
Sinkhorn optimal transport of 64 clusters x 256-d plus a 256-d scene token, with a dustbin), then a
linear layer 16640 -> 8448 and an L2 norm. The descriptor is 8448-d.

The module names below are the upstream ones, because they are the checkpoint's keys:
``backbone.{cls_token,pos_embed,patch_embed.proj,blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,
norm2,mlp.fc1,mlp.fc2,ls2.gamma},norm}`` and ``aggregator.{agg.{token_features,cluster_features,
score,dust_bin},linear}``. ``MEGALOC_OFFICIAL`` is that network; ``MEGALOC_TINY`` has the same names
with small shapes, for tests only (no weights exist for it). Inference only: dropout layers are
identities (their slots are kept so the ``Sequential`` indices, hence the keys, match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 14


@dataclass(frozen=True)
class MegaLocSpec:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pos_grid: int = 37  # DINOv2 was trained at 518 px: a 37 x 37 grid of position embeddings
    num_clusters: int = 64
    cluster_dim: int = 256
    token_dim: int = 256
    mlp_dim: int = 512
    feat_dim: int = 8448

    @property
    def salad_dim(self) -> int:
        return self.num_clusters * self.cluster_dim + self.token_dim


MEGALOC_OFFICIAL = MegaLocSpec()
MEGALOC_TINY = MegaLocSpec(embed_dim=32, depth=2, num_heads=2, pos_grid=4, num_clusters=4,
                           cluster_dim=8, token_dim=8, mlp_dim=16, feat_dim=24)


class PatchEmbedding(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(head_dim)) v, the upstream formula, in torch's fused kernel.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """ViT backbone -> (patch features [B, C, H/14, W/14], CLS token [B, C]), both final-normed."""

    def __init__(self, spec: MegaLocSpec):
        super().__init__()
        self.embed_dim = spec.embed_dim
        self.patch_embed = PatchEmbedding(spec.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.pos_grid**2 + 1, spec.embed_dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(spec.embed_dim, spec.num_heads, spec.mlp_ratio) for _ in range(spec.depth)
        )
        self.norm = nn.LayerNorm(spec.embed_dim, eps=1e-6)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """The 518-px position grid resized to ``rows`` x ``cols`` patches as DINOv2 does it.

        Bicubic, no antialias, scale factors (n + 0.1) / grid (DINOv2's offset against rounding
        down): these reproduce the upstream embeddings to the bit, which other resizes would not.
        """
        grid = int(math.sqrt(self.pos_embed.shape[1] - 1))
        if rows == cols == grid:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = F.interpolate(
            pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2),
            scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid),
            mode="bicubic",
            antialias=False,
        )
        if patch_pos.shape[-2:] != (rows, cols):
            raise RuntimeError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, not {(rows, cols)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat((pos[:, :1], patch_pos), dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = images.shape
        rows, cols = h // PATCH, w // PATCH
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.position_embedding(rows, cols)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        patches = x[:, 1:].reshape(b, rows, cols, self.embed_dim).permute(0, 3, 1, 2)
        return patches, x[:, 0]


def log_sinkhorn(scores: torch.Tensor, dustbin: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Log transport plan [B, m+1, n] of m clusters plus a dustbin row over n patches (SALAD's).

    Marginals: every patch has mass 1/(n+m); each cluster 1/(n+m), the dustbin (n-m)/(n+m), so the
    dustbin absorbs what no cluster should take. Returned scaled by (n+m): entries are
    per-patch assignment log-probabilities.
    """
    b, m, n = scores.shape
    if n <= m:
        raise ValueError(f"megaloc: {n} patches for {m} clusters; the photo must give more patches (a larger image_size)")
    cost = torch.cat([scores, dustbin.to(scores.dtype).expand(b, 1, n)], dim=1)
    norm = -math.log(n + m)
    log_a = torch.full((m + 1,), norm, dtype=scores.dtype, device=scores.device)
    log_a[-1] += math.log(n - m)
    log_a = log_a.expand(b, -1)
    log_b = torch.full((b, n), norm, dtype=scores.dtype, device=scores.device)
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(iterations):
        u = log_a - torch.logsumexp(cost + v.unsqueeze(1), dim=2)
        v = log_b - torch.logsumexp(cost + u.unsqueeze(2), dim=1)
    return cost + u.unsqueeze(2) + v.unsqueeze(1) - norm


class FeatureAggregator(nn.Module):
    """SALAD: per-patch features softly assigned to clusters by optimal transport, plus the CLS token."""

    def __init__(self, spec: MegaLocSpec):
        super().__init__()
        c, hidden = spec.embed_dim, spec.mlp_dim
        self.num_clusters, self.cluster_dim = spec.num_clusters, spec.cluster_dim
        self.token_features = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, spec.token_dim))
        self.cluster_features = nn.Sequential(
            nn.Conv2d(c, hidden, 1), nn.Identity(), nn.ReLU(), nn.Conv2d(hidden, spec.cluster_dim, 1)
        )
        self.score = nn.Sequential(
            nn.Conv2d(c, hidden, 1), nn.Identity(), nn.ReLU(), nn.Conv2d(hidden, spec.num_clusters, 1)
        )
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, patches: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        f = self.cluster_features(patches).flatten(2)  # [B, l, n]
        p = log_sinkhorn(self.score(patches).flatten(2), self.dust_bin).exp()[:, :-1]  # [B, m, n]
        t = self.token_features(cls_token)
        clusters = torch.einsum("bln,bmn->blm", f, p)  # upstream: (f * p).sum(-1) over repeated copies
        return F.normalize(
            torch.cat([F.normalize(t, dim=-1), F.normalize(clusters, dim=1).flatten(1)], dim=-1), dim=-1
        )


class Aggregator(nn.Module):
    def __init__(self, spec: MegaLocSpec):
        super().__init__()
        self.agg = FeatureAggregator(spec)
        self.linear = nn.Linear(spec.salad_dim, spec.feat_dim)

    def forward(self, patches: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        return self.linear(self.agg(patches, cls_token))


class MegaLoc(nn.Module):
    """Images [B, 3, H, W] (ImageNet-normalised, H and W multiples of 14) -> [B, feat_dim], L2-normed."""

    def __init__(self, spec: MegaLocSpec = MEGALOC_OFFICIAL):
        super().__init__()
        self.spec = spec
        self.backbone = DINOv2(spec)
        self.aggregator = Aggregator(spec)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] % PATCH or images.shape[-2] % PATCH:
            raise ValueError(f"megaloc: input {tuple(images.shape[-2:])} is not a multiple of {PATCH} px")
        return F.normalize(self.aggregator(*self.backbone(images)), dim=-1)
