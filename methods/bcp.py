"""BCP: bidirectional copy-paste (Bai, Chen, Li, Shen & Wang, "Bidirectional Copy-Paste for
Semi-Supervised Medical Image Segmentation", CVPR 2023).

A mask M is 1 everywhere except a zero box of side ``box_ratio`` (2/3) of the image, placed at
a uniformly random position where it fits; one mask per iteration, shared by the batch (as in
the authors' code). ``paste(background, foreground, M) = background * M + foreground * (1 - M)``.

* ``pretrain`` (25 %): labeled slices only. The labeled batch is split in halves a and b;
  x = paste(x_a, x_b, M) is supervised by paste(y_a, y_b, M), both regions with weight 1.
* ``self_train`` (75 %): the teacher, an EMA (momentum 0.99) of the student, labels the
  unlabeled slices (argmax). With labeled halves (l_a, l_b) and unlabeled halves (u_a, u_b):

      x_in  = paste(x_la, x_ua, M),  y_in  = paste(y_la, p_ua, M)    (unlabeled pasted in)
      x_out = paste(x_ub, x_lb, M),  y_out = paste(p_ub, y_lb, M)    (labeled pasted out)

  The loss of each mixed image is the supervised loss 0.5 (CE + Dice) restricted to each
  region, ground-truth pixels with weight 1 and pseudo-labelled pixels with weight alpha = 0.5.

The teacher is initialised from the pre-trained student: during ``pretrain`` it follows the
student with momentum 0 (a copy after every step), so it equals the pre-trained student when
self-training starts, also after a resume, with no special stage hook.

Schedule. ``pretrain_fraction`` (default 0.25) splits the loop's budget; each stage gets the
loop's lr schedule (poly by default). The authors' ACDC code (DeepMed-Lab-ECNU/BCP,
``code/ACDC_BCP_train.py``) differs, and its stage lengths changed between versions:
* versions up to commit b8e4c79 (May 2023, the code public at CVPR 2023): ``pre_train`` loops to
  ``--max_iterations`` (30k) and ``--pre_iterations`` is never read: 30k + 30k, i.e.
  ``pretrain_fraction=0.5``;
* since commit b62b10b (July 2023): ``pre_train`` runs ``--pre_iterations`` (10k), 10k + 30k,
  i.e. ``pretrain_fraction=0.25``;
* in both, neither stage decays the lr (constant 0.01: the loop's ``poly_power=0``), and
  self-training starts from the *best-on-validation* pre-trained checkpoint (student, its SGD
  state, and the teacher). Not implemented here: the loop has one budget and hands the *last*
  pre-trained weights to self-training (a new SGD state per stage).

Details the paper leaves open, taken from the authors' code: the box position is uniform, the
region losses are each averaged over their own pixels (CE) or computed on masked sums (Dice).
``variant="lcc"``: the authors' ACDC code keeps, per slice and foreground class, only the
largest connected component (8-connectivity) of the teacher's pseudo-label; the paper does not
describe this step, so the default ``"paper"`` uses the plain argmax.

3D (the LA track): the same code on (B, C, D, H, W) patches; the box is a cuboid of 2/3 of every
side and the LCC is 26-connected, as BCP's ``LA_BCP_train.py`` (``context_mask``, ``get_cut_mask``
with ``nms=1``). BCP's LA recipe is protocol ``la-field``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ssl_bench.ema import make_teacher
from ssl_bench.losses import one_hot, soft_dice
from ssl_bench.registry import register_method
from ssl_bench.sampling import to_device

from .base import Method, Stage, StepOutput
from .variant import check_variant

VARIANTS = ("paper", "lcc")


@dataclass
class BCPConfig:
    variant: str = "paper"
    alpha: float = 0.5  # weight of pseudo-labelled (unlabeled) pixels
    box_ratio: float = 2 / 3
    ema_momentum: float = 0.99
    pretrain_fraction: float = 0.25


def box_mask(height: int, width: int, ratio: float, generator: torch.Generator | None = None,
             device=None) -> torch.Tensor:
    """(H, W) float mask: 1 everywhere but a zero box of int(ratio * side) at a random position."""
    return box_mask_nd((height, width), ratio, generator, device)


def box_mask_nd(shape: tuple[int, ...], ratio: float, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """``box_mask`` for any number of spatial dims: a zero box of int(ratio * side) along each dim,
    its start drawn uniformly per dim (in dim order) where it fits."""
    mask = torch.ones(*shape, device=device)
    index = []
    for side in shape:
        b = int(side * ratio)
        start = int(torch.randint(0, side - b + 1, (1,), generator=generator))
        index.append(slice(start, start + b))
    mask[tuple(index)] = 0
    return mask


def paste(background: torch.Tensor, foreground: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """background where mask = 1, foreground inside the zero box; images (B, C, *S) or labels (B, *S),
    mask (*S)."""
    m = mask[None] if background.dim() == mask.dim() + 1 else mask[None, None]
    return background * m + foreground * (1 - m)


def masked_supervised_loss(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                           eps: float = 1e-5, dice_form: str = "linear") -> torch.Tensor:
    """0.5 (CE + Dice) over the pixels where ``region`` (H, W or B, H, W) is 1.

    CE is averaged over the region's pixels; Dice uses region-masked sums over the batch,
    averaged over all classes (background included), like the harness's ``dice_loss``;
    ``dice_form`` squared is BCP's own ``code/utils/losses.py`` masked ``DiceLoss``
    (Σ p y m / (Σ p² m + Σ y² m)).
    """
    region = region.expand(target.shape).float()
    ce = (F.cross_entropy(logits.float(), target.long(), reduction="none") * region).sum()
    ce = ce / region.sum().clamp_min(1.0)
    probs = logits.float().softmax(1)
    dice = soft_dice(probs, one_hot(target, probs.shape[1]), dice_form, eps, weight=region[:, None])
    return 0.5 * (ce + 1.0 - dice.mean())


def largest_components(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per slice (or volume) and foreground class, keep only the largest component (8-connected in 2D,
    26-connected in 3D: full connectivity). One read of ``labels`` (scipy labels them on the host:
    a sync that stays); the result goes back from pinned memory."""
    out = np.zeros(labels.shape, dtype=np.int64)
    lab = labels.detach().cpu().numpy()
    eight = np.ones((3,) * (lab.ndim - 1), dtype=bool)
    for i in range(lab.shape[0]):
        for c in range(1, num_classes):
            comp, n = ndimage.label(lab[i] == c, structure=eight)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel())[1:]
            out[i][comp == 1 + int(np.argmax(sizes))] = c
    return to_device(torch.from_numpy(out), labels.device)  # pinned: no second sync


