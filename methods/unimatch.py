"""UniMatch (Yang, Qi, Feng, Zhang & Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised
Semantic Segmentation", CVPR 2023), with its medical (ACDC) branch as a variant.

One network. The unlabeled batch is split in halves: u (trained on) and u_mix (the CutMix source, the
release's second unlabeled loader). Per step:

* the weak view of u gives the pseudo-labels (argmax of the network's own detached prediction, in the
  same forward pass as the labeled slices) and their confidence;
* **feature perturbation**: in that same pass, every encoder feature map is also passed to the decoder
  with channel dropout (``fp_dropout`` 0.5, ``nn.Dropout2d``'s rule: whole channels zeroed, the rest
  scaled by 1 / (1 - p)); the decoder runs once on [clean features, dropped features] and the dropped
  half's prediction on u is trained towards the weak pseudo-labels (weight 0.5);
* **two strong views** of u (the loop's strong view and a second, independent photometric draw), each
  with its own CutMix box (probability ``cutmix_prob`` 0.5; area 2-40 % of the image, aspect ratio
  0.3-3.3; pasted from the strong views of u_mix), trained towards the weak pseudo-labels with the box
  taken from the network's prediction on u_mix in eval mode (weights 0.25 each);
* every unlabeled pixel counts only where its pseudo-label's confidence is >= ``conf_threshold`` (0.95).

Loss = (L_sup + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2 (the paper's (L_s + L_u) / 2 with
L_u = lambda L_fp + mu / 2 (L_s1 + L_s2), lambda = mu = 0.5).

``variant``: ``paper`` (the unlabeled terms are confidence-masked cross-entropy averaged over all
pixels, the paper's and its natural-image code's form) or ``medical`` (the medical release: SSL4MIS's
Dice loss over the confident pixels, ``ssl_bench.losses.masked_dice_loss``).

Facts from the release (LiheYoung/UniMatch at 0324f3d, ``more-scenarios/medical/unimatch.py``,
``configs/acdc.yaml``, ``dataset/acdc.py``, ``dataset/transform.py``, ``model/unet.py``): 300 epochs of
len(unlabeled) / 12 iterations (about 30k at 3 labeled patients), batch 12 labeled + 12 unlabeled + 12
unlabeled for mixing at 256 px, SGD lr 0.01 with poly decay, no ramp-up, the best epoch on the
validation list kept (its medical folder has no test script), no seed (``cudnn.benchmark``). Its strong
views are a colour jitter (p 0.8) plus Gaussian blur (p 0.5) of the weak view; here the loop's
photometric augmentation (contrast and brightness) draws them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_bench.losses import masked_dice_loss
from ssl_bench.registry import register_method
from ssl_bench.sampling import to_device

from .base import Method, StepOutput
from .variant import check_variant

VARIANTS = ("paper", "medical")


@dataclass
class UniMatchConfig:
    variant: str = "paper"
    conf_threshold: float = 0.95
    weight_strong: float = 0.25  # each of the two strong views
    weight_fp: float = 0.5
    fp_dropout: float = 0.5
    cutmix_prob: float = 0.5
    cutmix_area_min: float = 0.02
    cutmix_area_max: float = 0.4
    cutmix_ratio: float = 0.3  # aspect ratio drawn from [ratio, 1 / ratio]


def feature_dropout(f: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Channel dropout of a feature map (B, C, *S): each channel zeroed with probability p, the others
    scaled by 1 / (1 - p) (``nn.Dropout2d`` / ``Dropout3d``), the draws from ``generator``."""
    keep = (torch.rand(f.shape[0], f.shape[1], generator=generator) >= p).to(f.dtype) / (1.0 - p)
    return f * to_device(keep, f.device).reshape(*keep.shape, *([1] * (f.dim() - 2)))


