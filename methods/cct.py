"""CCT: cross-consistency training (Ouali, Hudelot & Tami, "Semi-Supervised Semantic
Segmentation with Cross-Consistency Training", CVPR 2020).

A shared encoder feeds the main decoder and K auxiliary decoders. On unlabeled slices each
auxiliary decoder sees a *perturbed* copy of the encoder features and is pulled towards the
main decoder's prediction (softmax MSE); the main decoder's output is the detached target, so
the consistency trains the encoder and the auxiliary decoders, and the main decoder learns from
labels only. The auxiliary decoders are not trained on labeled slices (the paper's objective
and the authors' code). Weight: lambda_u = 30, sigmoid ramp-up over the first 10% of the budget
(the authors' configuration).

Auxiliary decoders (``variant="paper"``), K = 30 as in the paper's configuration:
2 I-VAT, 6 DropOut (spatial, p = 0.5), 6 G-Cutout (40% of each object's box), 2 Con-Msk
(context masked, objects kept), 2 Obj-Msk (objects masked), 6 F-Drop (gamma ~ U(0.6, 0.9)),
6 F-Noise (U(-0.3, 0.3)). The paper perturbs the single encoder output of a PSPNet; the U-Net
decoder also reads the skip features, so every encoder level is perturbed (perturbing only the
deepest one would let the decoder bypass it through the skips). The masks of the
prediction-based perturbations come from the main decoder's prediction, resized to each level.
The cost grows with K (30 decoder passes per step): the counts are config fields.
I-VAT: one power iteration, eps = 2.0 per sample and level, xi = 0.1 (the default of the CCT
code's VAT decoder). The CCT config's xi = 1e-6 rounds away in float32 on these features (they
have no exact zeros, unlike ReLU outputs), which gives an exactly zero adversarial direction.

``variant="ssl4mis"`` is the SSL4MIS "UNet_CCT" used by the field's medical tables: three
auxiliary decoders (F-Noise, element-wise dropout p = 0.3, F-Drop with gamma ~ U(0.7, 0.9)) on
all levels, every decoder also trained on labeled slices (supervised loss averaged over the
four), the main prediction *not* detached in the consistency, weight 0.1 ramped over the budget.
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
    "paper": {"unsup_weight": 30.0, "rampup": 0.1},
    "ssl4mis": {"unsup_weight": 0.1, "rampup": 1.0},
}
SSL4MIS_DECODERS = ["feature_noise", "dropout", "feature_drop"]


@dataclass
class CCTConfig:
    variant: str = "paper"
    unsup_weight: float | None = None  # None: the variant's value (paper 30, ssl4mis 0.1)
    rampup: float | None = None  # fraction of the budget; None: paper 0.1, ssl4mis 1.0
    # auxiliary decoders per perturbation (variant "paper"; K = 30)
    n_vat: int = 2
    n_dropout: int = 6
    n_cutout: int = 6
    n_context_mask: int = 2
    n_object_mask: int = 2
    n_feature_drop: int = 6
    n_feature_noise: int = 6
    dropout_rate: float = 0.5
    uniform_range: float = 0.3
    erase: float = 0.4
    vat_xi: float = 0.1  # the CCT code's VAT default; its config's 1e-6 gives a zero direction here
    vat_eps: float = 2.0


def cct_consistency(main_logits: torch.Tensor, aux_logits: list[torch.Tensor],
                    detach_main: bool = True) -> torch.Tensor:
    """Mean over auxiliary decoders of MSE(softmax(aux), softmax(main)), element-wise mean."""
    target = main_logits.float().softmax(1)
    if detach_main:
        target = target.detach()
    return torch.stack([F.mse_loss(a.float().softmax(1), target) for a in aux_logits]).mean()


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@register_method("cct", description="CCT: auxiliary decoders on perturbed features agree with the main decoder",
                 paper="Ouali et al., CVPR 2020")
class CCT(Method):
    Config = CCTConfig
    paper = "Ouali et al., CVPR 2020"
    display_name = "CCT"

    def __init__(self, cfg: CCTConfig, ctx):
        check_variant("cct", cfg.variant, VARIANTS)
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        if cfg.variant == "paper":
            counts = {"vat": cfg.n_vat, "dropout": cfg.n_dropout, "cutout": cfg.n_cutout,
                      "context_mask": cfg.n_context_mask, "object_mask": cfg.n_object_mask,
                      "feature_drop": cfg.n_feature_drop, "feature_noise": cfg.n_feature_noise}
            self.aux_kinds = [k for k, n in counts.items() for _ in range(n)]
        else:
            self.aux_kinds = list(SSL4MIS_DECODERS)
        if not self.aux_kinds:
            raise ValueError("cct: no auxiliary decoder configured; set at least one n_<perturbation> > 0")
        self.aux_decoders = nn.ModuleList(self.student.new_decoder() for _ in self.aux_kinds)
        self.unsup_weight = resolved(cfg, "unsup_weight", VARIANTS)
        self.rampup = resolved(cfg, "rampup", VARIANTS)

    def modules(self):
        return {"student": self.student, "aux_decoders": self.aux_decoders}

    def perturb(self, kind: str, feats: list[torch.Tensor], main_logits: torch.Tensor,
                decoder: nn.Module, cutout: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The encoder features as auxiliary decoder ``decoder`` of type ``kind`` sees them
        (``cutout``: this decoder's G-Cutout mask, when the step has drawn it already)."""
        cfg = self.cfg
        ssl4mis = cfg.variant == "ssl4mis"
        if kind == "feature_noise":
            return [P.feature_noise(f, cfg.uniform_range) for f in feats]
        if kind == "feature_drop":
            low = 0.7 if ssl4mis else 0.6
            return [P.feature_drop(f, low, 0.9) for f in feats]
        if kind == "dropout":
            if ssl4mis:
                return [F.dropout(f, 0.3, training=True) for f in feats]
            return [F.dropout2d(f, cfg.dropout_rate, training=True) for f in feats]
        if kind in ("context_mask", "object_mask"):
            obj = P.object_mask(main_logits.detach())
            keep = obj if kind == "context_mask" else 1.0 - obj
            return [f * P.resize_mask(keep, f) for f in feats]
        if kind == "cutout":
            keep = cutout if cutout is not None else P.guided_cutout_mask(
                main_logits.detach(), cfg.erase, generator=self.ctx.generator)
            return [f * P.resize_mask(keep, f) for f in feats]
        if kind == "vat":
            r = P.vat_perturbation(lambda z: _logits(decoder(z)), feats, cfg.vat_xi, cfg.vat_eps)
            return [f + d for f, d in zip(feats, r)]
        raise ValueError(f"cct: unknown perturbation {kind!r}")

    def training_step(self, batch, step):
        n_lb = batch.x_lb.shape[0]
        x = torch.cat([batch.x_lb, batch.x_ulb])
        feats = self.student.encode(x)
        main_logits, _ = self.student.decode(feats)
        if self.cfg.variant == "paper":
            # auxiliary decoders see unlabeled features only; the main prediction is the target
            feats_aux = [f[n_lb:] for f in feats]
            main_aux = main_logits[n_lb:]
        else:
            feats_aux, main_aux = feats, main_logits
        # the G-Cutout decoders' masks from one labelling of the prediction (review D2)
        n_cut = self.aux_kinds.count("cutout")
        cutouts = iter(P.guided_cutout_masks(main_aux.detach(), n_cut, self.cfg.erase,
                                             generator=self.ctx.generator) if n_cut else [])
        aux_logits = [_logits(dec(self.perturb(kind, feats_aux, main_aux, dec,
                                               next(cutouts) if kind == "cutout" else None)))
                      for kind, dec in zip(self.aux_kinds, self.aux_decoders)]
        size = x.shape[-2:]
        aux_logits = [a if a.shape[-2:] == size else F.interpolate(a, size=size, mode="bilinear")
                      for a in aux_logits]

        sup = self.supervised_loss(main_logits[:n_lb], batch.y_lb)
        if self.cfg.variant == "paper":
            cons = cct_consistency(main_logits[n_lb:], aux_logits, detach_main=True)
        else:
            sups = [sup] + [self.supervised_loss(a[:n_lb], batch.y_lb) for a in aux_logits]
            sup = torch.stack(sups).mean()
            cons = cct_consistency(main_logits[n_lb:], [a[n_lb:] for a in aux_logits], detach_main=False)
        w = self.unsup_weight * self.ramp(step, self.rampup)
        return StepOutput(loss=sup + w * cons, unsup=cons,
                          terms={"sup": sup.detach(), "consistency": cons.detach(), "w_cons": w})
