"""``ssl-bench bench``: what ssl-bench costs, measured, written under ``results/bench/``.

* ``steps`` (``bench/steps.py``): the median step time and peak memory of every method and stage
  (2D slices, or 3D patches with ``--patch``),
  with its ratio to a UNet-L step that sees as many images (labeled + unlabeled);
* ``eval`` (``bench/eval.py``): the time to score a test set, and the surface metrics against
  medpy on a LiTS-size volume (values compared);
* ``reference-mt`` (``bench/reference_mt.py``): a plain Mean Teacher step after the field's
  published recipe, timed beside ssl-bench's MT step;
* ``anco`` (``bench/anco.py``): what AnCo adds to an ACTION stage-iii step;
* ``card`` (``bench/card.py``): all of the above at the field's configuration, plus two short
  training runs, into one folder (the script for a GPU).

Timings on a shared machine move with other processes' load: every report records the load
average before and after, and the goals are judged on ratios measured side by side in one run.
"""
from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone

import numpy as np
import torch


def device_tag(device: torch.device | str) -> str:
    """``cpu`` or the GPU's name as a file name (``nvidia-h200``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def machine() -> dict:
    """Where and when: recorded in every report."""
    return {"measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_slices(n: int, size: int, num_classes: int = 4, seed: int = 0):
    """``n`` slices (images (n, size, size) float32, labels uint8, case index) of nested squares at
    random offsets (every class present) with Gaussian noise: training data for timing."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        dy, dx = rng.integers(-size // 16, size // 16 + 1, 2)
        for c in range(1, num_classes):
            m = c * size // (2 * num_classes + 2)
            labels[i, max(m + dy, 0): size - m + dy, max(m + dx, 0): size - m + dx] = c
    images = (labels / (num_classes - 1) + rng.normal(0, 0.1, labels.shape)).astype(np.float32)
    return images, labels, np.arange(n) // 4


def synthetic_volumes(n: int, shape: tuple[int, int, int], seed: int = 0):
    """``n`` volumes (lists of (Z, Y, X) float32 images and uint8 labels) of one ellipsoid (the
    foreground, a quarter of each side in radius, centre jittered) in Gaussian noise: 3D training
    data for timing."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    radius = np.array(shape, float)[:, None, None, None] / 4
    images, labels = [], []
    for _ in range(n):
        centre = np.array(shape)[:, None, None, None] / 2 + rng.integers(-2, 3, (3, 1, 1, 1))
        label = (((grid - centre) / radius) ** 2).sum(0) < 1
        images.append((label * 2.0 + rng.normal(0, 0.5, shape)).astype(np.float32))
        labels.append(label.astype(np.uint8))
    return images, labels
