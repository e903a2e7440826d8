"""Batches gathered and augmented on the device equal the CPU path's (ssl_bench/sampling.py).

Two checks:

* with one seed, the device path reproduces the host path exactly on a CPU (the random numbers
  come from the same CPU generator in the same order);
* a statistical test of the augmentation *distribution*, run on every available device (a GPU's
  interpolation kernels round differently, so equality is not the right check there): slices of
  one asymmetric image are drawn many times through the device path (seed 1) and the host path
  (seed 2), and per-sample statistics of what comes out are compared with two-sample
  Kolmogorov-Smirnov tests:

  - the centroid (row, column) of the warped label: rot90, flips, free rotation and the crop's
    shift move it;
  - the label's area: the crop's zoom scales it;
  - the mean of the weak view, and of the strong view minus the weak one (brightness), and the
    ratio of their spreads (contrast).

  Each test passes at p > 0.001 (six statistics: a false alarm in under 1% of seeds; the seeds
  are fixed, so the outcome is reproducible). A negative control draws the host path with a
  wider rotation and a smaller crop and must be told apart: the test has the power to catch a
  changed distribution, not only a broken one.
"""
import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from ssl_bench.augment import AugmentConfig, Augmenter
from ssl_bench.runconfig import TrainConfig
from ssl_bench.sampling import SlicePool, make_batch, place_pools

SIZE = 24
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _slices(n=6):
    """``n`` copies of an image whose label blob sits off-centre, and a raised square."""
    y = np.zeros((n, SIZE, SIZE), np.uint8)
    y[:, 3:9, 4:13] = 1  # upper left: rotations and flips move its centroid
    x = np.full((n, SIZE, SIZE), 0.2, np.float32) + 0.5 * y
    x[:, 15:20, 15:22] += 0.3
    return x, y, np.arange(n) // 3


def _pools(device=None):
    lb, ulb = SlicePool(_slices()), SlicePool(_slices())
    if device is not None:
        place_pools([lb, ulb], device)
    return lb, ulb


def _cfg(bs):
    return TrainConfig(labeled_bs=bs, unlabeled_bs=bs)


def test_device_path_reproduces_the_host_path_on_a_cpu():
    aug = Augmenter()
    batches = []
    for pools in (_pools(), _pools("cpu")):
        g = torch.Generator().manual_seed(7)
        batches.append([make_batch(*pools, _cfg(4), aug, g, "cpu", True) for _ in range(3)])
    for host, dev in zip(*batches):
        for f in dataclasses.fields(host):
            a, b = getattr(host, f.name), getattr(dev, f.name)
            assert a.dtype == b.dtype and torch.equal(a, b), f.name


def _statistics(pools, aug, seed, device, n_batches=20, bs=64):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_batches):
        b = make_batch(*pools, _cfg(bs), aug, g, device, True)
        y = (b.y_lb == 1).float().cpu()
        area = y.sum((1, 2))
        grid = torch.arange(SIZE, dtype=torch.float32)
        row = (y.sum(2) * grid).sum(1) / area.clamp_min(1)
        col = (y.sum(1) * grid).sum(1) / area.clamp_min(1)
        weak, strong = b.x_ulb.float().cpu().flatten(1), b.x_ulb_strong.float().cpu().flatten(1)
        rows.append(torch.stack([row, col, area, weak.mean(1), (strong - weak).mean(1),
                                 strong.std(1) / weak.std(1).clamp_min(1e-6)], 1))
    return torch.cat(rows).numpy()


NAMES = ["label row", "label column", "label area", "weak mean", "brightness shift", "contrast ratio"]


@pytest.mark.parametrize("device", DEVICES)
def test_device_augmentation_matches_the_cpu_one_in_distribution(device):
    aug = Augmenter()
    on_device = _statistics(_pools(device), aug, seed=1, device=device)
    on_host = _statistics(_pools(), aug, seed=2, device="cpu")
    for i, name in enumerate(NAMES):
        p = ks_2samp(on_device[:, i], on_host[:, i]).pvalue
        assert p > 1e-3, f"{name}: the device and CPU augmentations differ (KS p = {p:.2g})"
    # negative control: a wider rotation and a smaller crop are told apart
    other = Augmenter(AugmentConfig(rotate_degrees=45.0, crop_scale_min=0.6))
    changed = _statistics(_pools(), other, seed=2, device="cpu")
    assert min(ks_2samp(on_device[:, i], changed[:, i]).pvalue for i in range(3)) < 1e-3
