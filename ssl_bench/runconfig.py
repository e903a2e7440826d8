"""The resolved configuration of one run: what to train, on what, for how long.

``--set key=value`` addresses ``TrainConfig`` fields (``iterations=2000``, ``augment.strong=contrast``)
and the method's own Config with the ``method.`` prefix (``method.consistency=0.3``).
An unknown key is an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ssl_bench.augment import AugmentConfig
from ssl_bench.config import ConfigError, apply_overrides, to_dict


@dataclass
class RampConfig:
    """The ramp-up of unlabeled-loss weights, shared by every method (``schedules.unsup_weight_rampup``).

    Defaults leave each method's own paper schedule alone; a protocol (``field``) sets the
    SSL4MIS form: ``rampup.length=1.0``, ``rampup.quantum=0.005`` (150 of 30k iterations) and,
    for Mean Teacher, ``rampup.delay=0.0333`` (no consistency before iteration 1000 of 30k).
    """

    length: float | None = None  # fraction of the stage budget; None = the method's own `rampup`
    quantum: float = 0.0  # hold the factor over blocks of quantum * budget steps (0: every step)
    delay: float = 0.0  # unlabeled terms off for the first delay * budget steps

    def __post_init__(self):
        if self.length is not None and self.length < 0 or not 0 <= self.quantum <= 1 or not 0 <= self.delay <= 1:
            raise ConfigError(f"rampup: length={self.length}, quantum={self.quantum}, delay={self.delay}; "
                              "length >= 0, quantum and delay are fractions of the budget in [0, 1]")


@dataclass
class TrainConfig:
    iterations: int = 30000  # base budget: total gradient steps, pre-training stages included
    budget_scale: float = 1.0  # a method's total steps = iterations x budget_scale (protocols)
    labeled_bs: int = 12
    unlabeled_bs: int = 12
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False  # Nesterov momentum in the main SGD (ACTION's release; field v2 for action)
    poly_power: float = 0.9
    image_size: int = 0  # 0 = the dataset's default (256 for real data)
    backbone: str = "unet"
    val_every: int = 200  # validate (and keep best-on-val) every N iterations of the final stage
    checkpoint_every: int = 100  # write the resumable checkpoint every N iterations
    log_every: int = 10
    amp: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CPU threads for torch (0 = engine.default_threads(): OMP_NUM_THREADS, else the free cores).
    # On a 2-core machine shared with another job, 1 thread per process is ~10x faster than 2
    # threads that fight for a busy core.
    threads: int = 0
    deterministic: bool = True
    eval_batch_size: int = 16
    # every method draws labeled_bs + unlabeled_bs slices per step, even one that uses no
    # unlabeled data, so all methods see the same data stream at a seed (protocol `equal`)
    draw_unlabeled: bool = False
    # supervised-only methods fill the whole batch (labeled_bs + unlabeled_bs) with labeled
    # slices, as SSL4MIS's fully supervised script does (protocol `field`)
    supervised_whole_batch: bool = False
    # soft-Dice denominator of every supervised loss: linear (sum p + sum y, ssl-bench's original)
    # or squared (sum p^2 + sum y^2, SSL4MIS/BCP/ACTION code; protocol field v2)
    dice_form: Literal["linear", "squared"] = "linear"
    # test/validation resampling (ssl_bench.evaluate.predict_volume): bilinear image and
    # probabilities (ssl-bench's original) or nearest image and argmax (upstream; field v2)
    eval_resample: Literal["bilinear", "nearest"] = "bilinear"
    # asd/assd/hd95 of a class the prediction misses entirely (ssl_bench.metrics): the volume
    # diagonal (ssl-bench) or 0 (the ACTION and BCP test scripts; field v2)
    empty_asd: Literal["diagonal", "zero"] = "diagonal"
    report_checkpoint: str = "best"  # the test checkpoint tables report for this run: best | last
    # -- speed (issue 11; ssl_bench/step.py, ssl_bench/sampling.py, ssl_bench/evaluate.py) --
    lean: bool = True  # read losses back on the log cadence only; false: every step (reference)
    sampling: Literal["device", "host"] = "device"  # where batches are gathered and augmented
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # with amp=true; float16 adds a scaler
    channels_last: bool = False
    compile: bool = False  # torch.compile the networks; falls back with a warning where it fails
    eval_workers: int = 0  # processes scoring test cases; 0 = one per core the run may use
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    rampup: RampConfig = field(default_factory=RampConfig)
    # -- 3D datasets and the LA protocols (issue 19; ssl_bench/volumetric.py). Left out of the
    # config hash at their defaults (HASH_NEUTRAL), so runs made before they existed keep their dirs.
    patch_size: list[int] = field(default_factory=list)  # 3D training patch (x, y, z); [] = the dataset's
    sw_stride: list[int] = field(default_factory=list)  # sliding-window test strides (x, y, z); [] = the dataset's
    lcc: bool = False  # 3D test: keep each class's largest connected component (SS-Net, BCP, AD-MT)
    # lr x 0.1 every lr_step x the stage budget (UA-MT's LA schedule: 2500 of 6000); 0 = poly decay
    lr_step: float = 0.0
    # the cases that select the best checkpoint: the dataset's validation split; the test cases
    # (the published LA selection, optimistic); or none (the last checkpoint is the best)
    validation: Literal["split", "test", "none"] = "split"

    def __post_init__(self):
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov=true needs momentum > 0; set momentum or nesterov=false")
        if not 0 <= self.lr_step <= 1:
            raise ConfigError(f"lr_step={self.lr_step}; a fraction of the stage budget in [0, 1] (0: poly decay)")
        if self.report_checkpoint not in ("best", "last"):
            raise ConfigError(f"report_checkpoint={self.report_checkpoint!r}; use best or last")
        if not self.budget_scale > 0:
            raise ConfigError(f"budget_scale={self.budget_scale}; give a positive multiplier")

    @property
    def total_iterations(self) -> int:
        """The method's total gradient steps: the base budget times its protocol's scale."""
        return max(1, round(self.iterations * self.budget_scale))


@dataclass
class RunSpec:
    """Everything that identifies a run. ``seed`` initialises the networks and the sampling;
    ``split_seed`` alone chooses the split and the labeled subset."""

    method: str
    dataset: str
    labeled: int | None = None
    ratio: float | None = None
    split: str = "default"
    split_seed: int = 0
    seed: int = 0
    protocol: str = "paper"
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        """The labeled setting as the paper's tables name it."""
        if self.labeled is not None:
            return f"{self.labeled} labeled"
        if self.ratio is not None:
            pct = self.ratio * 100
            return f"{pct:g}% labeled"
        return "all labeled"

    @property
    def setting_slug(self) -> str:
        return self.setting.replace("% labeled", "pct").replace(" labeled", "lab").replace(" ", "-")


