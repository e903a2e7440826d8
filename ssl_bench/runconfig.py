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
class TrainConfig:
    iterations: int = 30000  # total gradient steps, pre-training stages included (the budget rule)
    labeled_bs: int = 12
    unlabeled_bs: int = 12
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    image_size: int = 0  # 0 = the dataset's default (256 for real data)
    backbone: str = "unet"
    val_every: int = 200  # validate (and keep best-on-val) every N iterations of the final stage
    checkpoint_every: int = 100  # write the resumable checkpoint every N iterations
    log_every: int = 10
    amp: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CPU threads for torch (0 = torch's default). On a 2-core machine shared with another job,
    # 1 thread per process is ~10x faster than 2 threads that fight for a busy core.
    threads: int = 0
    deterministic: bool = True
    eval_batch_size: int = 16
    # -- speed (issue 11; ssl_bench/step.py, ssl_bench/sampling.py, ssl_bench/evaluate.py) --
    lean: bool = True  # read losses back on the log cadence only; false: every step (reference)
    sampling: Literal["device", "host"] = "device"  # where batches are gathered and augmented
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # with amp=true; float16 adds a scaler
    channels_last: bool = False
    compile: bool = False  # torch.compile the networks; falls back with a warning where it fails
    eval_workers: int = 0  # processes scoring test cases; 0 = one per core the run may use
    augment: AugmentConfig = field(default_factory=AugmentConfig)


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
    """Defaults < the dataset's training defaults (phantom presets) < the run's ``--set``."""
    train_over, method_over = split_overrides({**(dataset_defaults or {}), **spec.overrides})
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
    d["train"] = to_dict(train_cfg)
    d["method_config"] = to_dict(method_cfg) if dataclasses.is_dataclass(method_cfg) else {}
    return d


def config_hash(resolved: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:8]