def cutmix_boxes(n: int, spatial: tuple[int, ...], prob: float, area: tuple[float, float], ratio: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, *S) bool: per slice, with probability ``prob``, one box of ``area`` fraction of the image
    (uniform in the range) and aspect ratio r (uniform in [ratio, 1 / ratio]) between the first two
    dims: sides V^(1/d) sqrt(r) and V^(1/d) / sqrt(r) there, V^(1/d) along any other (in 2D the
    release's sqrt(V r) rows and sqrt(V / r) columns), at a uniform position, ratio and position
    redrawn until the box fits (as the release)."""
    d = len(spatial)
    out = torch.zeros(n, *spatial, dtype=torch.bool)
    volume = 1
    for s in spatial:
        volume *= s

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    for i in range(n):
        if float(torch.rand((), generator=generator)) > prob:
            continue
        size = uniform(*area) * volume
        for _ in range(1000):
            r = uniform(ratio, 1.0 / ratio)
            base = size ** (1.0 / d)
            sides = [base] * d
            if d >= 2:
                sides[0], sides[1] = base * r ** 0.5, base / r ** 0.5
            sides = [int(s) for s in sides]
            starts = [int(torch.randint(0, s, (1,), generator=generator)) for s in spatial]
            if all(a + b <= s for a, b, s in zip(starts, sides, spatial)):
                out[(i, *[slice(a, a + b) for a, b in zip(starts, sides)])] = True
                break
    return out


@register_method("unimatch", paper="Yang et al., CVPR 2023",
                 description="Weak-to-strong consistency with two CutMix strong views and feature-level dropout")
class UniMatch(Method):
    Config = UniMatchConfig
    paper = "Yang et al., CVPR 2023"
    display_name = "UniMatch"
    #: the registry-wide contract runs on random networks, never 0.95 confident: open the gate there
    contract_overrides = {"conf_threshold": "0.0"}

    def __init__(self, cfg: UniMatchConfig, ctx):
        check_variant("unimatch", cfg.variant, VARIANTS)
        if not 0 <= cfg.fp_dropout < 1:
            raise ValueError(f"UniMatch: method.fp_dropout={cfg.fp_dropout} must be in [0, 1)")
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()

    def modules(self):
        return {"student": self.student}

    def unsup_loss(self, logits: torch.Tensor, label: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
        keep = conf >= self.cfg.conf_threshold
        if self.cfg.variant == "medical":
            return masked_dice_loss(logits, label, keep)
        ce = F.cross_entropy(logits.float(), label, reduction="none")
        return (ce * keep).sum() / keep.numel()

    @torch.no_grad()
    def eval_predict(self, x: torch.Tensor):
        """(label, confidence) of the network in eval mode (the release labels the mixing batch so)."""
        was = self.student.training
        self.student.train(False)
        try:
            probs = self.student(x).float().softmax(1)
        finally:
            self.student.train(was)
        conf, label = probs.max(1)
        return label, conf

    def training_step(self, batch, step):
        cfg = self.cfg
        n = batch.x_ulb.shape[0] // 2
        if n == 0:
            raise ValueError("UniMatch needs at least 2 unlabeled slices per batch (half to train on, half "
                             "to mix from); raise --set unlabeled_bs=...")
        g = self.ctx.generator
        u_w, mix_w = batch.x_ulb[:n], batch.x_ulb[n:2 * n]
        s1 = batch.x_ulb_strong[:2 * n]
        s2 = self.ctx.augment.photometric(batch.x_ulb[:2 * n], g)
        spatial = tuple(u_w.shape[2:])
        area = (cfg.cutmix_area_min, cfg.cutmix_area_max)
        box1 = to_device(cutmix_boxes(n, spatial, cfg.cutmix_prob, area, cfg.cutmix_ratio, g), u_w.device)
        box2 = to_device(cutmix_boxes(n, spatial, cfg.cutmix_prob, area, cfg.cutmix_ratio, g), u_w.device)
        mix_label, mix_conf = self.eval_predict(mix_w)
        x_s1 = torch.where(box1[:, None], s1[n:], s1[:n])
        x_s2 = torch.where(box2[:, None], s2[n:], s2[:n])

        n_lb = batch.x_lb.shape[0]
        feats = self.student.encode(torch.cat([batch.x_lb, u_w]))
        dropped = [feature_dropout(f, cfg.fp_dropout, g) for f in feats]
        both, _ = self.student.decode([torch.cat([f, d]) for f, d in zip(feats, dropped)])
        pred, pred_fp = both[:n_lb + n], both[n_lb + n:]
        pred_x, pred_u_w, pred_u_fp = pred[:n_lb], pred[n_lb:], pred_fp[n_lb:]
        pred_s1, pred_s2 = self.student(torch.cat([x_s1, x_s2])).chunk(2)

        conf, label = pred_u_w.detach().float().softmax(1).max(1)
        label1, conf1 = torch.where(box1, mix_label, label), torch.where(box1, mix_conf, conf)
        label2, conf2 = torch.where(box2, mix_label, label), torch.where(box2, mix_conf, conf)

        sup = self.supervised_loss(pred_x, batch.y_lb)
        l_s1 = self.unsup_loss(pred_s1, label1, conf1)
        l_s2 = self.unsup_loss(pred_s2, label2, conf2)
        l_fp = self.unsup_loss(pred_u_fp, label, conf)
        unsup = cfg.weight_strong * (l_s1 + l_s2) + cfg.weight_fp * l_fp
        return StepOutput(loss=(sup + unsup) / 2, unsup=unsup, terms={
            "sup": sup.detach(), "strong1": l_s1.detach(), "strong2": l_s2.detach(), "fp": l_fp.detach(),
            "confident": (conf >= cfg.conf_threshold).float().mean()})
