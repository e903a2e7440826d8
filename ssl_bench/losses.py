"""Loss functions shared by the methods. Each is a plain function on tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
              include_background: bool = True) -> torch.Tensor:
    """Soft Dice loss averaged over classes: 1 - mean_c (2 sum p_c y_c + eps) / (sum p_c + sum y_c + eps).

    ``logits`` (B, C, *spatial); ``target`` (B, *spatial) integer labels or (B, C, *spatial) soft targets.
    """
    probs = logits.float().softmax(dim=1)
    if target.dim() == probs.dim() - 1:
        onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).float()
    else:
        onehot = target.float()
    dims = (0, *range(2, probs.dim()))  # batch and every spatial dim (2D or 3D)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    if not include_background:
        dice = dice[1:]
    return 1.0 - dice.mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 * (cross-entropy + Dice), the supervised loss of the field's tables."""
    return 0.5 * (F.cross_entropy(logits.float(), target.long()) + dice_loss(logits, target))


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
