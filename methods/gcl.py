"""GCL: contrastive pre-training of global and local features, then supervised fine-tuning
(Chaitanya, Erdil, Karani & Konukoglu, "Contrastive learning of global and local features for
medical image segmentation with limited annotations", NeurIPS 2020).

Three stages share the iteration budget (equal total gradient steps across methods):

1. ``global`` (25 %): encoder ``e`` + projection ``g1`` on unlabeled slices, strategy G^D.
   Each volume is cut into ``partitions`` (S = 4) equal parts along z; a slice's partition is
   ``floor(S * z / (Z - 1))`` from ``batch.pos_ulb``. Every slice is seen in two augmented views.
   Positives of a view: the other view of the same slice, and both views of every slice of the
   *same partition of another volume* (``batch.case_ulb``). Negatives: views of slices from other
   partitions. Same-partition slices of the same volume are neither (the paper's batches hold
   one slice per partition and volume, so the case never arises there). NT-Xent, tau = 0.1.
2. ``local`` (25 %): encoder frozen (the paper's choice), the first decoder blocks ``d_l`` + a
   1x1-conv head ``g2`` on two intensity-transformed versions of the same slice (same geometry,
   strategy L^R). On the decoder feature at 1/4 of the input resolution (the paper's l = 3 of 5
   blocks, our ``local_level = 1``), 13 regions of 3 x 3 features are compared: the same region
   in the two versions is a positive pair, every other region of either version a negative.
   Region size and count are the authors' released configuration (3 x 3, 13 regions placed on
   the corners, edge midpoints, centre and quarter points of the map).
3. ``finetune`` (50 %): the whole U-Net on labeled slices with the supervised loss only
   (GCL's fine-tuning uses no unlabeled data). The 25/25/50 split follows ACTION's own
   schedule for its three stages (100/100/200 epochs), which the compared tables share.

Known differences from the paper, all forced by the shared harness or left open there: g1 pools
the deepest feature globally before its MLP (flattening a 16 x 16 x 256 map would need a
67 M-parameter layer); the local loss uses *all* other regions as negatives (the released code
samples 5 neighbouring ones); fine-tuning uses the harness's 0.5 (CE + Dice); pre-training sees
the unlabeled slices of each batch only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_bench.registry import register_method

from .contrastive import (GlobalProjection, PretrainFinetune, decoder_level_channels,
                          pair_contrastive_loss, split_backbone_parameters)

#: region corners as fractions of the free range (H - size): 3 x 3 grid plus 4 quarter points
REGION_FRACTIONS = ((0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 0.0), (0.5, 0.5), (0.5, 1.0),
                    (1.0, 0.0), (1.0, 0.5), (1.0, 1.0),
                    (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))


@dataclass
class GCLConfig:
    temperature: float = 0.1
    partitions: int = 4
    projection_dim: int = 128
    projection_hidden: int = 1024
    local_level: int = 1  # decoder feature (deep to shallow); 1 = 1/4 resolution on the U-Net
    region_size: int = 3
    global_fraction: float = 0.25
    local_fraction: float = 0.25


def partition_of(pos: torch.Tensor, partitions: int) -> torch.Tensor:
    """Partition index in [0, S) of slices at relative positions ``pos`` in [0, 1]."""
    return (pos.float().clamp(0, 1) * partitions).floor().long().clamp_max(partitions - 1)


def global_masks(pos: torch.Tensor, case: torch.Tensor, partitions: int):
    """(positives, negatives) for 2N embeddings laid out [view 1 of N slices, view 2 of them]."""
    part = partition_of(pos, partitions).repeat(2)
    vol = case.long().repeat(2)
    slice_id = torch.arange(pos.shape[0], device=pos.device).repeat(2)
    same_slice = slice_id[:, None] == slice_id[None, :]
    same_part = part[:, None] == part[None, :]
    other_volume = vol[:, None] != vol[None, :]
    not_self = ~torch.eye(2 * pos.shape[0], dtype=torch.bool, device=pos.device)
    positives = not_self & (same_slice | (same_part & other_volume))
    negatives = ~same_part
    return positives, negatives


def region_embeddings(feat: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 13, C * size * size): the flattened features of the 13 regions."""
    h, w = feat.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"GCL local loss: feature map {h}x{w} is smaller than region_size={size}; "
                         "use larger images or a smaller region_size")
    regions = []
    for fy, fx in REGION_FRACTIONS:
        y, x = round(fy * (h - size)), round(fx * (w - size))
        regions.append(feat[:, :, y:y + size, x:x + size].flatten(1))
    return torch.stack(regions, dim=1)


def local_masks(n_regions: int, device=None):
    """Masks over [regions of version 1, regions of version 2]: same region = positive."""
    region = torch.arange(n_regions, device=device).repeat(2)
    not_self = ~torch.eye(2 * n_regions, dtype=torch.bool, device=device)
    positives = (region[:, None] == region[None, :]) & not_self
    negatives = region[:, None] != region[None, :]
    return positives, negatives


@register_method("gcl", paper="Chaitanya et al., NeurIPS 2020",
                 description="GCL: global (partition) + local contrastive pre-training, then fine-tuning")
class GCL(PretrainFinetune):
    Config = GCLConfig
    paper = "Chaitanya et al., NeurIPS 2020"
    display_name = "GCL"
    local_uses_labels = False

    def __init__(self, cfg: GCLConfig, ctx):
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        self.g1 = GlobalProjection(self.student.encoder_channels[-1], cfg.projection_hidden,
                                   cfg.projection_dim)
        self.level, ch = decoder_level_channels(self.student, cfg.local_level)
        # g2: two 1x1 convolutions, as in the paper
        self.g2 = nn.Sequential(nn.Conv2d(ch, ch, 1), nn.BatchNorm2d(ch), nn.ReLU(inplace=True),
                                nn.Conv2d(ch, ch, 1))
        self.encoder_params, self.local_decoder_params = split_backbone_parameters(
            self.student, ctx.in_channels, self.level)

    def modules(self):
        return {"student": self.student, "g1": self.g1, "g2": self.g2}

    def local_parameters(self):
        return self.local_decoder_params + list(self.g2.parameters())

    def global_loss(self, batch) -> torch.Tensor:
        if batch.pos_ulb is None or batch.case_ulb is None:
            raise ValueError("GCL needs slice positions (batch.pos_ulb) and volume indices "
                             "(batch.case_ulb) of the unlabeled slices; use a volumetric dataset")
        z = self.global_embeddings(batch)
        positives, negatives = global_masks(batch.pos_ulb.to(z.device), batch.case_ulb.to(z.device),
                                            self.cfg.partitions)
        return pair_contrastive_loss(z, positives, negatives, self.cfg.temperature)

    def local_loss(self, batch) -> torch.Tensor:
        aug, g = self.ctx.augment, self.ctx.generator
        # two intensity transformations of the same (weakly augmented) slice: regions stay aligned
        views = torch.cat([aug.photometric(batch.x_ulb, g), aug.photometric(batch.x_ulb, g)])
        with torch.no_grad():  # frozen encoder
            feats = self.student.encode(views)
        _, dec = self.student.decode(feats)
        regions = region_embeddings(self.g2(dec[self.level]), self.cfg.region_size)
        n = batch.x_ulb.shape[0]
        pairs = torch.cat([regions[:n], regions[n:]], dim=1)  # (N, 2 * 13, D) per slice
        positives, negatives = local_masks(regions.shape[1], pairs.device)
        return pair_contrastive_loss(pairs, positives, negatives, self.cfg.temperature)
