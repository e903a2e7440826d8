"""One training iteration on the device without host synchronisation (the loop's lean step).

Reading a GPU tensor's value (``float(loss)``, ``.item()``, ``if tensor:``) makes the CPU wait
until every queued kernel has run, so the GPU idles while the CPU prepares the next step. The
loop therefore never reads a value in its hot path:

* ``StepMonitor`` keeps each step's detached loss and logged terms (``StepOutput.terms`` may hold
  tensors) and reads them back in one transfer when the loop logs (every ``log_every`` steps),
  validates or checkpoints. The non-finite check covers every step kept, so a diverged run still
  fails naming the stage and the first bad step, and no checkpoint is ever written from weights
  that a non-finite loss has touched. ``--set lean=false`` reads back every step before the
  weights are updated (the loop before issue 11: the reference path, and a debugging aid);
* ``StepRunner`` runs ``training_step`` under autocast (bfloat16 by default: no gradient scaler,
  whose inf check is itself a synchronisation; float16 uses the scaler), backward, the main and
  auxiliary optimiser steps and the EMA hook;
* ``prepare_modules`` puts the networks in ``channels_last`` memory format and compiles, with
  ``torch.compile``, the units each step calls (``compile_units``: a backbone's encoder and
  decoder, the heads), not the networks' ``forward``, which several methods never call. A compilation that fails (no compiler, an unsupported op)
  happens on the first call, so the runner guards the first step of every stage: on failure it
  warns, rolls the step back (weights, optimisers, RNG, method state), and reruns it without
  compilation. Validation and testing run the networks uncompiled (``eager``), so no graph is
  compiled outside those guarded steps.
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path

import torch

#: ``torch.compile`` backend; None: ``$SSL_BENCH_COMPILE_BACKEND`` or inductor (tests use cheaper
#: or failing ones)
COMPILE_BACKEND = None


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _values(terms: dict) -> dict[str, float]:
    """Terms as floats, every tensor read back in one transfer."""
    keys = [k for k, v in terms.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in terms.items() if not torch.is_tensor(v)}
    if keys:
        read = torch.stack([terms[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, read))
    return {k: out[k] for k in terms}


class StepMonitor:
    """Losses and terms of the steps since the last ``read``, as device tensors."""

    def __init__(self, checkpoint_dir: Path | str):
        self.checkpoint_dir = checkpoint_dir
        self.pending: list[tuple[str, int, torch.Tensor, dict]] = []
        self.last: dict[str, float] = {}  # the values read back last

    def record(self, stage: str, step: int, loss: torch.Tensor, terms: dict) -> None:
        if self.pending and self.pending[-1][:2] == (stage, step):  # a step rerun (compile fallback)
            self.pending.pop()
        self.pending.append((stage, step, loss.detach(), dict(terms)))

    def read(self) -> dict[str, float]:
        """Check every pending step and return the last one's ``loss`` and terms as floats (the
        values read before when nothing is pending). Raises ``TrainingDiverged`` naming the first
        non-finite step."""
        if not self.pending:
            return self.last
        pending, self.pending = self.pending, []
        losses = torch.stack([loss.float().reshape(()) for _, _, loss, _ in pending]).cpu()
        bad = torch.nonzero(~torch.isfinite(losses))
        if len(bad):
            i = int(bad[0])
            stage, step, _, terms = pending[i]
            shown = ", ".join(f"{k}={v:.4g}" for k, v in _values(terms).items()) or "none"
            raise TrainingDiverged(
                f"loss became {float(losses[i])} at stage {stage!r}, step {step} (terms: {shown}); "
                f"lower --set lr=... or check the input data. The run is marked failed; finished "
                f"checkpoints in {self.checkpoint_dir} are kept")
        self.last = {"loss": float(losses[-1]), **_values(pending[-1][3])}
        return self.last


def amp_settings(device: torch.device, amp: bool, amp_dtype: str) -> tuple[torch.dtype, bool]:
    """(autocast dtype, whether a gradient scaler is needed)."""
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[amp_dtype]
    if amp and dtype == torch.float16 and device.type != "cuda":
        raise ValueError("--set amp_dtype=float16 needs a CUDA device; use amp_dtype=bfloat16 on a CPU")
    return dtype, amp and dtype == torch.float16


def compile_units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules of ``module`` whose calls a step makes, to be compiled.

    Compiling a network's ``__call__`` compiles nothing when a method reaches its layers through
    other entry points (``backbone.forward_features``, ``encode``/``decode``, ``global_embedding``,
    ``rep_head.at_points``: ACTION, CCT, URPC, GCL, SCS). So a backbone names its units
    (``compile_units()``: the U-Net's encoder and decoder, every path of which goes through them),
    a module holding a backbone is searched below, a container (``ModuleDict``/``ModuleList``, or a
    module without ``forward``) is searched through its children, and any other module (a head,
    a predictor, a discriminator) is a unit itself."""
    units = getattr(module, "compile_units", None)
    if callable(units):
        return list(units())
    children = list(module.children())
    holds_units = any(callable(getattr(m, "compile_units", None)) for c in children for m in c.modules())
    if holds_units or type(module).forward is torch.nn.Module.forward:
        return [u for c in children for u in compile_units(c)]
    return [module]


