"""Helpers for the registry-wide method tests (also usable by plugin authors).

``tiny_setup(name)`` builds a method on a tiny context and batch; ``run_contract(...)`` checks,
for every stage of the method, the contract every method must honour: a finite loss, a gradient
for every trainable parameter, a differentiable unlabeled term, teachers without gradients that
move by EMA (or are held, momentum 1), logged terms that are numbers or detached scalar tensors.
"""
from __future__ import annotations

import dataclasses

import torch

from ssl_bench.augment import AugmentConfig, Augmenter
from ssl_bench.config import apply_overrides
from ssl_bench.registry import get_method_class


def tiny_batch(n_lb=2, n_ulb=2, size=32, num_classes=4, seed=0, dims=2):
    """A tiny batch of ``dims``-D images (2: (B, 1, S, S) slices; 3: (B, 1, S, S, S) patches)."""
    from ssl_bench.methods.base import Batch

    g = torch.Generator().manual_seed(seed)
    spatial = (size,) * dims
    x_lb = torch.rand(n_lb, 1, *spatial, generator=g)
    # blocky labels so that every class is present
    y = torch.zeros(n_lb, *spatial, dtype=torch.long)
    q = size // 4
    for c in range(1, num_classes):
        y[:, q * (c - 1) + 2: q * c, 4: size - 4] = c
    x_ulb = torch.rand(n_ulb, 1, *spatial, generator=g)
    aug = Augmenter() if dims == 2 else Augmenter(AugmentConfig(weak=["rot90", "flip"]))
    xw, xs = aug.pair(x_ulb, g)
    return Batch(x_lb=x_lb, y_lb=y, x_ulb=xw, x_ulb_strong=xs, x_ulb_raw=x_ulb,
                 x_lb_raw=x_lb.clone(), y_lb_raw=y.clone(),
                 pos_lb=torch.linspace(0, 1, n_lb), pos_ulb=torch.linspace(0, 1, n_ulb),
                 case_lb=torch.arange(n_lb), case_ulb=torch.arange(n_ulb) + n_lb)


def tiny_setup(name: str, overrides: dict | None = None, size: int = 32, num_classes: int = 4,
               total_iterations: int = 20, seed: int = 0, dims: int = 2):
    """``dims=3``: the method on the field's V-Net and 3D patches (``size`` a multiple of 16)."""
    from ssl_bench.methods.base import MethodContext

    torch.manual_seed(seed)
    cls = get_method_class(name)
    cfg = apply_overrides(cls.Config(), overrides or {}, where=f"method {name}")
    ctx = MethodContext(num_classes=num_classes, image_size=size if dims == 2 else (size,) * dims,
                        total_iterations=total_iterations, generator=torch.Generator().manual_seed(seed),
                        backbone="unet" if dims == 2 else "vnet",
                        augment=Augmenter() if dims == 2 else Augmenter(AugmentConfig(weak=["rot90", "flip"])))
    method = cls(cfg, ctx)
    return method, tiny_batch(size=size, num_classes=num_classes, seed=seed, dims=dims)


def check_stage(method, batch, step: int | None = None) -> dict:
    """Run one optimisation step in the current stage and return what was observed.

    By default the step is the end of the budget, where ramp-ups are complete: a gated term
    (UAMT's uncertainty mask, a confidence threshold) is then as open as the method makes it."""
    if step is None:
        step = max(method.ctx.total_iterations - 1, 0)
    method.train(True)
    params = method.trainable_parameters()
    assert params, f"{method.stage}: no trainable parameters"
    for m in method.modules().values():
        m.zero_grad(set_to_none=True)
    out = method.training_step(batch, step)
    assert torch.isfinite(out.loss).all(), f"stage {method.stage}: non-finite loss {out.loss}"
    for key, value in out.terms.items():  # the loop keeps terms for log_every steps: no graphs
        if torch.is_tensor(value):
            assert not value.requires_grad and value.numel() == 1, \
                f"stage {method.stage}: term {key!r} must be a detached scalar tensor (use .detach())"
        else:
            assert isinstance(value, (int, float)), f"stage {method.stage}: term {key!r} is a {type(value).__name__}"
    unsup_grad = None
    if out.unsup is not None:
        assert out.unsup.requires_grad, f"stage {method.stage}: unsupervised term is not differentiable"
        grads = torch.autograd.grad(out.unsup, params, retain_graph=True, allow_unused=True)
        unsup_grad = sum(float(g.abs().sum()) for g in grads if g is not None)
    out.loss.backward(retain_graph=bool(out.aux_losses))
    missing = [i for i, p in enumerate(params) if p.grad is None]
    names = {id(p): f"{mn}.{pn}" for mn, m in method.modules().items() for pn, p in m.named_parameters()}
    missing_names = [names.get(id(params[i]), f"#{i}") for i in missing]
    teacher_grads = [n for t, _, _ in method.teachers().values() for n, p in t.named_parameters()
                     if p.grad is not None or p.requires_grad]
    # one SGD step, then the EMA hook
    before = {k: [p.detach().clone() for p in t.parameters()] for k, (t, _, _) in method.teachers().items()}
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-0.1)
    method.ema_step = max(method.ema_step, 10_000)  # momentum = configured value
    method.after_optimizer_step(step)
    ema_ok = {}
    for k, (t, s, m) in method.teachers().items():
        exp = [m * b + (1 - m) * sp.detach() for b, sp in zip(before[k], s.parameters())]
        moved = any(not torch.equal(a, b) for a, b in zip(before[k], t.parameters()))
        close = all(torch.allclose(e, a, atol=1e-6) for e, a in zip(exp, t.parameters()))
        ema_ok[k] = close and (moved or m == 1.0)  # momentum 1: held this step (AD-MT's idle teacher)
    return {"loss": float(out.loss.detach()), "missing": missing_names, "unsup_grad": unsup_grad,
            "teacher_grads": teacher_grads, "ema_ok": ema_ok, "out": out}


def run_contract(name: str, overrides: dict | None = None, dims: int = 2) -> list[dict]:
    """The contract of every stage, on 2D slices (``dims=2``) or, ``dims=3``, on 32^3 patches with
    the V-Net (its bottleneck is then 2^3: batch norm needs more than one value per channel).
    Without ``overrides`` a method's ``contract_overrides`` (config values that open a fixed
    confidence gate, which a random network on a tiny batch never passes) apply; its own tests
    check the gate at its real value."""
    if overrides is None:
        overrides = dict(getattr(get_method_class(name), "contract_overrides", {}))
    method, batch = tiny_setup(name, overrides, **({} if dims == 2 else {"size": 32, "num_classes": 2, "dims": 3}))
    reports = []
    for stage in method.stages():
        method.set_stage(stage.name)
        rep = check_stage(method, batch)
        rep["stage"] = stage.name
        reports.append(rep)
    return reports


def config_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Config)]
