"""SCS: semi-supervised contrastive learning, i.e. self-supervised global contrast, then
supervised local (pixel) contrast, then fine-tuning (Hu, Zeng, Xu & Shi, "Semi-supervised
contrastive learning for label-efficient medical image segmentation", MICCAI 2021).

Three stages share the iteration budget (the 25/25/50 split of GCL and ACTION):

1. ``global`` (25 %): encoder + projection head on unlabeled slices, SimCLR's NT-Xent: two
   random augmentations (geometry + intensity) of each slice are the positive pair, every other
   view in the batch a negative. Temperature 0.5, the value of the authors' released SimCLR
   configuration.
2. ``local`` (25 %): the labeled slices, two views each (the loop's weak view and a strong
   re-augmentation of the raw slice, labels warped alike), through the whole U-Net up to its
   last decoder feature and a 1x1-conv projection head to 128-d unit vectors. Pixels are taken
   on a stride-``stride`` grid (the paper's down-sampling strategy, stride 4); every sampled pixel
   with the same label, in any view or slice, is a positive of an anchor, every other sampled
   pixel is in the denominator (supervised contrastive loss). Anchors are foreground pixels
   only, as the authors' code does (background dominates). Temperature 0.1 (authors' script).
   On top of the paper, at most ``max_pixels`` grid pixels are kept per step (uniformly drawn)
   so that the N x N similarity matrix fits in memory with 12 slices of 256 x 256; the 1x1-conv
   head is applied to the sampled pixels only (identical result, a fraction of the memory).
3. ``finetune`` (50 %): the whole U-Net on labeled slices with the supervised loss only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_bench.registry import register_method
from ssl_bench.sampling import to_device  # CPU draws reach a GPU without a host sync

from .contrastive import (GlobalProjection, PretrainFinetune, decoder_level_channels,
                          pair_contrastive_loss, split_backbone_parameters,
                          supervised_contrastive_loss, two_view_masks)


@dataclass
class SCSConfig:
    global_temperature: float = 0.5
    local_temperature: float = 0.1
    projection_dim: int = 128
    stride: int = 4
    max_pixels: int = 4096
    foreground_anchors_only: bool = True
    global_fraction: float = 0.25
    local_fraction: float = 0.25


def sample_pixels(feats: torch.Tensor, labels: torch.Tensor, stride: int, max_pixels: int,
                  generator: torch.Generator | None = None):
    """Features (B, C, H, W) and labels (B, H, W) on a stride grid -> (N, C), (N,), at most
    ``max_pixels`` of them (uniform without replacement)."""
    f = feats[:, :, ::stride, ::stride].permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    y = labels[:, ::stride, ::stride].reshape(-1)
    if f.shape[0] > max_pixels:
        keep = to_device(torch.randperm(f.shape[0], generator=generator)[:max_pixels], f.device)
        f, y = f[keep], y[keep]
    return f, y


@register_method("scs", paper="Hu et al., MICCAI 2021",
                 description="SCS: global SimCLR pre-training, supervised pixel contrast, fine-tuning")
class SCS(PretrainFinetune):
    Config = SCSConfig
    paper = "Hu et al., MICCAI 2021"
    display_name = "SCS"
    local_uses_labels = True  # supervised pixel contrast on the labeled slices

    def __init__(self, cfg: SCSConfig, ctx):
        super().__init__(cfg, ctx)  # checks the stage fractions first
        if cfg.stride < 1 or cfg.max_pixels < 2:
            raise ValueError("SCS: stride must be >= 1 and max_pixels >= 2 "
                             f"(got {cfg.stride}, {cfg.max_pixels})")
        self.student = ctx.make_backbone()
        enc_ch = self.student.encoder_channels[-1]
        self.g1 = GlobalProjection(enc_ch, enc_ch, cfg.projection_dim)
        self.level, ch = decoder_level_channels(self.student, len(self.student.decoder_channels) - 1)
        self.local_head = nn.Sequential(nn.Conv2d(ch, 256, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(256, cfg.projection_dim, 1))
        # decoder params are found with the encoder output detached: the two lists are disjoint
        self.encoder_params, decoder_params = split_backbone_parameters(
            self.student, ctx.in_channels, self.level)
        # stage 2 trains everything up to the last decoder feature (not the segmentation head)
        self.local_params = self.encoder_params + decoder_params

    def modules(self):
        return {"student": self.student, "g1": self.g1, "local_head": self.local_head}

    def local_parameters(self):
        return self.local_params + list(self.local_head.parameters())

    def global_loss(self, batch) -> torch.Tensor:
        z = self.global_embeddings(batch)
        positives, negatives = two_view_masks(batch.x_ulb_raw.shape[0], z.device)
        return pair_contrastive_loss(z, positives, negatives, self.cfg.global_temperature)

    def local_loss(self, batch) -> torch.Tensor:
        aug, g = self.ctx.augment, self.ctx.generator
        raw_x = batch.x_lb_raw if batch.x_lb_raw is not None else batch.x_lb
        raw_y = batch.y_lb_raw if batch.y_lb_raw is not None else batch.y_lb
        x2, y2 = aug.strong(raw_x, raw_y, g)
        x = torch.cat([batch.x_lb, x2])
        y = torch.cat([batch.y_lb, y2])
        _, _, dec = self.student.forward_features(x)
        # the head is pointwise (1x1 convs): projecting only the sampled pixels gives the same
        # embeddings as projecting the whole map and sampling, at a fraction of the memory
        f, lab = sample_pixels(dec[self.level], y, self.cfg.stride, self.cfg.max_pixels, g)
        f = self.local_head(f[:, :, None, None]).flatten(1)
        anchors = lab != 0 if self.cfg.foreground_anchors_only else None
        return supervised_contrastive_loss(f, lab, self.cfg.local_temperature, anchors)
