"""SS-Net: pixel-level smoothness under adversarial perturbations and inter-class separation towards
class prototypes (Wu, Wu, Wu, Ge & Cai, "Exploring Smoothness and Class-Separation for Semi-supervised
Medical Image Segmentation", MICCAI 2022, LNCS 13435, pp. 34-43).

One network (the backbone) and small heads on its last decoder features (16 channels in the U-Net and
the V-Net). Per step, on the batch x = [labeled, unlabeled]:

* **smoothness** (VAT-like, ``vat_loss``): a random direction d (uniform in [-0.5, 0.5], L2-normalised
  per sample) is turned into the adversarial one by ``vat_iterations`` (1) power iterations: the gradient
  with respect to d of the distance between the prediction on x + xi d (xi = 10) and the clean
  prediction p (detached), L2-normalised per sample; then
  L_lds = D(f(x + eps d_adv), p), eps = ``epsilon`` (6, the release's 2D ``magnitude``; 10 in its 3D
  code), with D the soft Dice loss 1 - mean over classes of Dice(softmax, p) in the ``vat_form``
  (``squared``, 2 sum p q / (sum p^2 + sum q^2): the 2D release's ``softDiceLoss``, zero when the two
  agree; its 3D code uses the ``linear`` form, 2 sum p q / (sum p + sum q), over both channels at once,
  which is not zero at agreement: ``--set method.vat_form=linear`` is the closest here). Only the last
  forward pass gives the network a gradient (the direction is found with ``torch.autograd.grad`` on d
  alone); BatchNorm layers normalise these passes by their batch but do not update their running
  statistics (the release's ``_disable_tracking_bn_stats``);
* **class separation** (``prototype_contrast``): pixel features go through a projection head
  (Linear 16->32, BN, ReLU, Linear 32->32) and a prediction head (32->32, same form). The prototypes of
  foreground class c are up to ``per_class`` (32) projected features (projection head in eval mode, no
  gradient) of labeled pixels of class c that the network predicts correctly (``memory_correct_only``),
  ranked by the class's selector (Linear 32->32, BN, LeakyReLU 0.2, Linear 32->1, sigmoid) when there
  are more; a class without such a pixel in the batch keeps its previous prototypes (the release
  overwrites a class only when it has some; they are checkpointed with the run). For each class with
  more than one prototype and more than one feature,
  L_c = mean_ij (1 - cos(z_i, m_j)) w_i v_j, with w_i = sigmoid(selector_c(z_i detached)) and
  v_j = sigmoid(memory_selector_c(m_j / |m_j|)), each rescaled to mean 1; the loss is the sum over
  classes divided by the number of classes (background included, although it never has prototypes).
  The labeled pixels use their labels (L_c^l), the unlabeled ones the argmax of the current prediction
  (L_c^u);
* L = L_sup + w(t) (L_lds + 0.1 (L_c^l + L_c^u)), w(t) = ``consistency`` (0.1) x a sigmoid ramp over
  ``rampup`` (1.0) of the budget (the release's 0.1 sigmoid_rampup(iter // 150, 200) of 30k; the field
  protocol quantises it as SSL4MIS does).

``variant``:

* ``released`` (ycwu1997/SS-Net at c0a8bf6, ``code/train_ss_2d.py``): the supervised term is the Dice
  loss alone, averaged over all classes (the cross-entropy it computes is only logged), and the
  prototypes are the *lowest*-scored features: ``utils/feature_memory.py`` sorts the scores in
  ascending order and keeps the first 32, although its comment says "features with highest rankings";
* ``paper``: the stated intent where the release departs from it, the highest-scored features as
  prototypes ("high-quality prototypes", abstract), and the supervised term every method here shares,
  0.5 (CE + Dice) (``Method.supervised_loss``). The paper's full text was not among the sources read
  for this file: its other values are taken from the release.

Facts from the release (c0a8bf6; ``code/train_ss_2d.py`` and ``train_ss_3d.py``, ``code/utils/losses.py``
``VAT2d``/``VAT3d``, ``code/utils/feature_memory.py``, ``code/utils/contrastive_losses.py``,
``code/networks/unet.py`` and ``VNet.py`` for the heads): ACDC 30k iterations at 12 + 12 slices of
256 px, SGD at a constant lr 0.01 (no decay), the best model on the validation list (every 200
iterations) tested, seed 1337; LA 15k iterations at 2 + 2 patches, lr 0.01 x 0.1 every 2500,
``consistency`` 1 with ramp 40 (of iter // 150), magnitude 10, the foreground Dice (``Binary_dice_loss``)
as supervised term and the same linear Dice over both channels as VAT distance. The selectors of the
background class exist in the release but never receive a gradient (its memory is never filled); they
are not built here. The prototype design is adapted there from Shathe/SemiSeg-Contrastive.

Differences kept on purpose: the clean prediction p that the perturbed passes are compared with is the
step's own forward pass (detached), where the release runs a separate no-grad pass for it (one forward
pass less per step: three instead of four; it differs only by the dropout draw and one BN statistics
update); the heads read the decoder's last features before the V-Net's last-block dropout (the
release's 3D embedding is after it). Runs in 3D (everything is rank-generic); no ``la-field`` recipe
(the LA values above) yet.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.losses import dice_loss
from ssl_bench.registry import register_method
from ssl_bench.sampling import to_device

from .base import Method, StepOutput
from .perturbations import l2_normalise
from .variant import check_variant, resolve_all

VARIANTS = {
    "paper": {"ranking": "highest", "sup": "ce+dice"},
    "released": {"ranking": "lowest", "sup": "dice"},
}


@dataclass
class SSNetConfig:
    variant: str = "paper"
    consistency: float = 0.1  # w(t) = consistency x ramp
    rampup: float = 1.0  # fraction of the budget (200 x 150 of 30k)
    contrast_weight: float = 0.1  # of L_c^l + L_c^u inside w(t)
    epsilon: float = 6.0  # norm of the adversarial perturbation per sample (release 2D: 6, 3D: 10)
    xi: float = 10.0  # norm of the probe perturbation of the power iteration
    vat_form: str = "squared"  # Dice form of the smoothness distance (2D release: squared; 3D: linear)
    vat_iterations: int = 1
    per_class: int = 32  # prototypes per class
    feat_dim: int = 32  # width of the projection / prediction heads
    memory_correct_only: bool = True  # prototypes only from correctly predicted labeled pixels
    ranking: str | None = None  # highest / lowest scored features kept (None: the variant's)
    sup: str | None = None  # ce+dice / dice (None: the variant's)


# -- smoothness -----------------------------------------------------------------------------------
def l2_normalize(d: torch.Tensor) -> torch.Tensor:
    """Each sample of ``d`` (B, ...) divided by its L2 norm (+ 1e-8, as the release)."""
    return l2_normalise(d, add=1e-8)


@contextlib.contextmanager
def bn_stats_frozen(module: nn.Module):
    """BatchNorm layers keep normalising by the batch (in train mode) but leave their running
    statistics alone while inside."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.track_running_stats for m in bns]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, t in zip(bns, old):
            m.track_running_stats = t


