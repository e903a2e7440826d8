"""Schedules as plain functions of the step."""
from __future__ import annotations

import math


def sigmoid_rampup(step: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = step / length clipped to [0, 1] (Laine & Aila, ICLR 2017).

    Used for the weight of consistency terms; 1.0 from ``length`` on, and 1.0 when length <= 0.
    """
    if length <= 0:
        return 1.0
    t = min(max(step, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_rampup(step: float, length: float) -> float:
    if length <= 0:
        return 1.0
    return float(min(max(step, 0.0), length) / length)


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """Polynomial decay: base_lr * (1 - step / total) ** power."""
    if total <= 0:
        return base_lr
    return base_lr * (1.0 - min(step, total) / total) ** power
