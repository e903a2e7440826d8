"""Mean Teacher (Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017).

The teacher is an EMA of the student (momentum 0.99). The student sees the unlabeled slice with
Gaussian input noise added, the teacher sees the same slice with its own noise; the consistency
term is the MSE between their softmax outputs, weighted by ``consistency`` times a sigmoid
ramp-up over ``rampup`` of the budget.

``variant="ssl4mis"``: SSL4MIS's ``train_mean_teacher_2D.py`` (the code behind the field's MT
rows) feeds the student the clean slice and only the teacher a noisy copy; the paper's form
(default) gives each network its own noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.ema import make_teacher
from ssl_bench.losses import softmax_mse
from ssl_bench.registry import register_method

from .base import Method, StepOutput
from .variant import check_variant


VARIANTS = ("paper", "ssl4mis")


@dataclass
class MTConfig:
    variant: str = "paper"
    ema_momentum: float = 0.99
    consistency: float = 0.1
    rampup: float = 0.4  # fraction of the iteration budget
    noise_std: float = 0.1
    noise_clip: float = 0.2


def input_noise(x: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    return x + (torch.randn_like(x) * std).clamp(-clip, clip)


@register_method("mt", description="Mean Teacher: EMA teacher, softmax-MSE consistency on noisy inputs",
                 paper="Tarvainen & Valpola, NeurIPS 2017")
class MeanTeacher(Method):
    Config = MTConfig
    paper = "Tarvainen & Valpola, NeurIPS 2017"
    registry_name, variants = "mt", VARIANTS

    def __init__(self, cfg: MTConfig, ctx):
        check_variant(self.registry_name, cfg.variant, self.variants)
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        self.teacher = make_teacher(self.student)

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def teachers(self):
        return {"teacher": (self.teacher, self.student, self.cfg.ema_momentum)}

    def training_step(self, batch, step):
        cfg = self.cfg
        n_lb = batch.x_lb.shape[0]
        u_student = batch.x_ulb if cfg.variant == "ssl4mis" else input_noise(batch.x_ulb, cfg.noise_std, cfg.noise_clip)
        x = torch.cat([batch.x_lb, u_student])
        logits = self.student(x)
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        with torch.no_grad():
            t_logits = self.teacher(input_noise(batch.x_ulb, cfg.noise_std, cfg.noise_clip))
        cons = softmax_mse(logits[n_lb:], t_logits)
        w = cfg.consistency * self.ramp(step, cfg.rampup)
        return StepOutput(loss=sup + w * cons, unsup=cons,
                          terms={"sup": sup.detach(), "consistency": cons.detach(), "w_cons": w})