def compile_backend():
    return COMPILE_BACKEND or os.environ.get("SSL_BENCH_COMPILE_BACKEND", "inductor")


def prepare_modules(method, channels_last: bool, compile: bool) -> bool:
    """Apply the memory format to every network and compile the units each step calls
    (``compile_units``); returns whether compiled."""
    seen: set[int] = set()
    for module in method.modules().values():
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if compile:
            for unit in compile_units(module):
                if id(unit) not in seen:  # a unit shared by two networks is compiled once
                    seen.add(id(unit))
                    unit.compile(backend=compile_backend())
    return compile


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (its ``unique_graphs`` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compiled_modules(method) -> list[torch.nn.Module]:
    return [m for network in method.modules().values() for m in network.modules()
            if getattr(m, "_compiled_call_impl", None) is not None]  # what nn.Module.compile() set


def uncompile(method) -> None:
    for module in _compiled_modules(method):
        module._compiled_call_impl = None  # None = eager calls


@contextlib.contextmanager
def eager(method):
    """The networks run uncompiled inside (their compiled calls are restored on exit). Validation
    and testing segment batches of every size up to ``eval_batch_size`` in eval mode without
    gradients: compiled, each would be a new graph (30-60 s of inductor each, review D5), and a
    compiler failing on one would crash the run past the first-step guard. Eager inference of a
    few hundred slices costs far less than one compile."""
    modules = _compiled_modules(method)
    saved = [m._compiled_call_impl for m in modules]
    uncompile(method)
    try:
        yield
    finally:
        for m, impl in zip(modules, saved):
            m._compiled_call_impl = impl


class StepRunner:
    """Forward (under autocast), backward and optimiser steps of one iteration of one stage."""

    def __init__(self, method, opt, aux_opts: dict, scaler, device: torch.device, amp: bool,
                 amp_dtype: torch.dtype, compiled: bool = False, generator: torch.Generator | None = None):
        self.method, self.opt, self.aux_opts, self.scaler = method, opt, aux_opts, scaler
        self.device, self.amp, self.amp_dtype = device, amp, amp_dtype
        self.compiled = compiled  # the networks are compiled; false after a fallback
        self._guard = compiled  # guard the first step of the stage (its code paths compile then)
        self.generator = generator  # the method's own generator (ctx.generator), rolled back too

    def __call__(self, batch, step: int, between=None):
        """One iteration; ``between(out)`` runs after the forward pass, before any update."""
        if not self._guard:
            return self._step(batch, step, between)
        snapshot = self._snapshot()
        try:
            out = self._step(batch, step, between)
        except TrainingDiverged:
            raise
        except Exception as exc:  # noqa: BLE001  (a compile failure can be any exception)
            warnings.warn(f"torch.compile failed in the first step ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); continuing without compile",
                          RuntimeWarning, stacklevel=2)
            uncompile(self.method)
            self.compiled = False
            self._restore(snapshot)
            out = self._step(batch, step, between)
        self._guard = False
        return out

    def _step(self, batch, step, between):
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.method.training_step(batch, step)
        if between is not None:
            between(out)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward(retain_graph=bool(out.aux_losses))
        self.scaler.step(self.opt)
        for k, aux_loss in out.aux_losses.items():
            o = self.aux_opts[k]
            o.zero_grad(set_to_none=True)
            self.scaler.scale(aux_loss).backward()
            self.scaler.step(o)
        self.scaler.update()
        self.method.after_optimizer_step(step)
        return out

    # -- rollback of a failed compiled first step --------------------------------------------
    def _snapshot(self) -> dict:
        return {
            "modules": {k: copy.deepcopy(m.state_dict()) for k, m in self.method.modules().items()},
            "opt": copy.deepcopy(self.opt.state_dict()),
            "aux": {k: copy.deepcopy(o.state_dict()) for k, o in self.aux_opts.items()},
            "scaler": copy.deepcopy(self.scaler.state_dict()),
            "method": copy.deepcopy(self.method.extra_state()),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "generator": self.generator.get_state() if self.generator is not None else None,
        }

    def _restore(self, s: dict) -> None:
        for k, m in self.method.modules().items():
            m.load_state_dict(s["modules"][k])
            m.zero_grad(set_to_none=True)
        self.opt.load_state_dict(s["opt"])
        for k, o in self.aux_opts.items():
            o.load_state_dict(s["aux"][k])
        self.scaler.load_state_dict(s["scaler"])
        self.method.load_extra_state(s["method"])
        torch.set_rng_state(s["rng"])
        if s["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        if s["generator"] is not None:
            self.generator.set_state(s["generator"])
