"""The method interface. A method is one small file that *computes losses*.

The shared loop (``ssl_bench.engine``) owns everything else: sampling, augmentation of the
batch, backward, optimiser and poly LR, AMP, checkpoints, evaluation and logging. A method:

* declares its hyperparameters in a ``Config`` dataclass with its paper's defaults;
* builds its networks in ``__init__`` from ``ctx.make_backbone()``;
* lists every network in ``modules()`` (the loop moves, checkpoints and counts them) and the
  EMA teachers in ``teachers()`` (never given to an optimiser, updated in ``after_optimizer_step``);
* returns a ``StepOutput`` from ``training_step(batch, step)``;
* optionally splits its budget into ``stages()`` (ACTION, GCL, SCS), and owns extra optimisers
  through ``aux_losses`` + ``aux_parameters()`` (DAN's discriminator).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ssl_bench.augment import Augmenter
from ssl_bench.ema import ema_momentum, ema_update
from ssl_bench.losses import supervised_loss
from ssl_bench.nets import create_backbone
from ssl_bench.schedules import unsup_weight_rampup
from ssl_bench.registry import register_method  # re-exported for plugins  # noqa: F401
from ssl_bench.runconfig import RampConfig


@dataclass
class EmptyConfig:
    """A method without hyperparameters of its own."""


@dataclass
class MethodContext:
    num_classes: int
    in_channels: int = 1
    backbone: str = "unet"
    image_size: int = 256
    total_iterations: int = 1000
    augment: Augmenter = field(default_factory=Augmenter)
    generator: torch.Generator | None = None  # for random choices inside methods
    rampup: "RampConfig | None" = None  # the run's shared ramp-up schedule (None: each method's own)
    dice_form: str = "linear"  # the soft-Dice form of every supervised loss (train key ``dice_form``)

    def make_backbone(self) -> nn.Module:
        return create_backbone(self.backbone, self.in_channels, self.num_classes)


@dataclass
class Batch:
    """One training batch, already on the device and augmented by the loop.

    ``x_ulb`` is the weak view of the unlabeled slices and ``x_ulb_strong`` a strong view with
    the *same geometry* (pixel-aligned). ``x_ulb_raw`` is the un-augmented slice, for methods
    that build their own views. Unlabeled tensors have batch size 0 for supervised methods.
    """

    x_lb: torch.Tensor
    y_lb: torch.Tensor
    x_ulb: torch.Tensor
    x_ulb_strong: torch.Tensor
    x_ulb_raw: torch.Tensor
    x_lb_raw: torch.Tensor | None = None
    y_lb_raw: torch.Tensor | None = None
    #: relative position of each slice in its volume, z / (Z - 1) in [0, 1] (GCL's partitions)
    pos_lb: torch.Tensor | None = None
    pos_ulb: torch.Tensor | None = None
    #: index of the volume each slice comes from (distinct volumes have distinct indices)
    case_lb: torch.Tensor | None = None
    case_ulb: torch.Tensor | None = None

    @property
    def device(self):
        return self.x_lb.device


@dataclass
class StepOutput:
    """``loss`` is backpropagated into ``trainable_parameters()``; ``terms`` are logged.

    A term is a number or a detached 0-d tensor (``sup.detach()``, not ``float(sup)``): the loop
    reads tensors back only when it logs, so a term costs no host synchronisation per step.

    ``unsup`` is the unlabeled term (a differentiable tensor) that the registry-wide test
    checks for gradient flow; ``None`` for purely supervised methods.
    ``aux_losses`` maps the name of an auxiliary optimiser to the loss it minimises.
    """

    loss: torch.Tensor
    terms: dict[str, float | torch.Tensor] = field(default_factory=dict)
    unsup: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Stage:
    """A phase of a multi-stage method: its share of the iteration budget."""

    name: str
    fraction: float
    uses_labels: bool = True


class Method:
    """Base class. Subclasses set ``Config``, ``paper`` and implement ``training_step``."""

    Config: type = EmptyConfig
    paper: str = ""
    #: True for methods that train on every training case with labels (UNet-F)
    fully_supervised: bool = False
    #: True for methods that use no unlabeled data at all (UNet-L)
    supervised_only: bool = False

    def __init__(self, cfg, ctx: MethodContext):
        self.cfg = cfg
        self.ctx = ctx
        self.stage = self.stages()[0].name
        self.ema_step = 0

    # -- networks ---------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Every network the method owns, by name (teachers included)."""
        raise NotImplementedError

    def teachers(self) -> dict[str, tuple[nn.Module, nn.Module, float]]:
        """EMA teachers: name -> (teacher, student it follows, momentum)."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the main optimiser: everything but teachers and auxiliary parameters."""
        excluded = {id(p) for t, _, _ in self.teachers().values() for p in t.parameters()}
        excluded |= {id(p) for params in self.aux_parameters().values() for p in params}
        seen: set[int] = set()
        params = []
        for m in self.modules().values():
            for p in m.parameters():
                if id(p) in excluded or id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                params.append(p)
        return params

    def aux_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters stepped by their own optimisers (name -> parameters)."""
        return {}

    def make_aux_optimizer(self, name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimiser for ``aux_parameters()[name]`` (default Adam, lr 1e-4)."""
        return torch.optim.Adam(params, lr=1e-4)

    def ablation_tag(self) -> str:
        """Which ablation of the method this run is ("none" for the full method); logged as a tag."""
        return "none"

    def predictor(self) -> nn.Module:
        """The network used at inference (image -> logits)."""
        return self.modules()["student"]

    # -- training ---------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        return [Stage("train", 1.0)]

    def set_stage(self, name: str) -> None:
        """Called by the loop when a stage starts (also when resuming into it)."""
        self.stage = name

    def on_stage_start(self, name: str) -> None:
        """Called by the loop once per stage, at its step 0, *after* any checkpoint was loaded:
        the place for one-off work at a stage boundary (ACTION's released form re-copies its
        teacher here). Never called when a run resumes in the middle of a stage."""

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """EMA update of every teacher (override for other bookkeeping, call super)."""
        for teacher, student, momentum in self.teachers().values():
            ema_update(teacher, student, ema_momentum(momentum, self.ema_step))
        self.ema_step += 1

    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """0.5 (CE + soft Dice) with the run's ``dice_form`` (``ssl_bench.losses.supervised_loss``):
        every method computes its supervised term through this, so the switch reaches them all."""
        return supervised_loss(logits, target, dice_form=self.ctx.dice_form)

    def ramp(self, step: int, fraction: float) -> float:
        """Ramp-up factor of an unlabeled weight: the method's own sigmoid ramp over ``fraction``
        of the stage budget, unless the run's ``rampup`` schedule (a protocol) overrides it."""
        r = self.ctx.rampup or RampConfig()
        return unsup_weight_rampup(step, self.ctx.total_iterations, fraction, r.length, r.quantum, r.delay)

    def extra_state(self) -> dict:
        """Non-parameter state to checkpoint (memory banks, counters)."""
        return {"ema_step": self.ema_step}

    def load_extra_state(self, state: dict) -> None:
        self.ema_step = int(state.get("ema_step", 0))

    def train(self, mode: bool = True) -> None:
        for name, m in self.modules().items():
            m.train(mode)

    def to(self, device) -> "Method":
        for m in self.modules().values():
            m.to(device)
        return self


def ramp(step: int, total_iterations: int, fraction: float) -> float:
    """Sigmoid ramp-up over ``fraction`` of the budget (convenience for methods)."""
    return unsup_weight_rampup(step, total_iterations, fraction)


Factory = Callable[..., Method]
