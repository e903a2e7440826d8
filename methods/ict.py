"""ICT: interpolation consistency training (Verma, Kawaguchi, Lamb, Kannala, Bengio &
Lopez-Paz, "Interpolation Consistency Training for Semi-Supervised Learning", IJCAI 2019).

The student's prediction on a mixup of two unlabeled slices is pulled towards the same mixup of
the EMA teacher's predictions on the two slices:
  u_mix = lam u_j + (1 - lam) u_k,   target = lam T(u_j) + (1 - lam) T(u_k),
  L_u = MSE(softmax(S(u_mix)), target)  (element-wise mean),   lam ~ Beta(alpha, alpha).
T(.) are the teacher's softmax probabilities, as the paper writes it (the authors' code mixes
the teacher's logits before the softmax instead).

``variant="paper"`` (the paper's CIFAR-10 setting, the values its code ships): one lam per
batch, u_k a random permutation of the unlabeled batch, alpha = 1.0, maximum weight 100 with a
sigmoid ramp-up over the first quarter of the budget, EMA momentum 0.999.
``variant="ssl4mis"`` (the field's medical code): the unlabeled batch is split in two halves that
are mixed pairwise with one lam per pair, alpha = 0.2, weight 0.1 ramped over the whole budget,
momentum 0.99. Fields left at None take the variant's value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_bench.ema import make_teacher
from ssl_bench.registry import register_method
from ssl_bench.sampling import to_device  # CPU draws reach a GPU without a host sync

from .base import Method, StepOutput
from .variant import check_variant, resolved

VARIANTS = {
    "paper": {"alpha": 1.0, "consistency": 100.0, "rampup": 0.25, "ema_momentum": 0.999},
    "ssl4mis": {"alpha": 0.2, "consistency": 0.1, "rampup": 1.0, "ema_momentum": 0.99},
}


@dataclass
class ICTConfig:
    variant: str = "paper"
    alpha: float | None = None  # Beta(alpha, alpha); None: paper 1.0, ssl4mis 0.2
    consistency: float | None = None  # None: paper 100, ssl4mis 0.1
    rampup: float | None = None  # fraction of the budget; None: paper 0.25, ssl4mis 1.0
    ema_momentum: float | None = None  # None: paper 0.999, ssl4mis 0.99


def mix(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam a + (1 - lam) b, with ``lam`` a scalar or one value per sample."""
    lam = lam.to(a.dtype).view(-1, *([1] * (a.dim() - 1))) if lam.dim() else lam.to(a.dtype)
    return lam * a + (1 - lam) * b


def ict_consistency(student_logits_mix: torch.Tensor, teacher_probs_mix: torch.Tensor) -> torch.Tensor:
    """MSE between the student's softmax on the mix and the mixed teacher probabilities."""
    return F.mse_loss(student_logits_mix.float().softmax(1), teacher_probs_mix.detach().float())


def sample_beta(alpha: float, n: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Beta(alpha, alpha) draws (a scalar when ``n`` is None), seeded from ``generator``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    draw = np.random.default_rng(seed).beta(alpha, alpha, size=n)
    return torch.as_tensor(draw, dtype=torch.float32)


@register_method("ict", description="Interpolation consistency: student on mixed slices, mixed EMA-teacher targets",
                 paper="Verma et al., IJCAI 2019")
class ICT(Method):
    Config = ICTConfig
    paper = "Verma et al., IJCAI 2019"
    display_name = "ICT"

    def __init__(self, cfg: ICTConfig, ctx):
        check_variant("ict", cfg.variant, VARIANTS)
        super().__init__(cfg, ctx)
        self.alpha = resolved(cfg, "alpha", VARIANTS)
        self.consistency = resolved(cfg, "consistency", VARIANTS)
        self.rampup = resolved(cfg, "rampup", VARIANTS)
        self.momentum = resolved(cfg, "ema_momentum", VARIANTS)
        self.student = ctx.make_backbone()
        self.teacher = make_teacher(self.student)

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def teachers(self):
        return {"teacher": (self.teacher, self.student, self.momentum)}

    def mixup(self, u: torch.Tensor):
        """(mixed unlabeled inputs, their mixed teacher targets) for one step."""
        g = self.ctx.generator
        with torch.no_grad():
            t_probs = self.teacher(u).float().softmax(1)
        if self.cfg.variant == "paper":
            lam = to_device(sample_beta(self.alpha, None, g), u.device)
            perm = to_device(torch.randperm(u.shape[0], generator=g), u.device)
            return mix(u, u[perm], lam), mix(t_probs, t_probs[perm], lam)
        half = u.shape[0] // 2
        if half == 0:
            raise ValueError("ict (variant ssl4mis) needs at least 2 unlabeled slices per batch")
        lam = to_device(sample_beta(self.alpha, half, g), u.device)
        a, b = slice(0, half), slice(half, 2 * half)
        return mix(u[a], u[b], lam), mix(t_probs[a], t_probs[b], lam)

    def training_step(self, batch, step):
        n_lb = batch.x_lb.shape[0]
        u_mix, target = self.mixup(batch.x_ulb)
        logits = self.student(torch.cat([batch.x_lb, u_mix]))
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        cons = ict_consistency(logits[n_lb:], target)
        w = self.consistency * self.ramp(step, self.rampup)
        return StepOutput(loss=sup + w * cons, unsup=cons,
                          terms={"sup": sup.detach(), "consistency": cons.detach(), "w_cons": w})
