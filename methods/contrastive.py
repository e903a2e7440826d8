"""Contrastive losses and staged-training helpers shared by GCL and SCS.

* ``pair_contrastive_loss``: the NT-Xent family with explicit positive and negative masks.
  SimCLR's loss (Chen et al., ICML 2020) is the case "one positive: the other view, negatives:
  everything else"; GCL's partition strategy (Chaitanya et al., NeurIPS 2020) and its local loss
  are other masks over the same formula.
* ``supervised_contrastive_loss``: the supervised (multi-positive) form of Khosla et al.
  (NeurIPS 2020) that SCS (Hu et al., MICCAI 2021) applies to pixels.
* ``split_backbone_parameters``: which backbone parameters a stage trains (encoder only, or the
  decoder blocks up to a feature level), found by one probe backward pass so that it works for
  any backbone of ``ssl_bench.nets``.
* ``PretrainFinetune``: the stage machinery GCL and SCS share (global contrast on the encoder,
  a method-specific local contrast, then supervised fine-tuning of the whole U-Net).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


from .base import Method, Stage, StepOutput

_MASKED = -1e9  # a logit that contributes exp(.) = 0 without the NaN gradients of -inf (float32 only)


def cosine_logits(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., N, D) embeddings -> (..., N, N) cosine similarities divided by the temperature, in
    float32 even inside an autocast step: ``.float()`` alone does not escape autocast's matmul, and
    float16 logits could hold neither ``_MASKED`` (review E3: masked_fill overflowed) nor a cosine
    divided by a small temperature to more than about three digits."""
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=-1)
        return z @ z.transpose(-1, -2) / temperature


