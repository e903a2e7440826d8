"""Projection heads, predictors and the representation head of ACTION (You et al., IPMI 2023).

Every head works on tensors of any spatial rank: (B, C, H, W) slices of the 2D U-Net or
(B, C, D, H, W) patches of the 3D V-Net (``ActionNet`` reads the backbone's ``spatial_dims``,
2 when absent, and builds 1x1 convolutions of that rank). In 3D a "region" is a cell of a
``grid x grid x grid`` partition and H_r reads its features by trilinear interpolation.

* ``GlobalHead`` (H^g): global average pooling (over every spatial dim) of the deepest encoder
  features, then an MLP to 512-d. ``MLPPredictor`` (H^g_p): the BYOL-style predictor 512 -> 512
  on top of it. The paper follows SCS for the heads and BYOL for the predictor ("feature
  dimension of 512"). Both MLPs are Linear-ReLU-Linear without BatchNorm: BatchNorm1d fails on a
  batch of one slice and is not needed for stability here.
* ``LocalHead`` (H^l): "the 1x1 convolutional layer [that projects] all pixels [of the logits]
  into the latent space with the feature dimension of 512", followed by average pooling over a
  ``grid x grid`` partition of the image, so each region of the image is one local embedding.
  Because a single 1x1 convolution is linear, pooling the logits first and projecting after is
  *exactly* the same as projecting every pixel and pooling the regions, and it never builds the
  (B, 512, H, W) map.
* ``LocalPredictor`` (H^l_p): two 1x1 convolutions with a ReLU between, on region embeddings.
* ``RepresentationHead`` (H_r): the deepest encoder features and every decoder level, each
  upsampled (bi/trilinearly) to the input size and concatenated, mapped to 512-d by two 1x1
  convolutions (Linear-ReLU-Linear per pixel) and L2-normalised, so that the dot products of
  AnCo (Eq. 4) are cosine similarities bounded by 1 / tau_an. It is evaluated only at the pixels
  AnCo samples (``at_points``): bilinear sampling at a pixel equals upsampling the whole map and
  reading that pixel (``linear_at``, any rank), so memory grows with the number of sampled
  pixels, not with H x W (x D).

``ActionNet`` bundles the backbone with the two projection heads: it is what the EMA teacher
copies. The predictors and H_r belong to the student only.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def conv1x1(cin: int, cout: int, dims: int = 2) -> nn.Module:
    """A 1x1 (x1) convolution for ``dims`` spatial dims."""
    if dims not in CONV:
        raise ValueError(f"ACTION's heads take 1, 2 or 3 spatial dims, not {dims}")
    return CONV[dims](cin, cout, kernel_size=1)


def mlp(dim_in: int, dim_hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True), nn.Linear(dim_hidden, dim_out))


class GlobalHead(nn.Module):
    """H^g: pooled deepest encoder features (B, C, *spatial) -> (B, dim)."""

    def __init__(self, in_channels: int, dim: int = 512):
        super().__init__()
        self.mlp = mlp(in_channels, dim, dim)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.mlp(deepest.mean(dim=tuple(range(2, deepest.dim()))))


class MLPPredictor(nn.Module):
    """H^g_p: (B, dim) -> (B, dim)."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.mlp = mlp(dim, dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z)


class LocalHead(nn.Module):
    """H^l: logits (B, C, *spatial) -> region embeddings (B, dim, grid, ..., grid), one grid axis
    per spatial dim."""

    def __init__(self, num_classes: int, dim: int = 512, grid: int = 8, dims: int = 2):
        super().__init__()
        self.grid, self.dims = grid, dims
        self.proj = conv1x1(num_classes, dim, dims)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() != self.dims + 2:
            raise ValueError(f"H^l was built for {self.dims} spatial dims; got logits {tuple(logits.shape)}")
        # pool-then-project == project-then-pool for a single 1x1 conv (linear), see module doc
        return self.proj(POOL[self.dims](logits, self.grid))


class LocalPredictor(nn.Module):
    """H^l_p: (B, dim, g, ..., g) -> the same shape."""

    def __init__(self, dim: int = 512, dims: int = 2):
        super().__init__()
        self.body = nn.Sequential(conv1x1(dim, dim, dims), nn.ReLU(inplace=True), conv1x1(dim, dim, dims))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.body(e)