@register_method("bcp", paper="Bai et al., CVPR 2023",
                 description="Bidirectional copy-paste between labeled and unlabeled slices, EMA teacher")
class BCP(Method):
    Config = BCPConfig
    paper = "Bai et al., CVPR 2023"
    display_name = "BCP"

    def __init__(self, cfg: BCPConfig, ctx):
        check_variant("bcp", cfg.variant, VARIANTS)
        if not 0 < cfg.box_ratio < 1 or not 0 < cfg.pretrain_fraction < 1:
            raise ValueError(f"BCP: box_ratio and pretrain_fraction must be in (0, 1) "
                             f"(got {cfg.box_ratio}, {cfg.pretrain_fraction})")
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        self.teacher = make_teacher(self.student)

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def teachers(self):
        # momentum 0 while pre-training: the teacher *is* the pre-trained student at self-training start
        momentum = 0.0 if self.stage == "pretrain" else self.cfg.ema_momentum
        return {"teacher": (self.teacher, self.student, momentum)}

    def stages(self):
        return [Stage("pretrain", self.cfg.pretrain_fraction),
                Stage("self_train", 1.0 - self.cfg.pretrain_fraction)]

    def new_mask(self, like: torch.Tensor) -> torch.Tensor:
        return box_mask_nd(tuple(like.shape[2:]), self.cfg.box_ratio, self.ctx.generator, like.device)

    @torch.no_grad()
    def pseudo_labels(self, x: torch.Tensor) -> torch.Tensor:
        labels = self.teacher(x).argmax(1)
        if self.cfg.variant == "lcc":
            labels = largest_components(labels, self.ctx.num_classes)
        return labels

    def training_step(self, batch, step):
        mask = self.new_mask(batch.x_lb)
        if self.stage == "pretrain":
            return self.pretrain_step(batch, mask)
        return self.self_train_step(batch, mask)

    def masked_loss(self, logits, target, region):
        """``masked_supervised_loss`` with the run's ``dice_form``."""
        return masked_supervised_loss(logits, target, region, dice_form=self.ctx.dice_form)

    def pretrain_step(self, batch, mask):
        n = batch.x_lb.shape[0] // 2
        if n == 0:
            raise ValueError("BCP pre-training needs at least 2 labeled slices per batch")
        x = paste(batch.x_lb[:n], batch.x_lb[n:2 * n], mask)
        y = paste(batch.y_lb[:n], batch.y_lb[n:2 * n], mask).long()
        logits = self.student(x)
        loss = self.masked_loss(logits, y, mask) + self.masked_loss(logits, y, 1 - mask)
        return StepOutput(loss=loss, terms={"sup": loss.detach()})

    @staticmethod
    def half(batch) -> int:
        n = min(batch.x_lb.shape[0], batch.x_ulb.shape[0]) // 2
        if n == 0:
            raise ValueError("BCP self-training needs at least 2 labeled and 2 unlabeled slices per batch")
        return n

    def mix(self, batch, pseudo: torch.Tensor, mask: torch.Tensor):
        """The two bidirectionally pasted images and their targets, from batch halves a and b;
        ``pseudo`` holds the pseudo-labels of the first 2n unlabeled slices."""
        n = self.half(batch)
        xl, yl, xu = batch.x_lb, batch.y_lb, batch.x_ulb
        x_in = paste(xl[:n], xu[:n], mask)
        y_in = paste(yl[:n], pseudo[:n], mask).long()
        x_out = paste(xu[n:2 * n], xl[n:2 * n], mask)
        y_out = paste(pseudo[n:2 * n], yl[n:2 * n], mask).long()
        return x_in, y_in, x_out, y_out

    def self_train_step(self, batch, mask):
        n = self.half(batch)
        pseudo = self.pseudo_labels(batch.x_ulb[:2 * n])
        x_in, y_in, x_out, y_out = self.mix(batch, pseudo, mask)
        logits = self.student(torch.cat([x_in, x_out]))
        q_in, q_out = logits[:x_in.shape[0]], logits[x_in.shape[0]:]
        # ground-truth regions: outside the box in x_in, inside it in x_out
        sup = self.masked_loss(q_in, y_in, mask) + self.masked_loss(q_out, y_out, 1 - mask)
        unsup = self.masked_loss(q_in, y_in, 1 - mask) + self.masked_loss(q_out, y_out, mask)
        loss = sup + self.cfg.alpha * unsup
        return StepOutput(loss=loss, unsup=unsup,
                          terms={"sup": sup.detach(), "unsup": unsup.detach()})
