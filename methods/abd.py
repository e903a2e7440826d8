"""ABD: adaptive bidirectional displacement (Chi, Pang, Zhang & Liu, "Adaptive Bidirectional
Displacement for Semi-Supervised Medical Image Segmentation", CVPR 2024), in its BCP form.

Built on BCP (``methods/bcp.py``): the same pre-training stage (labeled slices copy-pasted into each
other), then self-training of **two** student U-Nets and an EMA teacher (momentum 0.99) of the first.
Both students start from the pre-trained network: while pre-training, student 2 and the teacher
follow student 1 with momentum 0 (a copy after every step), so they equal it when self-training
starts, also after a resume.

Self-training step, per student k (1 sees the weak views, 2 the strong views of the same slices):

* pseudo-labels of the unlabeled slices from the teacher (on the weak views for 1, the strong ones for
  2), the largest connected component per class under ``lcc``;
* BCP's bidirectional copy-paste of labeled and unlabeled halves (one box mask for both students),
  BCP's masked loss: ground-truth pixels weight 1, pseudo-labelled pixels ``alpha`` (0.5);
* cross pseudo supervision on the mixed images: Dice of each student towards the other's argmax;
* **ABD-R**: each mixed image is cut into a grid of ``grid`` patches per side (4 x 4 = 16 patches of
  64 px at 256 px). Per image pair (student 1's input, student 2's input) the patch confidence is the
  mean max-softmax of each student on its own input. With probability ``kl_prob`` (0.5) the
  displacement is adaptive: among the ``top_k`` (4) most confident patches of image 1, the one whose
  mean class distribution (softmax of the patch-mean logits) is closest in KL to image 2's least
  confident patch is picked (a), likewise for image 2 against image 1's least confident patch (c);
  otherwise a and c are the most confident patches. Then image 1's least confident patch b is replaced
  by image 2's patch c, and image 2's least confident patch d by image 1's patch a (taken after the
  first swap, as the release does). Both students segment both displaced images and are trained by
  cross pseudo supervision (Dice towards the other's argmax) on them;
* ``paper`` only, **ABD-I** on the labeled slices: a weak (student 1) and a strong (student 2) view;
  per slice, with probability 0.5, view 1's most confident patch is replaced by view 2's least
  confident one and view 2's most confident patch by view 1's least confident one, labels moved with
  the pixels; both students are supervised on both displaced views with weight ``abd_i_weight`` (2,
  the authors' ``train_ACDC_Cross_Teaching.py``: ``loss1 + 2 * loss3``).

Loss = sum over students of [BCP mixed loss + cross Dice on the mixed images + cross Dice on the
displaced images (``cross_weight`` 1)] (+ ABD-I). The first student is tested.

Facts from the authors' code (chy-upc/ABD at 4efd525, ``code/train_ACDC_BCP.py`` and
``code/utils/displacement.py``): 10k pre-training + 30k self-training at constant lr 0.01, batch
12 + 12 slices at 256 px, ``patch_size`` 64 with a 4 x 4 grid, ``top_num`` 4, ``u_weight`` 0.5,
pseudo-labels with ``nms=1`` (largest connected component), the cross terms unweighted (the
``consistency_weight`` it computes is never used), only ABD-R (no ABD-I) in the BCP script, both
students and the teacher loaded from the best-on-validation pre-trained model (here: the last one,
as for BCP), and student 1's best-on-validation weights tested. The cross Dice is SSL4MIS's
``DiceLoss`` (squared denominators, ``ssl_bench.losses.masked_dice_loss``); BCP's masked loss is the
harness's (``methods/bcp.py``). The strong view is the loop's (contrast and brightness, same
geometry); the release's is a colour jitter.

``variant``: ``paper`` (ABD-R + ABD-I, plain argmax pseudo-labels as BCP's paper) or ``released``
(the BCP script: ABD-R only, largest connected component).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ssl_bench.ema import make_teacher
from ssl_bench.losses import masked_dice_loss
from ssl_bench.registry import register_method
from ssl_bench.sampling import to_device

from .base import StepOutput
from .bcp import BCP, largest_components
from .variant import check_variant, resolve_all

VARIANTS = {
    "paper": {"abd_i": True, "lcc": False},
    "released": {"abd_i": False, "lcc": True},
}


@dataclass
class ABDConfig:
    variant: str = "paper"
    alpha: float = 0.5  # weight of pseudo-labelled pixels in BCP's mixed loss (u_weight)
    box_ratio: float = 2 / 3
    ema_momentum: float = 0.99
    pretrain_fraction: float = 0.25  # 10k of 40k
    grid: int = 4  # patches per side (4 x 4 patches of 64 px at 256 px)
    top_k: int = 4  # confident patches considered by the adaptive (KL) pick
    kl_prob: float = 0.5  # probability of the adaptive pick per image pair (else most confident)
    cross_weight: float = 1.0
    abd_i: bool | None = None  # None: the variant's (paper True, released False)
    abd_i_prob: float = 0.5
    abd_i_weight: float = 2.0
    lcc: bool | None = None  # None: the variant's (paper False, released True)


# -- patches ------------------------------------------------------------------------------------------
def patchify(t: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, *S) -> (B, grid^d, prod(S) / grid^d): patch p holds its pixels in raster order; patches are
    numbered in raster order of the grid."""
    b, spatial = t.shape[0], t.shape[1:]
    d = len(spatial)
    for side in spatial:
        if side % grid:
            raise ValueError(f"ABD: image side {side} is not divisible by method.grid={grid}; "
                             f"use an image size that is a multiple of the grid (--set method.grid=...)")
    shape = [b]
    for side in spatial:
        shape += [grid, side // grid]
    x = t.reshape(shape).permute(0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2))
    return x.reshape(b, grid ** d, -1)