def linear_at(feat: torch.Tensor, b: torch.Tensor, coords: tuple[torch.Tensor, ...],
              out_size: tuple[int, ...]) -> torch.Tensor:
    """Values (N, C) of ``F.interpolate(feat, out_size, mode="bilinear" / "trilinear",
    align_corners=False)`` at output points (b, *coords), one index tensor per spatial dim of
    ``feat`` (B, C, *spatial), computed from the 2^dims neighbours without the upsampled map."""
    in_size = feat.shape[2:]
    if len(coords) != len(in_size) or len(out_size) != len(in_size):
        raise ValueError(f"linear_at: {len(coords)} coordinates and output size {tuple(out_size)} for a "
                         f"feature of {len(in_size)} spatial dims")

    def source(idx, n_in, n_out):
        # PyTorch's half-pixel mapping for align_corners=False, clamped at the low border
        # (coordinates in float32 even under autocast: bf16 cannot hold 255.5)
        s = ((idx.float() + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
        i0 = s.floor().long().clamp_max(n_in - 1)
        i1 = (i0 + 1).clamp_max(n_in - 1)
        return i0, i1, s - i0.float()

    axes = [source(c, n_in, n_out) for c, n_in, n_out in zip(coords, in_size, out_size)]
    strides = [math.prod(in_size[k + 1:]) for k in range(len(in_size))]
    # one gather of the 2^dims neighbours from the (B, C, prod(spatial)) view: much faster
    # forward and backward than one gather per neighbour from a permuted channels-last view
    pix, weights = [], []
    for corner in itertools.product((0, 1), repeat=len(axes)):
        flat, weight = 0, None
        for bit, (i0, i1, frac), stride in zip(corner, axes, strides):
            flat = flat + (i1 if bit else i0) * stride
            w = frac if bit else 1 - frac
            weight = w if weight is None else weight * w
        pix.append(flat)
        weights.append(weight)
    n = len(pix)
    corners = feat.flatten(2)[b.repeat(n), :, torch.cat(pix)]  # (n N, C)
    return (corners * torch.cat(weights).to(feat.dtype).unsqueeze(1)).view(n, len(b), -1).sum(0)


def bilinear_at(feat: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                out_hw: tuple[int, int]) -> torch.Tensor:
    """``linear_at`` of a 2D feature (B, C, h, w) at output pixels (b, y, x)."""
    return linear_at(feat, b, (y, x), out_hw)


class RepresentationHead(nn.Module):
    """H_r: multi-level features -> L2-normalised ``dim``-d pixel embeddings at chosen pixels."""

    def __init__(self, in_channels: int, dim: int = 512):
        super().__init__()
        self.mlp = mlp(in_channels, dim, dim)  # two 1x1 convolutions, applied per pixel

    def at_points(self, levels: list[torch.Tensor], b: torch.Tensor, coords: tuple[torch.Tensor, ...],
                  out_size: tuple[int, ...]) -> torch.Tensor:
        """Embeddings (N, dim) at output points (b, *coords) of an input of spatial size ``out_size``."""
        feats = torch.cat([linear_at(f, b, coords, out_size) for f in levels], dim=1)
        return F.normalize(self.mlp(feats).float(), dim=1)


class ActionNet(nn.Module):
    """The part of the student the teacher mirrors: backbone + H^g + H^l, for the backbone's
    ``spatial_dims`` (2 when it does not say: the 2D backbones)."""

    def __init__(self, backbone: nn.Module, num_classes: int, dim: int = 512, grid: int = 8):
        super().__init__()
        self.backbone = backbone
        self.spatial_dims = int(getattr(backbone, "spatial_dims", 2))
        self.global_head = GlobalHead(backbone.encoder_channels[-1], dim)
        self.local_head = LocalHead(num_classes, dim, grid, self.spatial_dims)

    def encoder_parameters(self) -> list[nn.Parameter]:
        if hasattr(self.backbone, "encoder_parameters"):  # the V-Net: its down path
            return list(self.backbone.encoder_parameters())
        enc = getattr(self.backbone, "encoder", None)
        if enc is None:  # segmentation-models-pytorch adapter
            enc = self.backbone.model.encoder
        return list(enc.parameters())

    def global_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_head(self.backbone.encode(x)[-1])

    def local_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_head(self.backbone(x))
