"""AD-MT: alternate diverse mean teachers (Zhao, Qi, Yang, Wang, Shi, "Alternate Diverse Teaching for
Semi-supervised Medical Image Segmentation", ECCV 2024).

One student and **two** EMA teachers. Only one teacher follows the student at a time: after each
optimiser step the active teacher takes the EMA update, and after a *random period* (drawn uniformly
from 1..``period`` steps, 50 in 2D, anew at every switch) the other teacher becomes the active one.
The two teachers therefore average different stretches of the student's trajectory.

Per step, on the weak views of the unlabeled slices:

* each teacher predicts; their probabilities are fused pixel by pixel with weights softmax(-H) of
  their entropies (H with log2): w1 = exp(-H1) / (exp(-H1) + exp(-H2)); the fused argmax is the
  pseudo-label, its maximum the confidence. The teachers conflict where their argmaxes differ;
* the perturbation alternates with the teachers: while teacher 1 is active the student sees the strong
  view (the loop's photometric augmentation); while teacher 2 is active it sees a CutMix of the weak
  views (with probability ``cutmix_prob``, 1): per slice a box from another slice of the batch (area
  fraction 1 - lambda, lambda ~ Beta(4, 4), centre uniform in [side / 8, side)), pseudo-labels,
  confidences and conflicts moved with it;
* conflict resolution (``pixel_confidence``): where the teachers conflict *and* the student's own
  weak-view prediction disagrees with the fused label, the student's label is kept if its confidence
  is higher;
* unlabeled loss: the Dice loss of the student on the perturbed images towards the pseudo-labels,
  over the pixels whose confidence is >= ``conf_threshold`` (0.95) (SSL4MIS's ``DiceLoss`` with
  ``ignore``: ``ssl_bench.losses.masked_dice_loss``), weighted by ``consistency`` (2.0) times a
  sigmoid ramp-up over ``rampup`` (0.25 of the budget: 50 "epochs" of 150 of 30k iterations).

Facts from the authors' code (ZhenZHAO/AD-MT at 03ef84c, ``cfgs/config_2d_aut.yml``,
``code/train_post_2d_aut.py``, ``code/train_utils.py``, ``code/dataloaders/mixaugs.py``,
``test_2d.sh``): 30k iterations, batch 12 + 12 at 256 px, SGD lr 0.01 with poly decay, EMA 0.99 with
momentum 0 while ``iter // 2`` < 50 (``ema_warmup``), then min(1 - 1 / (iter // 2 - 50 + 1), 0.99);
the active teacher runs in train mode and the other in eval mode when labelling; the best-on-
validation *student* is tested (``--flag_check_with_best_stu``); seed 2023. The teachers of the release
start from their own random initialisation (and copy the student at their first updates); here they
start as copies of the student.

``variant``: ``paper`` (default) compares the fused labels with the student's weak prediction moved by
the same CutMix; ``released`` compares them with the student's prediction on the *unmixed* weak view,
as the release does (inside the box the two come from different slices).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import beta as beta_dist

from ssl_bench.ema import ema_update, make_teacher
from ssl_bench.losses import masked_dice_loss
from ssl_bench.registry import register_method
from ssl_bench.sampling import to_device

from .base import Method, StepOutput
from .variant import check_variant

VARIANTS = ("paper", "released")


@dataclass
class ADMTConfig:
    variant: str = "paper"
    ema_momentum: float = 0.99
    ema_warmup: int = 50  # teachers copy the student while step // 2 < this (the release's rule)
    period: int = 50  # the longest alternation period, in optimiser steps
    random_period: bool = True  # draw each period from 1..period (else exactly `period`)
    conf_threshold: float = 0.95
    consistency: float = 2.0
    rampup: float = 0.25  # fraction of the budget
    cutmix_prob: float = 1.0
    cutmix_beta: float = 4.0


def fuse_teachers(p1: torch.Tensor, p2: torch.Tensor):
    """Entropy-weighted fusion of two teachers' probabilities (B, C, *S): (pseudo-label, confidence,
    teacher conflict), weights exp(-H_k) / (exp(-H1) + exp(-H2)), H in bits."""
    h1 = -(p1 * torch.log2(p1 + 1e-10)).sum(1, keepdim=True)
    h2 = -(p2 * torch.log2(p2 + 1e-10)).sum(1, keepdim=True)
    w1 = torch.exp(-h1) / (torch.exp(-h1) + torch.exp(-h2))
    fused = w1 * p1 + (1 - w1) * p2
    conf, label = fused.max(1)
    return label, conf, p1.argmax(1) != p2.argmax(1)


def resolve_conflicts(label, conf, label_s, conf_s, teacher_conflict):
    """``pixel_confidence``: where the teachers conflict and the student disagrees with the fused
    label, the more confident of the two is kept."""
    take = teacher_conflict & (label != label_s) & (conf_s > conf)
    return torch.where(take, label_s, label), torch.where(take, conf_s, conf), take


def cutmix_mask(n: int, spatial: tuple[int, ...], generator, device, a: float = 4.0):
    """(per-slice box masks (n, *S) bool, partner permutation (n,)). One lambda ~ Beta(a, a) per batch;
    box sides int(side * (1 - lambda)^(1/d)); per slice a centre uniform in [side // 8, side); boxes
    clipped to the image (the release's ``rand_bbox``, any number of dims)."""
    d = len(spatial)
    lam = float(beta_dist.ppf(float(torch.rand((), generator=generator)), a, a))
    rat = (1.0 - lam) ** (1.0 / d)
    mask = torch.ones(n, *spatial, dtype=torch.bool)
    for i, side in enumerate(spatial):
        cut = int(side * rat)
        centre = torch.randint(side // 8, side, (n,), generator=generator)
        lo, hi = (centre - cut // 2).clamp(0, side), (centre + cut // 2).clamp(0, side)
        pos = torch.arange(side)
        inside = (pos[None] >= lo[:, None]) & (pos[None] < hi[:, None])  # (n, side)
        mask &= inside.reshape(n, *([1] * i), side, *([1] * (d - i - 1)))
    perm = torch.randperm(n, generator=generator)
    return to_device(mask, device), to_device(perm, device)


def apply_cutmix(t: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inside each slice's box, the content of its partner slice; images (B, C, *S) or maps (B, *S)."""
    m = mask if t.dim() == mask.dim() else mask[:, None]
    return torch.where(m, t[perm], t)


@register_method("ad-mt", paper="Zhao et al., ECCV 2024",
                 description="Alternate diverse mean teachers: two EMA teachers updated in random turns, "
                             "CutMix/strong views, conflict resolution")
class ADMT(Method):
    Config = ADMTConfig
    paper = "Zhao et al., ECCV 2024"
    display_name = "AD-MT"
    #: the registry-wide contract runs on random networks, never 0.95 confident: open the gate there
    contract_overrides = {"conf_threshold": "0.0"}

    def __init__(self, cfg: ADMTConfig, ctx):
        check_variant("ad-mt", cfg.variant, VARIANTS)
        if cfg.period < 1 or not 0 <= cfg.cutmix_prob <= 1:
            raise ValueError(f"AD-MT: method.period={cfg.period} must be >= 1 and method.cutmix_prob="
                             f"{cfg.cutmix_prob} in [0, 1]")
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        self.teacher1 = make_teacher(self.student)
        self.teacher2 = make_teacher(self.student)
        self.first_active = True  # teacher 1 takes the EMA updates now
        self.counter = 0  # updates of the active teacher in the current period
        self.period = self.draw_period()

    def modules(self):
        return {"student": self.student, "teacher1": self.teacher1, "teacher2": self.teacher2}

    def draw_period(self) -> int:
        if not self.cfg.random_period:
            return self.cfg.period
        return int(torch.randint(1, self.cfg.period + 1, (1,), generator=self.ctx.generator))

    def momentum(self) -> float:
        half = self.ema_step // 2
        if half < self.cfg.ema_warmup:
            return 0.0
        return min(1.0 - 1.0 / (half - self.cfg.ema_warmup + 1), self.cfg.ema_momentum)

    def teachers(self):
        m = self.momentum()
        # the inactive teacher is held (momentum 1) this step
        return {"teacher1": (self.teacher1, self.student, m if self.first_active else 1.0),
                "teacher2": (self.teacher2, self.student, 1.0 if self.first_active else m)}

    def advance_alternation(self) -> None:
        """Switch the active teacher once its period is over (the release switches right after the
        update that ends the period; doing it before the next step is the same)."""
        if self.counter >= self.period:
            self.first_active = not self.first_active
            self.counter = 0
            self.period = self.draw_period()

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        active = self.teacher1 if self.first_active else self.teacher2
        ema_update(active, self.student, self.momentum())
        self.counter += 1
        self.ema_step += 1

    @torch.no_grad()
    def teacher_probs(self, x: torch.Tensor):
        """Both teachers' probabilities; the active one labels in train mode, the other in eval mode."""
        active, other = (self.teacher1, self.teacher2) if self.first_active else (self.teacher2, self.teacher1)
        modes = (active.training, other.training)
        active.train(True)
        other.train(False)
        try:
            p1, p2 = self.teacher1(x).float().softmax(1), self.teacher2(x).float().softmax(1)
        finally:
            active.train(modes[0])
            other.train(modes[1])
        return p1, p2

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.ctx.generator))

    def training_step(self, batch, step):
        cfg = self.cfg
        self.advance_alternation()
        xw = batch.x_ulb
        label, conf, t_conflict = fuse_teachers(*self.teacher_probs(xw))
        mix = None
        if self.first_active:
            xs = batch.x_ulb_strong
        elif self._rand() < cfg.cutmix_prob:
            mix = cutmix_mask(xw.shape[0], tuple(xw.shape[2:]), self.ctx.generator, xw.device, cfg.cutmix_beta)
            xs = apply_cutmix(xw, *mix)
            label, conf, t_conflict = (apply_cutmix(t, *mix) for t in (label, conf, t_conflict))
        else:
            xs = xw
        n_lb, n_u = batch.x_lb.shape[0], xw.shape[0]
        logits = self.student(torch.cat([batch.x_lb, xw, xs]))
        lb, uw, us = logits[:n_lb], logits[n_lb:n_lb + n_u], logits[n_lb + n_u:]
        conf_s, label_s = uw.detach().float().softmax(1).max(1)
        if mix is not None and cfg.variant == "paper":
            conf_s, label_s = apply_cutmix(conf_s, *mix), apply_cutmix(label_s, *mix)
        label, conf, taken = resolve_conflicts(label, conf, label_s, conf_s, t_conflict)
        keep = conf >= cfg.conf_threshold
        sup = self.supervised_loss(lb, batch.y_lb)
        unsup = masked_dice_loss(us, label, keep)
        w = cfg.consistency * self.ramp(step, cfg.rampup)
        return StepOutput(loss=sup + w * unsup, unsup=unsup, terms={
            "sup": sup.detach(), "unsup": unsup.detach(), "w_unsup": w,
            "confident": keep.float().mean(), "teacher_conflict": t_conflict.float().mean(),
            "student_taken": taken.float().mean(), "active_teacher": 1.0 if self.first_active else 2.0,
            "cutmix": float(mix is not None)})

    def extra_state(self) -> dict:
        return {**super().extra_state(), "first_active": self.first_active, "counter": self.counter,
                "period": self.period}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.first_active = bool(state.get("first_active", True))
        self.counter = int(state.get("counter", 0))
        self.period = int(state.get("period", self.period))

