"""Named, configurable augmentation pipelines on batches of 2D slices (B, C, H, W).

* ``weak``: the geometry, chosen by ``mode`` (config key ``augment.mode``):

  - ``harness`` (the default): the ops of ``weak`` (random 90-degree rotation, flips, a small
    free rotation and a random crop/zoom) composed into one affine warp per sample, image
    bilinear, labels nearest;
  - ``ssl4mis``: SSL4MIS's ``RandomGenerator`` as its ``code/dataloaders/dataset.py`` had it from
    2021 to 2025 (@08c8c8b; BCP's loader is the same): with p 0.5 ``random_rot_flip`` (rot90 by
    k uniform in 0..3, then a flip along one random axis: always a reflection), else with p 0.5
    ``random_rotate`` (an integer angle from ``np.random.randint(-20, 20)``, i.e. -20..19
    degrees, ``order=0``), else nothing; image *and* label nearest; no crop or zoom;
  - ``none``: no geometry at all (ACTION's release comments its rot/flip lines out).
* ``strong``: the weak geometry plus photometric changes (contrast and brightness),
  as in the ACTION paper's Table 4 (student strong, teacher weak by default).

``Augmenter.pair`` returns a weak and a strong view that share the same geometry, so that
pixel-level consistency between them needs no inverse warp.

The warps and intensity changes are batched tensor ops on the device of the input. The random
numbers come from ``generator`` on its own device (the run's CPU generator in the loop, so that a
seed gives the same augmentations on a CPU and a GPU) and reach the input's device through
``ssl_bench.sampling.to_device``: from pinned memory without a host synchronisation on CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ssl_bench.sampling import to_device

WEAK_OPS = ("rot90", "flip", "rotate", "crop")
STRONG_OPS = ("contrast", "brightness", "noise")
MODES = ("harness", "ssl4mis", "none")


@dataclass
class AugmentConfig:
    mode: Literal["harness", "ssl4mis", "none"] = "harness"  # the geometry: harness (the ops of `weak`) | ssl4mis | none (see module doc)
    weak: list[str] = field(default_factory=lambda: ["rot90", "flip", "rotate", "crop"])
    strong: list[str] = field(default_factory=lambda: ["contrast", "brightness"])
    rotate_degrees: float = 20.0
    crop_scale_min: float = 0.8  # crop side as a fraction of the image before resizing back
    contrast: float = 0.3  # factor drawn from [1 - contrast, 1 + contrast]
    brightness: float = 0.1  # shift drawn from [-brightness, brightness] x image std
    noise_std: float = 0.05


def _draw_device(generator: torch.Generator | None) -> torch.device:
    """Random numbers are drawn where their generator lives (the CPU for the global default)."""
    return generator.device if generator is not None else torch.device("cpu")


def _draw(fn, shape: tuple, generator: torch.Generator | None, device) -> torch.Tensor:
    """``fn(shape)`` (``torch.rand``/``torch.randn``) from ``generator``, moved to ``device``."""
    return to_device(fn(*shape, generator=generator, device=_draw_device(generator)), device)


class Augmenter:
    def __init__(self, cfg: AugmentConfig | None = None):
        self.cfg = cfg or AugmentConfig()
        if self.cfg.mode not in MODES:
            raise ValueError(f"augment.mode={self.cfg.mode!r}; choose one of {', '.join(MODES)}")
        for op in self.cfg.weak:
            if op not in WEAK_OPS:
                raise ValueError(f"unknown weak augmentation {op!r}; choose from {', '.join(WEAK_OPS)}")
        for op in self.cfg.strong:
            if op not in STRONG_OPS:
                raise ValueError(f"unknown strong augmentation {op!r}; choose from {', '.join(STRONG_OPS)}")

    # -- geometry ---------------------------------------------------------------------------
    def random_affine(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2, 3) affine matrices for F.affine_grid."""
        ops = set(self.cfg.weak)
        g = generator

        def rand(*shape):
            return _draw(torch.rand, shape, g, device)

        angle = torch.zeros(n, device=device)
        if "rot90" in ops:
            quarter = to_device(torch.randint(0, 4, (n,), generator=g, device=_draw_device(g)), device)
            angle = angle + quarter.float() * math.pi / 2
        if "rotate" in ops:
            on = (rand(n) < 0.5).float()
            angle = angle + on * (rand(n) * 2 - 1) * math.radians(self.cfg.rotate_degrees)
        sx = torch.ones(n, device=device)
        sy = torch.ones(n, device=device)
        if "flip" in ops:
            sx = torch.where(rand(n) < 0.5, -sx, sx)
            sy = torch.where(rand(n) < 0.5, -sy, sy)
        scale = torch.ones(n, device=device)
        tx = torch.zeros(n, device=device)
        ty = torch.zeros(n, device=device)
        if "crop" in ops:
            lo = self.cfg.crop_scale_min
            scale = lo + (1 - lo) * rand(n)
            tx = (rand(n) * 2 - 1) * (1 - scale)
            ty = (rand(n) * 2 - 1) * (1 - scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0] = cos * scale * sx
        theta[:, 0, 1] = -sin * scale * sy
        theta[:, 1, 0] = sin * scale * sx
        theta[:, 1, 1] = cos * scale * sy
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        return theta

    def ssl4mis_affine(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2, 3) matrices of SSL4MIS's ``RandomGenerator`` branches (module doc): the rot/flip
        branch as exact integer matrices (a permutation of the pixels of a square slice under
        nearest sampling), the rotation branch by an integer angle in -20..19 degrees."""
        g = generator
        dd = _draw_device(g)
        first = to_device(torch.rand(n, generator=g, device=dd), device) < 0.5
        second = to_device(torch.rand(n, generator=g, device=dd), device) < 0.5
        k = to_device(torch.randint(0, 4, (n,), generator=g, device=dd), device)
        axis = to_device(torch.randint(0, 2, (n,), generator=g, device=dd), device)
        degrees = to_device(torch.randint(-20, 20, (n,), generator=g, device=dd), device).float()
        cos_k = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device)[k]
        sin_k = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device)[k]
        rot90 = torch.stack([torch.stack([cos_k, -sin_k], -1), torch.stack([sin_k, cos_k], -1)], -2)
        flip = torch.diag_embed(torch.where(axis[:, None] == torch.arange(2, device=device), -1.0, 1.0))
        a = torch.deg2rad(degrees)
        rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)
        eye = torch.eye(2, device=device).expand(n, 2, 2)
        lin = torch.where(first[:, None, None], rot90 @ flip, torch.where(second[:, None, None], rot, eye))
        return torch.cat([lin, torch.zeros(n, 2, 1, device=device)], -1)

    @staticmethod
    def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

    def weak(self, x: torch.Tensor, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None):
        """Weakly augmented ``x`` (and ``y`` with the same warp). Returns (x, y)."""
        mode = self.cfg.mode
        if mode == "none" or (mode == "harness" and not self.cfg.weak) or x.shape[0] == 0:
            return x, y
        if x.dim() == 5:  # 3D patches: the field's rot90 + flip (ssl_bench.volumetric.rot_flip)
            from ssl_bench.volumetric import rot_flip

            return rot_flip(x, y, generator, self.cfg.weak)
        if mode == "ssl4mis":
            theta = self.ssl4mis_affine(x.shape[0], x.device, generator)
            xw = self.warp(x, theta, mode="nearest")
        else:
            theta = self.random_affine(x.shape[0], x.device, generator)
            xw = self.warp(x, theta)
        yw = None
        if y is not None:
            yw = self.warp(y[:, None].float(), theta, mode="nearest")[:, 0].round().long()
        return xw, yw

    # -- intensity --------------------------------------------------------------------------
    def photometric(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.shape[0] == 0:
            return x
        n = x.shape[0]
        shape = (n,) + (1,) * (x.dim() - 1)
        dev = x.device
        g = generator
        out = x
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        std = x.std(dim=tuple(range(1, x.dim())), keepdim=True).clamp_min(1e-6)
        if "contrast" in self.cfg.strong:
            c = 1 + (_draw(torch.rand, (n,), g, dev) * 2 - 1) * self.cfg.contrast
            out = (out - mean) * c.view(shape) + mean
        if "brightness" in self.cfg.strong:
            b = (_draw(torch.rand, (n,), g, dev) * 2 - 1) * self.cfg.brightness
            out = out + b.view(shape) * std
        if "noise" in self.cfg.strong:
            noise = _draw(torch.randn, tuple(x.shape), g, dev) * self.cfg.noise_std
            out = out + noise * std
        return out

    def strong(self, x: torch.Tensor, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None):
        xw, yw = self.weak(x, y, generator)
        return self.photometric(xw, generator), yw

    def pair(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(weak view, strong view) with the same geometry."""
        xw, _ = self.weak(x, None, generator)
        return xw, self.photometric(xw, generator)
