"""Loss functions shared by the methods. Each is a plain function on tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


DICE_FORMS = ("linear", "squared")


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, form: str = "linear", eps: float = 1e-5,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class soft Dice over the batch and every spatial dim, shape (C,).

    ``form="linear"``: (2 sum p y + eps) / (sum p + sum y + eps) (ssl-bench's original form);
    ``form="squared"``: (2 sum p y + eps) / (sum p^2 + sum y^2 + eps), the form of SSL4MIS
    ``code/utils/losses.py`` ``DiceLoss._dice_loss`` (also BCP's and ACTION's losses). ``weight``
    (broadcastable to ``probs``) multiplies every summand once (BCP's region-masked Dice).
    """
    if form not in DICE_FORMS:
        raise ValueError(f"dice_form={form!r}; choose one of {', '.join(DICE_FORMS)}")
    w = torch.ones_like(probs) if weight is None else weight.expand_as(probs)
    dims = (0,) + tuple(range(2, probs.dim()))
    inter = (probs * onehot * w).sum(dims)
    if form == "squared":
        denom = (probs * probs * w).sum(dims) + (onehot * onehot * w).sum(dims)
    else:
        denom = (probs * w).sum(dims) + (onehot * w).sum(dims)
    return (2 * inter + eps) / (denom + eps)


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *S) integer labels -> (B, C, *S) float one-hot."""
    return F.one_hot(target.long(), num_classes).movedim(-1, 1).float()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
              include_background: bool = True, form: str = "linear") -> torch.Tensor:
    """Soft Dice loss averaged over classes: 1 - mean_c dice_c (``soft_dice``, ``form`` linear
    or squared, the train key ``dice_form``).

    ``logits`` (B, C, *S); ``target`` (B, *S) integer labels or (B, C, *S) soft targets.
    """
    probs = logits.float().softmax(dim=1)
    if target.dim() == probs.dim() - 1:
        onehot = one_hot(target, probs.shape[1])
    else:
        onehot = target.float()
    dice = soft_dice(probs, onehot, form, eps)
    if not include_background:
        dice = dice[1:]
    return 1.0 - dice.mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, dice_form: str = "linear") -> torch.Tensor:
    """0.5 * (cross-entropy + Dice), the supervised loss of the field's tables. Methods call it
    through ``Method.supervised_loss``, which passes the run's ``dice_form``."""
    return 0.5 * (F.cross_entropy(logits.float(), target.long())
                  + dice_loss(logits, target, form=dice_form))


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between softmax probabilities (teacher side detached)."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.detach().float().softmax(1))


def kl_divergence(p_target: torch.Tensor, log_q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(p || q) = sum p (log p - log q), averaged over the other dims; 0 log 0 = 0."""
    p = p_target.float()
    logp = torch.where(p > 0, p.clamp_min(1e-30).log(), torch.zeros_like(p))
    return (p * (logp - log_q.float())).sum(dim).mean()


def entropy_map(logits: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Pixel-wise entropy of the softmax, divided by log C when ``normalise`` (values in [0, 1])."""
    p = logits.float().softmax(1)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    if normalise:
        ent = ent / torch.log(torch.tensor(float(logits.shape[1])))
    return ent


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None,
                     eps: float = 1e-5) -> torch.Tensor:
    """The Dice loss of SSL4MIS's ``DiceLoss`` with its ``ignore`` map, on any number of spatial dims.

    Per class c: 1 - (2 sum p_c y_c + eps) / (sum p_c^2 + sum y_c^2 + eps), the sums over the batch and
    the pixels where ``keep`` (B, *spatial; 1 = counted) is set; the mean over all classes (background
    included). ``logits`` (B, C, *spatial), ``target`` (B, *spatial) integer labels. The squared
    denominator is SSL4MIS's (and the ABD, AD-MT and UniMatch releases'), unlike ``dice_loss``.
    """
    probs = logits.float().softmax(1)
    weight = None if keep is None else keep.to(probs.dtype).unsqueeze(1)
    return 1.0 - soft_dice(probs, one_hot(target, probs.shape[1]), "squared", eps, weight=weight).mean()
