"""Predictions of a finished run, recomputed from its checkpoint and its resolved config.

The qualitative figure (``ssl_bench.figures.qualitative``) needs a few predicted slices of a
few test cases. They are recomputed rather than saved at test time: the run dir already holds
``checkpoints/{best,last}.pt`` and ``config.json``, so old runs work too, and a LiTS test set
(31 whole CT volumes per checkpoint) is not written to disk for the sake of two slices. The
network is rebuilt exactly as the engine built it (method class, method config, backbone,
number of classes) and runs the engine's own slice-by-slice inference
(``ssl_bench.evaluate.predict_volume``), so a recomputed slice equals the one that was scored.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ssl_bench.datasets.base import DataError


def load_predictor(run_dir: Path, checkpoint: str, num_classes: int, device: str = "cpu"):
    """The run's predictor network with the weights of ``checkpoint`` (best or last), its
    inference size and its test resampling (``eval_resample``)."""
    from ssl_bench.augment import Augmenter
    from ssl_bench.config import from_dict
    from ssl_bench.methods.base import MethodContext
    from ssl_bench.registry import get_method_class
    from ssl_bench.runconfig import TrainConfig

    run_dir = Path(run_dir)
    weights = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not weights.exists():
        raise DataError(f"{weights} is missing: the run did not finish, or its checkpoints were deleted; "
                        f"run it again (ssl-bench run ... resumes it) or leave it out")
    config = json.loads((run_dir / "config.json").read_text())
    method_cls = get_method_class(config["method"])
    train = from_dict(TrainConfig, config["train"], where=f"{run_dir}/config.json train")
    method_cfg = from_dict(method_cls.Config, config.get("method_config", {}),
                           where=f"{run_dir}/config.json method_config")
    ctx = MethodContext(num_classes=num_classes, in_channels=1, backbone=train.backbone,
                        image_size=int(config["image_size"]), total_iterations=train.total_iterations,
                        augment=Augmenter(train.augment), generator=torch.Generator().manual_seed(0),
                        rampup=train.rampup)
    predictor = method_cls(method_cfg, ctx).predictor()
    state = torch.load(weights, map_location=device, weights_only=False)
    predictor.load_state_dict(state["predictor"])
    return predictor.to(device).eval(), int(config["image_size"]), train.eval_resample


def predict_slice(predictor, image_size: int, volume: np.ndarray, z: int, device: str = "cpu",
                  resample: str = "bilinear") -> np.ndarray:
    """The predicted class map of slice ``z`` of a (Z, Y, X) volume, as the test scored it (give
    the run's ``eval_resample``, the third value of ``load_predictor``)."""
    from ssl_bench.evaluate import predict_volume

    return predict_volume(predictor, volume[z:z + 1], image_size, device, resample=resample)[0]
