"""Exponential moving average of a student into a teacher (Tarvainen & Valpola, NeurIPS 2017)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student``: same weights, never receives gradients."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def ema_momentum(base: float, step: int) -> float:
    """min(1 - 1/(step + 1), base): the teacher follows the student closely in the first steps."""
    return min(1.0 - 1.0 / (step + 1), base)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- m theta_t + (1 - m) theta_s, for parameters and floating-point buffers.

    Multi-tensor (``torch._foreach_*``) ops: a handful of kernel launches for the whole network
    instead of two per tensor, with the same arithmetic as ``t.mul_(m).add_(s, alpha=1 - m)``."""
    pairs = list(zip(teacher.parameters(), student.parameters()))
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            pairs.append((t, s))
        else:
            t.copy_(s)
    if pairs:
        ts, ss = [t for t, _ in pairs], [s.detach() for _, s in pairs]
        torch._foreach_mul_(ts, momentum)
        torch._foreach_add_(ts, ss, alpha=1.0 - momentum)
