"""URPC: uncertainty rectified pyramid consistency (Luo, Liao, Chen, Song, Chen, Zhang, Chen,
Wang & Zhang, "Efficient Semi-Supervised Gross Target Volume of Nasopharyngeal Carcinoma
Segmentation via Uncertainty Rectified Pyramid Consistency", MICCAI 2021; extended in Luo et al.,
Medical Image Analysis 80, 2022).

Pyramid predictions: besides the main head, a 1x1 convolution head on each deeper decoder level
(for the U-Net: 128, 64 and 32 channels at 1/8, 1/4 and 1/2 resolution) predicts the
segmentation, upsampled to the input size, so S = 4 scales. As in the authors' code the head
inputs are perturbed during training: dropout (p = 0.5) on the deepest, F-Drop (gamma ~ U(0.7,
0.9)) on the next and F-Noise (U(-0.3, 0.3)) on the shallowest auxiliary level. The supervised
loss is averaged over the S scales.

Unlabeled term, the paper's Eq. 4 with its uncertainty D_s and weights w_s
(``variant="paper"``): with p_s the scale-s softmax and p_c = mean_s p_s,
  D_s = sum_c p_s log(p_s / p_c)          (KL(p_s || p_c), the uncertainty of scale s)
  w_s = exp(-D_s)
  L = 1/S sum_s [ sum_v w_s ||p_s - p_c||^2 / sum_v w_s ] + 1/S sum_s mean_v D_s
where ||.||^2 sums over classes and sum_v runs over the pixels of one image (then averaged over
images). ``variant="ssl4mis"`` is the widely used SSL4MIS code: it computes the KL the other way
round, KL(p_c || p_s) (``KLDivLoss(log p_s, p_c)``), averages the squared difference over classes
instead of summing it, and normalises by the weights' mean over the whole batch; its heads are
3x3 convolutions, upsampled with nearest neighbours. Both variants use element-wise dropout
p = 0.5 on the deepest auxiliary level (SSL4MIS's ``Decoder_URPC`` calls ``Dropout(x, p=0.5)``
explicitly; the p = 0.3 default of its ``Dropout`` helper is what its CCT decoders use). The
weight of the unlabeled term is 0.1 with a sigmoid ramp-up over the budget (both).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.registry import register_method

from . import perturbations as P
from .base import Method, StepOutput
from .variant import check_variant, resolved

VARIANTS = {
    "paper": {"head_kernel": 1, "upsample_mode": "bilinear", "dropout_rate": 0.5},
    "ssl4mis": {"head_kernel": 3, "upsample_mode": "nearest", "dropout_rate": 0.5},
}
HEAD_PERTURBATIONS = ("dropout", "feature_drop", "feature_noise")  # deep to shallow


@dataclass
class URPCConfig:
    variant: str = "paper"
    consistency: float = 0.1
    rampup: float = 1.0  # fraction of the budget
    # None: the variant's value (paper: 1x1 heads, bilinear; ssl4mis: 3x3, nearest; both dropout 0.5)
    head_kernel: int | None = None
    upsample_mode: str | None = None
    dropout_rate: float | None = None


def urpc_loss(probs: list[torch.Tensor], variant: str = "paper") -> torch.Tensor:
    """Uncertainty-rectified pyramid consistency of softmax maps ``probs`` (each (B, C, H, W))."""
    stack = torch.stack([p.float() for p in probs])  # (S, B, C, H, W)
    p_c = stack.mean(0, keepdim=True)
    log_s = stack.clamp_min(1e-8).log()
    log_c = p_c.clamp_min(1e-8).log()
    sq = (stack - p_c) ** 2
    if variant == "paper":
        kl = (stack * (log_s - log_c)).sum(2)  # (S, B, H, W): KL(p_s || p_c)
        w = torch.exp(-kl)
        rectified = (w * sq.sum(2)).sum((2, 3)) / w.sum((2, 3))  # per scale and image
        return rectified.mean() + kl.mean()
    if variant == "ssl4mis":
        kl = (p_c * (log_c - log_s)).sum(2, keepdim=True)  # (S, B, 1, H, W): KL(p_c || p_s)
        w = torch.exp(-kl)
        per_scale = (sq * w).mean((1, 2, 3, 4)) / (w.mean((1, 2, 3, 4)) + 1e-8) + kl.mean((1, 2, 3, 4))
        return per_scale.mean()
    raise ValueError(f"urpc: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


@register_method("urpc", description="Uncertainty-rectified consistency between multi-scale decoder predictions",
                 paper="Luo et al., MICCAI 2021")
class URPC(Method):
    Config = URPCConfig
    paper = "Luo et al., MICCAI 2021"
    display_name = "URPC"

    def __init__(self, cfg: URPCConfig, ctx):
        check_variant("urpc", cfg.variant, VARIANTS)
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        chans = list(self.student.decoder_channels)[:-1]  # the last level feeds the main head
        if not chans:
            raise ValueError(f"urpc: backbone {ctx.backbone!r} exposes a single decoder level; "
                             "URPC needs a multi-level decoder such as 'unet'")
        k = resolved(cfg, "head_kernel", VARIANTS)
        self.upsample_mode = resolved(cfg, "upsample_mode", VARIANTS)
        self.dropout_rate = resolved(cfg, "dropout_rate", VARIANTS)
        if self.upsample_mode not in ("bilinear", "nearest"):
            raise ValueError(f"urpc: upsample_mode {self.upsample_mode!r}; use 'bilinear' or 'nearest'")
        self.heads = nn.ModuleList(nn.Conv2d(c, ctx.num_classes, k, padding=k // 2) for c in chans)
        # the deepest auxiliary level gets the first perturbation, and so on
        self.head_perturbations = [HEAD_PERTURBATIONS[min(i, len(HEAD_PERTURBATIONS) - 1)]
                                   for i in range(len(chans))]

    def modules(self):
        return {"student": self.student, "heads": self.heads}

    def _perturb(self, kind: str, f: torch.Tensor) -> torch.Tensor:
        if kind == "dropout":
            return F.dropout(f, self.dropout_rate, training=True)
        if kind == "feature_drop":
            return P.feature_drop(f, 0.7, 0.9)
        return P.feature_noise(f, 0.3)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits at every scale at input size: the main head first, then deep to shallow."""
        logits, _, dec = self.student.forward_features(x)
        out = [logits]
        for head, kind, f in zip(self.heads, self.head_perturbations, dec):
            aux = head(self._perturb(kind, f))
            mode = self.upsample_mode
            out.append(F.interpolate(aux, size=x.shape[-2:], mode=mode,
                                     **({"align_corners": False} if mode == "bilinear" else {})))
        return out

    def training_step(self, batch, step):
        n_lb = batch.x_lb.shape[0]
        scales = self.pyramid(torch.cat([batch.x_lb, batch.x_ulb]))
        sup = torch.stack([self.supervised_loss(s[:n_lb], batch.y_lb) for s in scales]).mean()
        cons = urpc_loss([s[n_lb:].float().softmax(1) for s in scales], self.cfg.variant)
        w = self.cfg.consistency * self.ramp(step, self.cfg.rampup)
        return StepOutput(loss=sup + w * cons, unsup=cons,
                          terms={"sup": sup.detach(), "urpc": cons.detach(), "w_cons": w})
