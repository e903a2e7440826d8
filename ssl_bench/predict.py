"""Predictions of a finished run, recomputed from its checkpoint and its resolved config.

The qualitative figure (``ssl_bench.figures.qualitative``) needs a few predicted slices of a
few test cases. They are recomputed rather than saved at test time: the run dir already holds
``checkpoints/{best,last}.pt`` and ``config.json``, so old runs work too, and a LiTS test set
(31 whole CT volumes per checkpoint) is not written to disk for the sake of two slices. The
network is rebuilt exactly as the engine built it (method class, method config, backbone,
number of classes) and runs the inference the run's test scored:

* a 2D run: the engine's slice-by-slice inference (``ssl_bench.evaluate.predict_volume``) at the
  run's image size and ``eval_resample``; one slice is predicted alone, since no other slice
  changes it;
* a 3D run (a dataset with ``spatial_dims = 3``, e.g. LA): the sliding window of the run's test
  (``ssl_bench.volumetric.inference_window``: the run's patch, strides and ``lcc`` switch) over
  the whole volume, since every window that overlaps a slice and the largest-component filter
  of the whole volume decide it.

So a recomputed slice equals the one that was scored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssl_bench.datasets.base import DataError
from ssl_bench.volumetric import SlidingWindow, inference_window, is_volumetric


@dataclass
class RunPredictor:
    """A finished run's predictor network and the test-time inference its test used."""

    network: nn.Module
    image_size: int | tuple[int, ...]  # 2D: the slice size; 3D: the patch (z, y, x)
    resample: str  # 2D: the run's eval_resample
    window: SlidingWindow | None = None  # 3D: the run's ``volumetric.SlidingWindow``; None on 2D runs
    run_dir: Path | None = None  # where the weights and config.json came from

    @property
    def volumetric(self) -> bool:
        return self.window is not None


def load_predictor(run_dir: Path, checkpoint: str, dataset, device: str = "cpu") -> RunPredictor:
    """The run's predictor network with the weights of ``checkpoint`` (best or last) and the
    inference its test used; ``dataset`` is the run's dataset (its number of classes, and whether
    it is 3D)."""
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
    image_size = run_image_size(config, is_volumetric(dataset), run_dir)
    ctx = MethodContext(num_classes=dataset.num_classes, in_channels=1, backbone=train.backbone,
                        image_size=image_size, total_iterations=train.total_iterations,
                        augment=Augmenter(train.augment), generator=torch.Generator().manual_seed(0),
                        rampup=train.rampup)
    predictor = method_cls(method_cfg, ctx).predictor()
    state = torch.load(weights, map_location=device, weights_only=False)
    predictor.load_state_dict(state["predictor"])
    window = inference_window(dataset, train) if is_volumetric(dataset) else None
    return RunPredictor(predictor.to(device).eval(), image_size, train.eval_resample, window, run_dir)


def run_image_size(config: dict, volumetric: bool, run_dir: Path) -> int | tuple[int, ...]:
    """The run's ``image_size`` from its config.json: one number (2D) or the patch (z, y, x) (3D)."""
    size = config["image_size"]
    if volumetric != isinstance(size, list):
        raise DataError(f"{run_dir}/config.json: image_size {size} is that of a {'3D' if isinstance(size, list) else '2D'} "
                        f"run, but dataset {config.get('dataset')!r} is {'3D' if volumetric else '2D'} here; "
                        f"draw the run with the dataset it was trained on (--dataset)")
    return tuple(int(v) for v in size) if volumetric else int(size)


def predict_volume(run: RunPredictor, volume: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The run's predicted class map of a whole (Z, Y, X) volume, as its test scored it: the
    sliding window (3D runs) or slice by slice (2D runs)."""
    from ssl_bench.evaluate import predict_volume as predict_slices

    if run.volumetric:
        return run.window(run.network, volume, device)
    return predict_slices(run.network, volume, run.image_size, device, resample=run.resample)


def predict_slice(run: RunPredictor, volume: np.ndarray, z: int, device: str = "cpu") -> np.ndarray:
    """The predicted class map of slice ``z`` (axis 0) of a (Z, Y, X) volume, as the test scored it.
    A 2D run predicts that slice alone; a 3D run predicts the whole volume (``predict_volume``)."""
    if run.volumetric:
        return predict_volume(run, volume, device)[z]
    return predict_volume(run, volume[z:z + 1], device)[0]