def unpatchify(p: torch.Tensor, grid: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``patchify``."""
    b, d = p.shape[0], len(spatial)
    x = p.reshape(b, *([grid] * d), *[s // grid for s in spatial])
    order = [0]
    for i in range(d):
        order += [1 + i, 1 + d + i]
    return x.permute(order).reshape(b, *spatial)


def patch_means(logits: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence (B, P): mean max-softmax per patch, class logits (B, P, C): mean logits per patch)."""
    b, c = logits.shape[:2]
    conf = patchify(logits.detach().float().softmax(1).amax(1), grid).mean(-1)
    per_class = patchify(logits.detach().float().flatten(0, 1), grid).mean(-1).reshape(b, c, -1)
    return conf, per_class.transpose(1, 2)


def _kl_pick(conf_own: torch.Tensor, logit_own: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Per image, the one of its ``k`` most confident patches whose class distribution q minimises
    KL(p || q), p = softmax of ``target`` (B, C): the other image's least confident patch."""
    top = conf_own.topk(k, dim=1).indices  # (B, k)
    q = logit_own.gather(1, top[..., None].expand(-1, -1, logit_own.shape[-1])).log_softmax(-1)
    p = target.softmax(-1)[:, None]
    kl = (p * (p.clamp_min(1e-30).log() - q)).sum(-1)  # (B, k)
    return top.gather(1, kl.argmin(1, keepdim=True))[:, 0]


def abd_r_picks(conf1, logit1, conf2, logit2, adaptive: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The patches of ABD-R per image pair: b, d the least confident of images 1 and 2; a, c the
    patches that replace them (adaptive: the KL pick among the top ``k``; else the most confident)."""
    rows = torch.arange(conf1.shape[0], device=conf1.device)
    b, d = conf1.argmin(1), conf2.argmin(1)
    a_kl = _kl_pick(conf1, logit1, logit2[rows, d], k)
    c_kl = _kl_pick(conf2, logit2, logit1[rows, b], k)
    a = torch.where(adaptive, a_kl, conf1.argmax(1))
    c = torch.where(adaptive, c_kl, conf2.argmax(1))
    return {"a": a, "b": b, "c": c, "d": d}


def displace(x1: torch.Tensor, x2: torch.Tensor, grid: int, src1: torch.Tensor, dst1: torch.Tensor,
             src2: torch.Tensor, dst2: torch.Tensor, active: torch.Tensor | None = None,
             channels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional displacement of one patch per image pair: x1's patch ``dst1`` <- x2's patch
    ``src1``, then x2's patch ``dst2`` <- the new x1's patch ``src2`` (the release's order). Images
    (B, C, *S) with ``channels``, labels (B, *S) without. Pairs where ``active`` is False are kept."""
    b = x1.shape[0]
    spatial = tuple(x1.shape[2:] if channels else x1.shape[1:])
    c = x1.shape[1] if channels else 1
    p1 = patchify(x1.reshape(b * c, *spatial), grid).reshape(b, c, grid ** len(spatial), -1).clone()
    p2 = patchify(x2.reshape(b * c, *spatial), grid).reshape(b, c, grid ** len(spatial), -1).clone()
    rows = torch.arange(b, device=x1.device)
    keep = torch.ones(b, dtype=torch.bool, device=x1.device) if active is None else active
    on = keep[:, None, None]
    p1[rows, :, dst1] = torch.where(on, p2[rows, :, src1], p1[rows, :, dst1])
    p2[rows, :, dst2] = torch.where(on, p1[rows, :, src2], p2[rows, :, dst2])
    out = []
    for p in (p1, p2):
        y = unpatchify(p.reshape(b * c, p.shape[2], -1), grid, spatial).reshape(b, c, *spatial)
        out.append(y if channels else y[:, 0])
    return out[0], out[1]


@register_method("abd", paper="Chi et al., CVPR 2024",
                 description="BCP with two students and adaptive bidirectional patch displacement (ABD-R/ABD-I)")
class ABD(BCP):
    Config = ABDConfig
    paper = "Chi et al., CVPR 2024"
    display_name = "ABD"

    def __init__(self, cfg: ABDConfig, ctx):
        check_variant("abd", cfg.variant, VARIANTS)
        cfg = resolve_all(cfg, VARIANTS)
        if cfg.grid < 1 or not 1 <= cfg.top_k <= cfg.grid ** 2:
            raise ValueError(f"ABD: method.grid={cfg.grid} and method.top_k={cfg.top_k}; need grid >= 1 and "
                             f"1 <= top_k <= grid^2")
        bcp_cfg = dataclasses.replace(cfg)  # BCP reads alpha, box_ratio, ema_momentum, pretrain_fraction
        bcp_cfg.variant = "lcc" if cfg.lcc else "paper"
        super().__init__(bcp_cfg, ctx)
        self.cfg = cfg
        self.student2 = make_teacher(self.student)  # a copy of student 1 until self-training starts
        self.set_stage(self.stage)

    def modules(self):
        return {"student": self.student, "student2": self.student2, "teacher": self.teacher}

    def set_stage(self, name: str) -> None:
        super().set_stage(name)
        # student 2 follows student 1 (momentum 0) while pre-training, then trains on its own
        if hasattr(self, "student2"):
            self.student2.requires_grad_(name != "pretrain")

    def teachers(self):
        out = super().teachers()
        if self.stage == "pretrain":
            out["student2"] = (self.student2, self.student, 0.0)
        return out

    @torch.no_grad()
    def pseudo_labels(self, x: torch.Tensor) -> torch.Tensor:
        labels = self.teacher(x).argmax(1)
        return largest_components(labels, self.ctx.num_classes) if self.cfg.lcc else labels

    def _uniform(self, n: int, device) -> torch.Tensor:
        return to_device(torch.rand(n, generator=self.ctx.generator), device)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        """A strong view of labeled slices with their geometry (the loop's photometric augmentation)."""
        return self.ctx.augment.photometric(x, self.ctx.generator)

    @staticmethod
    def cross_dice(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        """Dice of each network towards the other's argmax: D(a, argmax b) + D(b, argmax a)."""
        return (masked_dice_loss(logits_a, logits_b.detach().argmax(1))
                + masked_dice_loss(logits_b, logits_a.detach().argmax(1)))

    def self_train_step(self, batch, mask):
        cfg = self.cfg
        n = self.half(batch)
        views = [batch, dataclasses.replace(batch, x_lb=self.strong(batch.x_lb), x_ulb=batch.x_ulb_strong)]
        inputs, sup, unsup, logits = [], 0.0, 0.0, []
        for net, view in zip((self.student, self.student2), views):
            pseudo = self.pseudo_labels(view.x_ulb[:2 * n])
            x_in, y_in, x_out, y_out = self.mix(view, pseudo, mask)
            out = net(torch.cat([x_in, x_out]))
            q_in, q_out = out[:n], out[n:]
            sup = sup + self.masked_loss(q_in, y_in, mask) + self.masked_loss(q_out, y_out, 1 - mask)
            unsup = unsup + self.masked_loss(q_in, y_in, 1 - mask) + self.masked_loss(q_out, y_out, mask)
            inputs.append(torch.cat([x_in, x_out]))
            logits.append(out)
        cross_mixed = self.cross_dice(*logits)
        # ABD-R on the pairs of mixed images
        conf1, per1 = patch_means(logits[0], cfg.grid)
        conf2, per2 = patch_means(logits[1], cfg.grid)
        adaptive = self._uniform(conf1.shape[0], conf1.device) < cfg.kl_prob
        picks = abd_r_picks(conf1, per1, conf2, per2, adaptive, cfg.top_k)
        d1, d2 = displace(inputs[0], inputs[1], cfg.grid, picks["c"], picks["b"], picks["a"], picks["d"])
        displaced = torch.cat([d1, d2])
        cross_displaced = self.cross_dice(self.student(displaced), self.student2(displaced))
        unsup_total = cfg.alpha * unsup + cfg.cross_weight * (cross_mixed + cross_displaced)
        loss = sup + unsup_total
        terms = {"sup": sup.detach(), "unsup": unsup.detach(), "cross_mixed": cross_mixed.detach(),
                 "cross_displaced": cross_displaced.detach()}
        if cfg.abd_i:
            abd_i = self.abd_i_loss(batch)
            loss = loss + cfg.abd_i_weight * abd_i
            terms["abd_i"] = abd_i.detach()
        return StepOutput(loss=loss, unsup=unsup_total, terms=terms)

    def abd_i_loss(self, batch) -> torch.Tensor:
        """ABD-I: displace the most confident patch of each labeled view by the other view's least
        confident one (labels moved with the pixels); both students learn both displaced views."""
        cfg = self.cfg
        x1, x2, y = batch.x_lb, self.strong(batch.x_lb), batch.y_lb
        with torch.no_grad():
            conf1, _ = patch_means(self.student(x1), cfg.grid)
            conf2, _ = patch_means(self.student2(x2), cfg.grid)
        e, f, g, h = conf1.argmax(1), conf1.argmin(1), conf2.argmax(1), conf2.argmin(1)
        active = self._uniform(x1.shape[0], x1.device) < cfg.abd_i_prob
        d1, d2 = displace(x1, x2, cfg.grid, h, e, f, g, active)
        l1, l2 = displace(y, y, cfg.grid, h, e, f, g, active, channels=False)
        x, labels = torch.cat([d1, d2]), torch.cat([l1, l2])
        return self.supervised_loss(self.student(x), labels) + self.supervised_loss(self.student2(x), labels)
