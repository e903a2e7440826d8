"""UAMT: uncertainty-aware mean teacher (Yu, Wang, Li, Fu & Heng, "Uncertainty-aware
Self-ensembling Model for Semi-supervised 3D Left Atrium Segmentation", MICCAI 2019).

A mean teacher (EMA momentum 0.99) whose consistency target is filtered by the teacher's
uncertainty. The teacher makes T = 8 stochastic passes over the unlabeled slices (dropout active
and Gaussian input noise N(0, 0.1) clipped to +-0.2 on every pass); the uncertainty is the
predictive entropy u = -sum_c mu_c log mu_c of their mean mu. Only pixels with u below a
threshold H contribute:
  L_c = sum_v [u_v < H] ||p_s(v) - p_t(v)||^2 / sum_v [u_v < H]
with p_s the student's softmax on the (clean) slice and p_t the teacher's on a noisy copy.
H ramps from 0.75 U_max to U_max over the budget, H = (0.75 + 0.25 r(t)) U_max with r the
sigmoid ramp-up, and U_max = ln C is the largest entropy for C classes. The consistency weight
is 0.1 with the same sigmoid ramp-up over the budget (the paper's t_max is the last step).

``variant="ln2"`` is the widely used code (the authors' and SSL4MIS's), written for binary left
atrium segmentation: U_max = ln 2 whatever C, and the masked squared error is divided by
2 sum_v [u_v < H] (its channel sum halved, the mean over the two classes of the binary case).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssl_bench.registry import register_method
from ssl_bench.schedules import sigmoid_rampup

from .base import StepOutput
from .mt import MeanTeacher, input_noise

VARIANTS = ("paper", "ln2")


@dataclass
class UAMTConfig:
    variant: str = "paper"
    ema_momentum: float = 0.99
    consistency: float = 0.1
    rampup: float = 1.0  # fraction of the budget, for the weight and the threshold
    mc_passes: int = 8  # T
    noise_std: float = 0.1
    noise_clip: float = 0.2


def predictive_entropy(prob_samples: torch.Tensor) -> torch.Tensor:
    """(T, B, C, H, W) softmax samples -> (B, H, W) entropy of their mean (natural log)."""
    mean = prob_samples.float().mean(0)
    return -(mean * mean.clamp_min(1e-12).log()).sum(1)


def uncertainty_threshold(step: int, total: float, num_classes: int, variant: str = "paper") -> float:
    """H(t) = (0.75 + 0.25 sigmoid_rampup(t, total)) U_max, U_max = ln C (ln 2 for "ln2")."""
    u_max = math.log(2.0) if variant == "ln2" else math.log(num_classes)
    return (0.75 + 0.25 * sigmoid_rampup(step, total)) * u_max


def masked_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                       variant: str = "paper") -> torch.Tensor:
    """sum_v mask_v sum_c (p_s - p_t)^2 / sum_v mask_v (the "ln2" variant divides by 2 sum mask)."""
    diff = (student_logits.float().softmax(1) - teacher_logits.detach().float().softmax(1)) ** 2
    masked = (diff.sum(1) * mask).sum()
    if variant == "ln2":
        return masked / (2 * mask.sum() + 1e-16)
    return masked / (mask.sum() + 1e-16)


@register_method("uamt", description="Uncertainty-aware mean teacher: MC-dropout entropy masks the consistency",
                 paper="Yu et al., MICCAI 2019")
class UAMT(MeanTeacher):
    """Mean Teacher's student, EMA teacher and noise; only the consistency term differs."""

    Config = UAMTConfig
    paper = "Yu et al., MICCAI 2019"
    display_name = "UAMT"

    registry_name, variants = "uamt", VARIANTS

    def __init__(self, cfg: UAMTConfig, ctx):
        if cfg.mc_passes < 1:
            raise ValueError(f"uamt: mc_passes must be >= 1 (got {cfg.mc_passes})")
        super().__init__(cfg, ctx)  # the student and its EMA teacher (cfg.ema_momentum)

    @torch.no_grad()
    def teacher_uncertainty(self, u: torch.Tensor) -> torch.Tensor:
        """Predictive entropy of T noisy teacher passes; dropout is active in train mode."""
        cfg = self.cfg
        samples = torch.stack([self.teacher(input_noise(u, cfg.noise_std, cfg.noise_clip)).float().softmax(1)
                               for _ in range(cfg.mc_passes)])
        return predictive_entropy(samples)

    def training_step(self, batch, step):
        cfg = self.cfg
        n_lb = batch.x_lb.shape[0]
        u = batch.x_ulb
        logits = self.student(torch.cat([batch.x_lb, u]))
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        with torch.no_grad():
            t_logits = self.teacher(input_noise(u, cfg.noise_std, cfg.noise_clip))
        uncertainty = self.teacher_uncertainty(u)
        total = cfg.rampup * self.ctx.total_iterations
        threshold = uncertainty_threshold(step, total, self.ctx.num_classes, cfg.variant)
        mask = (uncertainty < threshold).float()
        cons = masked_consistency(logits[n_lb:], t_logits, mask, cfg.variant)
        w = cfg.consistency * self.ramp(step, cfg.rampup)
        return StepOutput(loss=sup + w * cons, unsup=cons,
                          terms={"sup": sup.detach(), "consistency": cons.detach(), "w_cons": w,
                                 "threshold": threshold, "mask_fraction": mask.mean()})