def adversarial_direction(forward: Callable, x: torch.Tensor, target: torch.Tensor, xi: float,
                          distance: Callable, iterations: int = 1,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """The unit (per sample) direction in which ``distance(forward(x + xi d), target)`` grows fastest,
    by ``iterations`` power iterations from a random d; no gradient reaches ``forward``'s parameters."""
    d = l2_normalize(to_device(torch.rand(x.shape, generator=generator), x.device).sub(0.5).to(x.dtype))
    for _ in range(iterations):
        d = d.detach().requires_grad_(True)
        grad, = torch.autograd.grad(distance(forward(x.detach() + xi * d), target), d)
        d = l2_normalize(grad.detach())
    return d.detach()


def vat_loss(forward: Callable, x: torch.Tensor, target: torch.Tensor, xi: float, epsilon: float,
             distance: Callable, iterations: int = 1, generator: torch.Generator | None = None):
    """(L_lds = distance(forward(x + epsilon d_adv), target), the perturbation epsilon d_adv)."""
    r = epsilon * adversarial_direction(forward, x, target, xi, distance, iterations, generator)
    return distance(forward(x.detach() + r), target), r


# -- class separation -----------------------------------------------------------------------------
def _mlp(cin: int, hidden: int, cout: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), act, nn.Linear(hidden, cout))


