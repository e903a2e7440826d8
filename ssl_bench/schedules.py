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


def unsup_weight_rampup(step: int, total: int, own_length: float, length: float | None = None,
                        quantum: float = 0.0, delay: float = 0.0) -> float:
    """The ramp-up factor of an unlabeled-loss weight at ``step`` of a stage of ``total`` steps.

    ``own_length`` is the method's own ramp length (a fraction of the stage budget, from its
    paper); ``length`` replaces it when given (a protocol's shared schedule). ``quantum`` > 0
    holds the factor constant over blocks of ``quantum * total`` steps, as SSL4MIS computes
    ``sigmoid_rampup(iter // 150, 200)`` over its 30k iterations (quantum 150/30000 = 0.005,
    length 1.0). ``delay`` > 0 switches the term off (factor 0) for the first
    ``delay * total`` steps without shifting the ramp (SSL4MIS's Mean Teacher drops its
    consistency loss below iteration 1000 of 30000).
    """
    if delay > 0 and step < delay * total:
        return 0.0
    frac = own_length if length is None else length
    if quantum > 0:
        q = max(1, round(quantum * total))
        step = (step // q) * q
    return sigmoid_rampup(step, frac * total)


def linear_rampup(step: float, length: float) -> float:
    if length <= 0:
        return 1.0
    return float(min(max(step, 0.0), length) / length)


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """Polynomial decay: base_lr * (1 - step / total) ** power."""
    if total <= 0:
        return base_lr
    return base_lr * (1.0 - min(step, total) / total) ** power


def step_lr(base_lr: float, step: int, total: int, every: float) -> float:
    """Step decay: base_lr x 0.1 ** (step // (every x total)), UA-MT's LA schedule (x0.1 every 2500
    of 6000 iterations: ``every`` = 2500 / 6000)."""
    period = max(1, round(every * total))
    return base_lr * 0.1 ** (step // period)


def learning_rate(cfg, step: int, total: int) -> float:
    """The lr of ``step`` of a stage of ``total`` steps: step decay when ``cfg.lr_step`` > 0, else poly."""
    if getattr(cfg, "lr_step", 0.0) > 0:
        return step_lr(cfg.lr, step, total, cfg.lr_step)
    return poly_lr(cfg.lr, step, total, cfg.poly_power)
