"""Projection heads, predictors and the representation head of ACTION (You et al., IPMI 2023).

* ``GlobalHead`` (H^g): global average pooling of the deepest encoder features, then an MLP to
  512-d. ``MLPPredictor`` (H^g_p): the BYOL-style predictor 512 -> 512 on top of it.
  The paper follows SCS for the heads and BYOL for the predictor ("feature dimension of 512").
  Both MLPs are Linear-ReLU-Linear without BatchNorm: BatchNorm1d fails on a batch of one
  slice and is not needed for stability here.
* ``LocalHead`` (H^l): "the 1x1 convolutional layer [that projects] all pixels [of the logits]
  into the latent space with the feature dimension of 512", followed by average pooling over a
  ``grid x grid`` partition of the image, so each region of the image is one local embedding.
  Because a single 1x1 convolution is linear, pooling the logits first and projecting after is
  *exactly* the same as projecting every pixel and pooling the regions, and it never builds the
  (B, 512, H, W) map.
* ``LocalPredictor`` (H^l_p): two 1x1 convolutions with a ReLU between, on region embeddings.
* ``RepresentationHead`` (H_r): the deepest encoder features and every decoder level, each
  upsampled bilinearly to the input size and concatenated, mapped to 512-d by two 1x1
  convolutions (Linear-ReLU-Linear per pixel) and L2-normalised, so that the dot products of
  AnCo (Eq. 4) are cosine similarities bounded by 1 / tau_an. It is evaluated only at the pixels
  AnCo samples (``at_points``): bilinear sampling at a pixel equals upsampling the whole map and
  reading that pixel, so memory grows with the number of sampled pixels, not with H x W.

``ActionNet`` bundles the backbone with the two projection heads: it is what the EMA teacher
copies. The predictors and H_r belong to the student only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(dim_in: int, dim_hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True), nn.Linear(dim_hidden, dim_out))


class GlobalHead(nn.Module):
    """H^g: pooled deepest encoder features (B, C, h, w) -> (B, dim)."""

    def __init__(self, in_channels: int, dim: int = 512):
        super().__init__()
        self.mlp = mlp(in_channels, dim, dim)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.mlp(deepest.mean(dim=(2, 3)))


class MLPPredictor(nn.Module):
    """H^g_p: (B, dim) -> (B, dim)."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.mlp = mlp(dim, dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z)


class LocalHead(nn.Module):
    """H^l: logits (B, C, H, W) -> region embeddings (B, dim, grid, grid)."""

    def __init__(self, num_classes: int, dim: int = 512, grid: int = 8):
        super().__init__()
        self.grid = grid
        self.proj = nn.Conv2d(num_classes, dim, kernel_size=1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        # pool-then-project == project-then-pool for a single 1x1 conv (linear), see module doc
        return self.proj(F.adaptive_avg_pool2d(logits, self.grid))


class LocalPredictor(nn.Module):
    """H^l_p: (B, dim, g, g) -> (B, dim, g, g)."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.body(e)


def bilinear_at(feat: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                out_hw: tuple[int, int]) -> torch.Tensor:
    """Values (N, C) of ``F.interpolate(feat, out_hw, mode="bilinear", align_corners=False)``
    at output pixels (b, y, x), computed from the four neighbours without the upsampled map."""
    h, w = feat.shape[-2:]
    H, W = out_hw

    def source(idx, n_in, n_out):
        # PyTorch's half-pixel mapping for align_corners=False, clamped at the low border
        # (coordinates in float32 even under autocast: bf16 cannot hold 255.5)
        s = ((idx.float() + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
        i0 = s.floor().long().clamp_max(n_in - 1)
        i1 = (i0 + 1).clamp_max(n_in - 1)
        return i0, i1, s - i0.float()

    y0, y1, wy = source(y, h, H)
    x0, x1, wx = source(x, w, W)
    # one gather of the four neighbours from the (B, C, h*w) view: much faster forward and
    # backward than four gathers from a permuted (B, h, w, C) view
    pix = torch.cat([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1])
    corners = feat.flatten(2)[b.repeat(4), :, pix]  # (4N, C)
    weights = torch.cat([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx])
    return (corners * weights.to(feat.dtype).unsqueeze(1)).view(4, len(b), -1).sum(0)


class RepresentationHead(nn.Module):
    """H_r: multi-level features -> L2-normalised ``dim``-d pixel embeddings at chosen pixels."""

    def __init__(self, in_channels: int, dim: int = 512):
        super().__init__()
        self.mlp = mlp(in_channels, dim, dim)  # two 1x1 convolutions, applied per pixel

    def at_points(self, levels: list[torch.Tensor], b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                  out_hw: tuple[int, int]) -> torch.Tensor:
        feats = torch.cat([bilinear_at(f, b, y, x, out_hw) for f in levels], dim=1)
        return F.normalize(self.mlp(feats).float(), dim=1)


class ActionNet(nn.Module):
    """The part of the student the teacher mirrors: backbone + H^g + H^l."""

    def __init__(self, backbone: nn.Module, num_classes: int, dim: int = 512, grid: int = 8):
        super().__init__()
        self.backbone = backbone
        self.global_head = GlobalHead(backbone.encoder_channels[-1], dim)
        self.local_head = LocalHead(num_classes, dim, grid)

    def encoder_parameters(self) -> list[nn.Parameter]:
        enc = getattr(self.backbone, "encoder", None)
        if enc is None:  # segmentation-models-pytorch adapter
            enc = self.backbone.model.encoder
        return list(enc.parameters())

    def global_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_head(self.backbone.encode(x)[-1])

    def local_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_head(self.backbone(x))