class SSNetHeads(nn.Module):
    """Projection and prediction heads, and per foreground class a feature and a memory selector."""

    def __init__(self, dim_in: int, num_classes: int, dim: int = 32):
        super().__init__()
        self.projection = _mlp(dim_in, dim, dim, nn.ReLU())
        self.prediction = _mlp(dim, dim, dim, nn.ReLU())
        self.selector = nn.ModuleDict({str(c): _mlp(dim, dim, 1, nn.LeakyReLU(0.2)) for c in range(1, num_classes)})
        self.memory_selector = nn.ModuleDict(
            {str(c): _mlp(dim, dim, 1, nn.LeakyReLU(0.2)) for c in range(1, num_classes)})

    def predict(self, f: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.projection(f))


def select_prototypes(z: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int,
                      score: Mapping[int, Callable], ranking: str = "highest") -> dict[int, torch.Tensor]:
    """Per foreground class present in ``labels``: its rows of ``z``, or, beyond ``per_class`` of them,
    the ``per_class`` with the highest (``lowest``) sigmoid(score[c](z)) (ties in order)."""
    if ranking not in ("highest", "lowest"):
        raise ValueError(f"SS-Net: method.ranking={ranking!r}; choose highest or lowest")
    out = {}
    with torch.no_grad():
        for c in range(1, num_classes):
            zc = z[labels == c]
            if zc.shape[0] == 0:
                continue
            if zc.shape[0] > per_class:
                s = torch.sigmoid(score[c](zc))[:, 0]
                order = torch.sort(s, descending=ranking == "highest", stable=True).indices
                zc = zc[order[:per_class]]
            out[c] = zc.detach()
    return out


def prototype_contrast(z: torch.Tensor, labels: torch.Tensor, memory: Sequence[torch.Tensor | None],
                       selector: Mapping[int, Callable], memory_selector: Mapping[int, Callable],
                       num_classes: int) -> torch.Tensor:
    """sum over classes c with more than one feature and prototype of mean_ij (1 - cos(z_i, m_j)) w_i v_j,
    divided by ``num_classes``; w = sigmoid(selector[c](z_i detached)), v = sigmoid(memory_selector[c]
    (m_j normalised)), each rescaled to mean 1."""
    loss = z.new_zeros(())
    for c in range(num_classes):
        m = memory[c] if c < len(memory) else None
        zc = z[labels == c]
        if m is None or zc.shape[0] <= 1 or m.shape[0] <= 1:
            continue
        m = F.normalize(m.to(device=zc.device, dtype=zc.dtype), dim=1)
        dist = 1 - F.normalize(zc, dim=1) @ m.T  # (M, N), in [0, 2]
        w = torch.sigmoid(selector[c](zc.detach()))  # (M, 1)
        v = torch.sigmoid(memory_selector[c](m))  # (N, 1)
        w = w * (w.shape[0] / w.sum(0))
        v = v * (v.shape[0] / v.sum(0))
        loss = loss + (dist * w * v.T).mean()
    return loss / num_classes


