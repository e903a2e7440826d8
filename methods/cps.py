"""CPS: cross pseudo supervision (Chen, Yuan, Zeng & Wang, "Semi-supervised semantic segmentation
with cross pseudo supervision", CVPR 2021).

Two networks of the same architecture, initialised differently, see the same images. Each is
trained with the supervised loss on labeled slices and with cross-entropy towards the *other*
network's hard pseudo-labels (argmax, detached):

    L = L_sup(f1) + L_sup(f2) + lambda * [CE(p1, argmax p2) + CE(p2, argmax p1)].

``variant="paper"`` (default): the cross term covers labeled and unlabeled images (the paper's
L_cps^l + L_cps^u), averaged over all their pixels together as the authors' released code does;
lambda = 1.5 (their PASCAL VOC value; Cityscapes used 6), constant: no ramp-up in the paper.
The second network is built under its own random seed (drawn from the run's generator), so the
two start from different weights of the same default initialisation.

``variant="ssl4mis"``: the widely used SSL4MIS re-implementation behind the ACDC tables
(HiLab-git/SSL4MIS ``code/train_cross_pseudo_supervision_2D.py`` since 9a74d15, 2021-12-16, the
code the 2022-era tables ran): cross term on unlabeled images only, lambda = 0.1 ramped up with a
sigmoid over the whole budget (200 "epochs" of 150 iterations = its 30k iterations), both
networks with PyTorch's default initialisation (two ``create_model()`` calls).
``variant="ssl4mis-2021"``: the same script before 9a74d15 ("fixed a bug for CPS" removed this):
the two networks' convolution weights re-initialised Kaiming-normal and Xavier-normal
respectively, BatchNorm to identity. (ssl-bench's ``ssl4mis`` had this form until issue 16;
protocol ``field`` v1 selects it.)
``cps_weight`` / ``rampup`` override the variant's values when set.

The supervised term is the harness's 0.5 (CE + Dice) for both variants; inference uses the
first network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.registry import register_method

from .base import Method, StepOutput
from .variant import check_variant

VARIANTS = {
    # variant: (cps weight, ramp-up fraction of the budget, cross term on labeled images too,
    #           Kaiming/Xavier re-initialisation)
    "paper": (1.5, 0.0, True, False),
    "ssl4mis": (0.1, 1.0, False, False),
    "ssl4mis-2021": (0.1, 1.0, False, True),
}


@dataclass
class CPSConfig:
    variant: str = "paper"  # paper | ssl4mis (default init) | ssl4mis-2021 (Kaiming/Xavier init)
    cps_weight: float | None = None  # None: the variant's (1.5 paper, 0.1 ssl4mis*)
    rampup: float | None = None  # fraction of the budget; None: the variant's (0 paper, 1.0 ssl4mis*)


def cross_pseudo_losses(logits_a: torch.Tensor, logits_b: torch.Tensor):
    """(CE(a, argmax b), CE(b, argmax a)): each network learns from the other's hard labels.

    The pseudo-labels are taken from detached logits, so each loss sends gradients only into
    the network whose prediction it scores.
    """
    pseudo_a = logits_a.detach().argmax(1)
    pseudo_b = logits_b.detach().argmax(1)
    return F.cross_entropy(logits_a.float(), pseudo_b), F.cross_entropy(logits_b.float(), pseudo_a)


def _init_convs(net: nn.Module, init) -> nn.Module:
    """SSL4MIS's initialisation: ``init`` on conv weights, BatchNorm to identity."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            init(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


@register_method("cps", paper="Chen et al., CVPR 2021",
                 description="Cross pseudo supervision: two networks teach each other hard labels")
class CPS(Method):
    Config = CPSConfig
    paper = "Chen et al., CVPR 2021"
    display_name = "CPS"

    def __init__(self, cfg: CPSConfig, ctx):
        check_variant("cps", cfg.variant, VARIANTS)
        super().__init__(cfg, ctx)
        default_weight, default_rampup, self.cross_on_labeled, kaiming_xavier = VARIANTS[cfg.variant]
        self.cps_weight = default_weight if cfg.cps_weight is None else cfg.cps_weight
        self.rampup = default_rampup if cfg.rampup is None else cfg.rampup
        self.net1 = ctx.make_backbone()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the second network's own seed
            self.net2 = ctx.make_backbone()
        if kaiming_xavier:
            _init_convs(self.net1, nn.init.kaiming_normal_)
            _init_convs(self.net2, nn.init.xavier_normal_)

    def modules(self):
        return {"net1": self.net1, "net2": self.net2}

    def predictor(self):
        return self.net1

    def training_step(self, batch, step):
        n_lb = batch.x_lb.shape[0]
        x = torch.cat([batch.x_lb, batch.x_ulb])
        logits1, logits2 = self.net1(x), self.net2(x)
        sup = self.supervised_loss(logits1[:n_lb], batch.y_lb) + self.supervised_loss(logits2[:n_lb], batch.y_lb)
        start = 0 if self.cross_on_labeled else n_lb
        cps_1, cps_2 = cross_pseudo_losses(logits1[start:], logits2[start:])
        cps = cps_1 + cps_2
        w = self.cps_weight * self.ramp(step, self.rampup)
        return StepOutput(loss=sup + w * cps, unsup=cps,
                          terms={"sup": sup.detach(), "cps": cps.detach(), "w_cps": w})