def pair_contrastive_loss(z: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """Mean over ordered positive pairs (i, j) of

        -log( e^{s_ij} / (e^{s_ij} + sum_k negatives[i, k] e^{s_ik}) ),  s = cos / temperature.

    ``z`` is (..., N, D); the boolean masks are (N, N) or (..., N, N) and must not mark the
    diagonal. The denominator holds the pair itself and the anchor's negatives only: other
    positives of the anchor are left out, as in GCL's G^D strategy.
    """
    if positives.shape[-1] != z.shape[-2] or negatives.shape[-1] != z.shape[-2]:
        raise ValueError(f"masks {tuple(positives.shape)} / {tuple(negatives.shape)} do not match "
                         f"{z.shape[-2]} embeddings")
    logits = cosine_logits(z, temperature)
    neg_lse = torch.logsumexp(logits.masked_fill(~negatives, _MASKED), dim=-1, keepdim=True)
    per_pair = torch.logaddexp(logits, neg_lse) - logits
    pos = positives.expand_as(per_pair).float()
    return (per_pair * pos).sum() / pos.sum().clamp_min(1.0)


def two_view_masks(n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's masks for 2n embeddings laid out [view 1 of n images, view 2 of the same n]:
    each embedding's positive is the other view of its image, every other embedding a negative."""
    idx = torch.arange(2 * n, device=device)
    positives = (idx[:, None] % n == idx[None, :] % n) & (idx[:, None] != idx[None, :])
    negatives = ~positives & (idx[:, None] != idx[None, :])
    return positives, negatives


def supervised_contrastive_loss(feats: torch.Tensor, labels: torch.Tensor, temperature: float,
                                anchors: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss over N embeddings ``feats`` (N, D) with ``labels`` (N,):

        l_a = -1/|P(a)| sum_{p in P(a)} log( e^{s_ap} / sum_{k != a} e^{s_ak} ),

    P(a) = the other embeddings with the anchor's label, s = cos / temperature; averaged over
    the anchors (``anchors`` mask, default all) that have at least one positive. Returns a
    zero that still depends on ``feats`` when no anchor qualifies.
    """
    n = feats.shape[0]
    logits = cosine_logits(feats, temperature)
    not_self = ~torch.eye(n, dtype=torch.bool, device=feats.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, _MASKED), dim=1, keepdim=True)
    same = (labels[:, None] == labels[None, :]) & not_self
    n_pos = same.sum(1)
    keep = n_pos > 0
    if anchors is not None:
        keep = keep & anchors
    per_anchor = -(log_prob * same.float()).sum(1) / n_pos.clamp_min(1)
    # a masked mean, not a selection: no host sync (0, still depending on feats, when none qualifies)
    return torch.where(keep, per_anchor, 0.0).sum() / keep.sum().clamp_min(1)


def _reached(params: list[nn.Parameter], output: torch.Tensor) -> list[nn.Parameter]:
    grads = torch.autograd.grad(output, params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is not None]


def split_backbone_parameters(backbone: nn.Module, in_channels: int, decoder_level: int,
                              probe_size: int = 64) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(encoder parameters, decoder parameters that decoder feature ``decoder_level`` depends on).

    One probe forward/backward pass on a blank image in eval mode (so that BatchNorm statistics
    are untouched). The encoder part is what the deepest encoder feature depends on; the decoder
    part is what the chosen decoder feature depends on once the encoder output is detached.
    """
    params = [p for p in backbone.parameters() if p.requires_grad]
    was_training = backbone.training
    backbone.eval()
    try:
        device = params[0].device
        x = torch.zeros(1, in_channels, probe_size, probe_size, device=device)
        with torch.enable_grad():
            feats = backbone.encode(x)
            encoder = _reached(params, feats[-1].float().sum())
            _, dec = backbone.decode([f.detach() for f in feats])
            level = min(decoder_level, len(dec) - 1)
            decoder = _reached(params, dec[level].float().sum())
    finally:
        backbone.train(was_training)
    return encoder, decoder


def decoder_level_channels(backbone: nn.Module, decoder_level: int) -> tuple[int, int]:
    """(index actually used, channels) of decoder feature ``decoder_level`` (clamped to the
    backbone's deepest-to-shallowest list, e.g. one entry for segmentation-models-pytorch)."""
    level = min(decoder_level, len(backbone.decoder_channels) - 1)
    return level, int(backbone.decoder_channels[level])


class GlobalProjection(nn.Module):
    """g1: global average pooling of the deepest encoder feature, then a two-layer MLP."""

    def __init__(self, in_channels: int, hidden: int, out: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.mlp(feat.float().mean(dim=(2, 3)))


class PretrainFinetune(Method):
    """Three stages sharing the iteration budget: ``global`` (encoder + projection ``g1`` on
    unlabeled slices), ``local`` (the subclass's local contrast), ``finetune`` (the whole
    ``student`` on labeled slices with the supervised loss only).

    The config has ``global_fraction`` and ``local_fraction``; the subclass builds ``student``,
    ``g1`` and ``encoder_params`` and implements ``global_loss``, ``local_loss`` and
    ``local_parameters``. ``local_uses_labels`` says whether the local stage reads labels; when
    it does not, its loss is the step's unlabeled term.
    """

    local_uses_labels: bool = False
    display_name: str = ""

    def __init__(self, cfg, ctx):
        fractions = (cfg.global_fraction, cfg.local_fraction)
        if min(fractions) <= 0 or sum(fractions) >= 1:
            raise ValueError(f"{self.display_name}: global_fraction and local_fraction must be > 0 "
                             f"and sum to < 1 (got {cfg.global_fraction} and {cfg.local_fraction})")
        super().__init__(cfg, ctx)

    def stages(self):
        cfg = self.cfg
        return [Stage("global", cfg.global_fraction, uses_labels=False),
                Stage("local", cfg.local_fraction, uses_labels=self.local_uses_labels),
                Stage("finetune", 1.0 - cfg.global_fraction - cfg.local_fraction)]

    def local_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def trainable_parameters(self):
        if self.stage == "global":
            return self.encoder_params + list(self.g1.parameters())
        if self.stage == "local":
            return self.local_parameters()
        return list(self.student.parameters())

    def training_step(self, batch, step):
        if self.stage == "global":
            loss = self.global_loss(batch)
            return StepOutput(loss=loss, unsup=loss, terms={"global_contrast": loss.detach()})
        if self.stage == "local":
            loss = self.local_loss(batch)
            unsup = None if self.local_uses_labels else loss
            return StepOutput(loss=loss, unsup=unsup, terms={"local_contrast": loss.detach()})
        sup = self.supervised_loss(self.student(batch.x_lb), batch.y_lb)
        return StepOutput(loss=sup, terms={"sup": sup.detach()})

    def global_embeddings(self, batch) -> torch.Tensor:
        """g1 embeddings of two strong augmentations of the raw unlabeled slices, laid out
        [view 1 of the N slices, view 2 of them]."""
        aug, g = self.ctx.augment, self.ctx.generator
        views = torch.cat([aug.strong(batch.x_ulb_raw, None, g)[0],
                           aug.strong(batch.x_ulb_raw, None, g)[0]])
        return self.g1(self.student.encode(views)[-1])

    def global_loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def local_loss(self, batch) -> torch.Tensor:
        raise NotImplementedError
