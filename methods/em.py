"""EM: entropy minimisation (Vu, Jain, Bucher, Cord & Perez, "ADVENT: Adversarial Entropy
Minimization for Domain Adaptation in Semantic Segmentation", CVPR 2019, the "MinEnt" loss).

The unlabeled term is ADVENT's direct entropy minimisation (MinEnt): the pixel-wise entropy of
the softmax normalised by log C (values in [0, 1]), averaged over pixels. Its weight ramps up
with a sigmoid over ``rampup`` of the budget.

Which pixels (``variant``): ``paper`` averages over the unlabeled slices only (MinEnt is the
unlabeled-target term of ADVENT); ``ssl4mis``, the field's semi-supervised code
(``train_entropy_minimization_2D.py`` of SSL4MIS, ``losses.entropy_loss(outputs_soft, C=4)``),
averages it over the whole batch, labeled and unlabeled slices together.

Weight: ADVENT's lambda_ent = 0.001 was tuned for GTA5 -> Cityscapes adaptation, next to an
adversarial term, without ramp-up; it has no value for semi-supervised medical segmentation.
Both variants use SSL4MIS's weight, 0.1 with a sigmoid ramp-up over the whole budget (SSL4MIS
ramps it as 0.1 sigmoid_rampup(iter // 150, 200) over its 30k iterations; a protocol sets that
form through the run's ``rampup``); ``--set method.weight=0.001`` gives ADVENT's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.losses import entropy_map
from ssl_bench.registry import register_method

from .base import Method, StepOutput
from .variant import check_variant

VARIANTS = ("paper", "ssl4mis")


@dataclass
class EMConfig:
    variant: str = "paper"  # paper: entropy of the unlabeled slices; ssl4mis: of the whole batch
    weight: float = 0.1
    rampup: float = 1.0  # fraction of the (stage's) iteration budget


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of -sum_c p_c log p_c / log C."""
    return entropy_map(logits, normalise=True).mean()


@register_method("em", description="Entropy minimisation of the softmax on unlabeled slices",
                 paper="Vu et al., ADVENT, CVPR 2019")
class EntropyMinimisation(Method):
    Config = EMConfig
    paper = "Vu et al., ADVENT, CVPR 2019"
    display_name = "EM"

    def __init__(self, cfg: EMConfig, ctx):
        check_variant("em", cfg.variant, VARIANTS)
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()

    def modules(self):
        return {"student": self.student}

    def training_step(self, batch, step):
        n_lb = batch.x_lb.shape[0]
        logits = self.student(torch.cat([batch.x_lb, batch.x_ulb]))
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        ent = entropy_loss(logits if self.cfg.variant == "ssl4mis" else logits[n_lb:])
        w = self.cfg.weight * self.ramp(step, self.cfg.rampup)
        return StepOutput(loss=sup + w * ent, unsup=ent,
                          terms={"sup": sup.detach(), "entropy": ent.detach(), "w_ent": w})