def pixels(features: torch.Tensor) -> torch.Tensor:
    """(B, D, *S) -> (B prod S, D), rows in the order of ``labels.reshape(-1)``."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])


@register_method("ssnet", paper="Wu et al., MICCAI 2022",
                 description="SS-Net: smoothness under adversarial (VAT) perturbations and prototype-based class separation")
class SSNet(Method):
    Config = SSNetConfig
    paper = "Wu et al., MICCAI 2022"
    display_name = "SS-Net"
    #: a random network on a tiny batch predicts few labeled pixels correctly: take the prototypes from
    #: every labeled foreground pixel there, so that every selector is exercised
    contract_overrides = {"memory_correct_only": "false"}

    def __init__(self, cfg: SSNetConfig, ctx):
        check_variant("ssnet", cfg.variant, VARIANTS)
        cfg = resolve_all(cfg, VARIANTS)
        if cfg.sup not in ("ce+dice", "dice"):
            raise ValueError(f"SS-Net: method.sup={cfg.sup!r}; choose ce+dice or dice")
        if cfg.ranking not in ("highest", "lowest"):
            raise ValueError(f"SS-Net: method.ranking={cfg.ranking!r}; choose highest or lowest")
        if cfg.vat_form not in ("squared", "linear"):
            raise ValueError(f"SS-Net: method.vat_form={cfg.vat_form!r}; choose squared or linear")
        if cfg.per_class < 2 or cfg.vat_iterations < 1:
            raise ValueError("SS-Net: method.per_class must be >= 2 and method.vat_iterations >= 1")
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        self.heads = SSNetHeads(self.student.decoder_channels[-1], ctx.num_classes, cfg.feat_dim)
        self.memory: list[torch.Tensor | None] = [None] * ctx.num_classes

    def modules(self):
        return {"student": self.student, "heads": self.heads}

    def distance(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The smoothness distance: soft Dice loss of softmax(logits) to the probabilities ``target``."""
        return dice_loss(logits, target, form=self.cfg.vat_form)

    def selectors(self) -> tuple[dict, dict]:
        h = self.heads
        return ({c: h.selector[str(c)] for c in range(1, self.ctx.num_classes)},
                {c: h.memory_selector[str(c)] for c in range(1, self.ctx.num_classes)})

    @torch.no_grad()
    def update_memory(self, f: torch.Tensor, labels: torch.Tensor) -> None:
        """Prototypes from labeled pixel features ``f`` (already filtered) through the projection head in
        eval mode; a class absent from ``labels`` keeps its previous prototypes."""
        if f.shape[0] == 0:
            return
        proj = self.heads.projection
        was = proj.training
        proj.train(False)
        try:
            z = proj(f)
        finally:
            proj.train(was)
        for c, zc in select_prototypes(z, labels, self.ctx.num_classes, self.cfg.per_class,
                                       self.selectors()[0], self.cfg.ranking).items():
            self.memory[c] = zc

    def training_step(self, batch, step):
        cfg = self.cfg
        n = batch.x_lb.shape[0]
        x = torch.cat([batch.x_lb, batch.x_ulb])
        logits, _, dec = self.student.forward_features(x)
        logits = logits.float()
        probs = logits.softmax(1)
        if cfg.sup == "dice":
            sup = dice_loss(logits[:n], batch.y_lb, form=self.ctx.dice_form)
        else:
            sup = self.supervised_loss(logits[:n], batch.y_lb)

        with bn_stats_frozen(self.student):
            lds, _ = vat_loss(self.student, x, probs.detach(), cfg.xi, cfg.epsilon, self.distance,
                              cfg.vat_iterations, self.ctx.generator)

        feats = pixels(dec[-1])
        y = batch.y_lb.reshape(-1)
        f_lb, f_ulb = feats[:y.numel()], feats[y.numel():]
        pred = probs.detach().argmax(1)
        keep = y > 0
        if cfg.memory_correct_only:
            keep = keep & (pred[:n].reshape(-1) == y)
        self.update_memory(f_lb[keep].detach(), y[keep])
        sel, msel = self.selectors()
        cl_l = prototype_contrast(self.heads.predict(f_lb), y, self.memory, sel, msel, self.ctx.num_classes)
        cl_u = prototype_contrast(self.heads.predict(f_ulb), pred[n:].reshape(-1), self.memory, sel, msel,
                                  self.ctx.num_classes)
        unsup = lds + cfg.contrast_weight * (cl_l + cl_u)
        w = cfg.consistency * self.ramp(step, cfg.rampup)
        return StepOutput(loss=sup + w * unsup, unsup=unsup, terms={
            "sup": sup.detach(), "lds": lds.detach(), "contrast_lb": cl_l.detach(), "contrast_ulb": cl_u.detach(),
            "w_cons": w, "prototypes": sum(0 if m is None else int(m.shape[0]) for m in self.memory)})

    def extra_state(self) -> dict:
        return {**super().extra_state(), "memory": [None if m is None else m.detach().cpu() for m in self.memory]}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        memory = state.get("memory")
        if memory is not None:
            self.memory = [None if m is None else m.to(next(self.heads.parameters()).device) for m in memory]