_UNSET = object()
#: keys added after runs existed: left out of the resolved config (and its hash) at these defaults
HASH_NEUTRAL: dict[str, Any] = {"patch_size": [], "sw_stride": [], "lcc": False, "lr_step": 0.0,
                                "validation": "split"}


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    train, method = {}, {}
    for k, v in overrides.items():
        if k.startswith("method."):
            method[k[len("method."):]] = v
        else:
            train[k] = v
    return train, method


def resolve(spec: RunSpec, method_cls, dataset_defaults: dict[str, Any] | None = None
            ) -> tuple[TrainConfig, Any]:
    """Defaults < the protocol's training defaults < the dataset's (phantom presets) < the
    protocol's recipe for the method < the run's ``--set`` (``ssl_bench.protocols``)."""
    from ssl_bench.protocols import get_protocol

    protocol = get_protocol(spec.protocol)
    train_over, method_over = split_overrides(
        protocol.overrides(spec.method, dataset_defaults, spec.overrides))
    train_cfg = apply_overrides(TrainConfig(), train_over, where="train config")
    method_cfg = apply_overrides(method_cls.Config(), method_over,
                                 where=f"method {spec.method} config")
    if train_cfg.iterations < 1:
        raise ConfigError("iterations must be >= 1")
    return train_cfg, method_cfg


def resolved_dict(spec: RunSpec, train_cfg: TrainConfig, method_cfg) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d.pop("overrides")
    d["setting"] = spec.setting
    from ssl_bench.protocols import get_protocol

    protocol = get_protocol(spec.protocol)  # "field" and "field-v2" are the same run
    d["protocol"], d["protocol_version"] = protocol.name, protocol.version
    d["train"] = {k: v for k, v in to_dict(train_cfg).items() if HASH_NEUTRAL.get(k, _UNSET) != v}
    d["method_config"] = to_dict(method_cfg) if dataclasses.is_dataclass(method_cfg) else {}
    return d


def config_hash(resolved: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:8]
