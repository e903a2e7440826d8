"""3D training and testing for volumetric datasets (the Left Atrium track): patches in, volumes out.

A dataset with ``spatial_dims = 3`` trains on random 3D patches instead of 2D slices and is tested
by sliding-window inference; methods see the same ``Batch`` with 5D tensors (B, C, D, H, W) and
compute their losses on whatever spatial dims they get. Everything here follows the field's LA
code (UA-MT, Yu et al., MICCAI 2019: ``code/dataloaders/la_heart.py`` and ``code/test_util.py``
of yulequan/UA-MT; the same files are copied by DTC, MC-Net, SS-Net, BCP and AD-MT), written from
the description, in this package's (Z, Y, X) array order: the field's patch 112 x 112 x 80
(x, y, z) is (80, 112, 112) here, its strides 18 (x, y) and 4 (z) are (4, 18, 18).

* ``PatchPool``: whole volumes in memory; a draw picks a volume uniformly and a random crop of the
  patch size. As the field's ``RandomCrop``: a volume with any side <= the patch is first
  zero-padded by ``(patch - side) // 2 + 3`` on both sides of every such axis, then the corner is
  uniform in ``[0, side - patch)``.
* ``rot_flip``: the field's ``RandomRotFlip`` per sample: a rotation by k x 90 degrees in the
  axial (x, y) plane, k uniform in 0..3, then a flip along x or y (uniform). As the field's, it
  always flips: every patch comes out as one of the 4 mirror images of the (x, y) square, never
  the identity. The loop's ``Augmenter.weak`` uses it for 5D batches.
* ``SlidingWindow``: the field's ``test_single_case``: pad a volume smaller than the patch
  (centred, zeros), windows at ``min(stride * i, side - patch)`` for
  ``i < ceil((side - patch) / stride) + 1`` along each axis, softmax probabilities summed and divided
  by the number of windows covering each voxel, argmax, the padding cropped off. Optionally the
  largest connected component of each foreground class is kept (``lcc``; 26-connectivity, as
  ``skimage.measure.label``'s default used by SS-Net/BCP's ``getLargestCC``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ssl_bench.sampling import to_device

#: the field's LA patch and test strides, (x, y, z) as the papers write them
FIELD_PATCH_XYZ = (112, 112, 80)
FIELD_STRIDE_XYZ = (18, 18, 4)
GEOMETRIC_3D = ("rot90", "flip")


def zyx(xyz) -> tuple[int, ...]:
    """The field's (x, y, z) order -> this package's (z, y, x) array order."""
    return tuple(int(v) for v in reversed(tuple(xyz)))


# -- training data ------------------------------------------------------------------------------
@dataclass
class VolumeSet:
    """Whole volumes of some cases (what a 3D dataset's ``load_slices`` returns) and the patch the
    loop crops from them, (z, y, x)."""

    images: list[np.ndarray]  # (Z, Y, X) float32 each
    labels: list[np.ndarray]  # (Z, Y, X) uint8 each
    patch: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.images)

    def concat(self, other: "VolumeSet") -> "VolumeSet":
        return VolumeSet(self.images + other.images, self.labels + other.labels, self.patch)

    def make_pool(self) -> "PatchPool":
        return PatchPool(self)


def pad_for_crop(image: np.ndarray, label: np.ndarray, patch) -> tuple[np.ndarray, np.ndarray]:
    """The field's ``RandomCrop`` padding: if any side <= the patch, pad every short axis by
    ``(patch - side) // 2 + 3`` zeros on both sides."""
    if all(s > p for s, p in zip(label.shape, patch)):
        return image, label
    pads = [(max((p - s) // 2 + 3, 0),) * 2 for s, p in zip(label.shape, patch)]
    return np.pad(image, pads), np.pad(label, pads)


class PatchPool:
    """Random 3D patches of whole volumes (same interface as ``sampling.SlicePool``)."""

    def __init__(self, volumes: VolumeSet):
        self.patch = tuple(volumes.patch)
        pairs = [pad_for_crop(np.asarray(i, np.float32), np.asarray(lab, np.uint8), self.patch)
                 for i, lab in zip(volumes.images, volumes.labels)]
        self.images = [torch.from_numpy(np.ascontiguousarray(i)) for i, _ in pairs]
        self.labels = [torch.from_numpy(np.ascontiguousarray(lab)) for _, lab in pairs]
        self.tensors = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return sum(i.numel() * 5 for i in self.images)

    def place(self, device, pinned: bool = False) -> "PatchPool":
        """Volumes stay in host memory (a crop is small); patches reach ``device`` per draw."""
        return self

    def sample(self, n: int, g: torch.Generator, device=None):
        """(x (n, 1, *patch) float32, y (n, *patch) int64, position (zeros), volume index)."""
        which = torch.randint(0, len(self), (n,), generator=g)
        xs, ys = [], []
        for v in which.tolist():
            img, lab = self.images[v], self.labels[v]
            corner = [int(torch.randint(0, s - p, (1,), generator=g)) for s, p in zip(lab.shape, self.patch)]
            region = tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
            xs.append(img[region])
            ys.append(lab[region])
        x = torch.stack(xs)[:, None] if xs else torch.zeros(0, 1, *self.patch)
        y = torch.stack(ys).long() if ys else torch.zeros(0, *self.patch, dtype=torch.long)
        out = (x, y, torch.zeros(n), which.long())
        if device is not None:
            out = tuple(to_device(t, device) for t in out)
        return out


def rot_flip(x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None,
             ops=GEOMETRIC_3D):
    """The field's ``RandomRotFlip`` on (B, C, Z, Y, X) (and labels (B, Z, Y, X)), per sample:
    rot90 by k in the (x, y) plane, then a flip along x or y; ``ops`` picks which of the two."""
    unknown = sorted(set(ops) - set(GEOMETRIC_3D))
    if unknown:
        raise ValueError(f"augmentation {', '.join(unknown)} is 2D only; a 3D run takes "
                         f"augment.weak from {', '.join(GEOMETRIC_3D)} (the field's RandomRotFlip)")
    gdev = generator.device if generator is not None else torch.device("cpu")
    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], (y[i] if y is not None else None)
        if "rot90" in ops:
            k = int(torch.randint(0, 4, (1,), generator=generator, device=gdev))
            if k % 2 and xi.shape[-1] != xi.shape[-2]:
                raise ValueError(f"rot90 needs a patch square in (x, y), got {tuple(xi.shape[-3:])} (z, y, x); "
                                 "use a square patch or augment.weak=flip")
            xi = torch.rot90(xi, k, dims=(-1, -2))
            yi = torch.rot90(yi, k, dims=(-1, -2)) if yi is not None else None
        if "flip" in ops:
            axis = -1 - int(torch.randint(0, 2, (1,), generator=generator, device=gdev))
            xi = torch.flip(xi, dims=(axis,))
            yi = torch.flip(yi, dims=(axis,)) if yi is not None else None
        xs.append(xi)
        ys.append(yi)
    if not xs:
        return x, y
    return torch.stack(xs), (torch.stack(ys) if y is not None else None)


# -- testing ------------------------------------------------------------------------------------
def window_starts(side: int, patch: int, stride: int) -> list[int]:
    """The field's window corners along one axis (``side >= patch``)."""
    n = math.ceil((side - patch) / stride) + 1
    return [min(stride * i, side - patch) for i in range(n)]


def largest_component(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep, for each foreground class, only its largest 26-connected component."""
    out = pred.copy()
    structure = np.ones((3,) * pred.ndim, bool)
    for c in range(1, num_classes):
        comp, n = ndimage.label(pred == c, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            out[(comp > 0) & (comp != 1 + int(np.argmax(sizes)))] = 0
    return out


@dataclass
class SlidingWindow:
    """Sliding-window inference of a (Z, Y, X) volume (module docstring); ``patch`` and ``stride``
    in (z, y, x)."""

    patch: tuple[int, int, int]
    stride: tuple[int, int, int]
    lcc: bool = False
    batch_size: int = 4

    def __post_init__(self):
        if any(s < 1 for s in self.stride) or any(p < 1 for p in self.patch):
            raise ValueError(f"sliding window: patch {self.patch} and stride {self.stride} must be positive")

    @torch.no_grad()
    def probabilities(self, predictor, image: np.ndarray, device) -> np.ndarray:
        """(C, Z, Y, X) averaged softmax over the windows (padding cropped off)."""
        image = np.asarray(image, np.float32)
        pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(image.shape, self.patch)]
        padded = np.pad(image, pads) if any(sum(p) for p in pads) else image
        starts = [window_starts(s, p, st) for s, p, st in zip(padded.shape, self.patch, self.stride)]
        corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
        vol = to_device(torch.from_numpy(np.ascontiguousarray(padded)), device)
        score = None
        count = torch.zeros(padded.shape, device=vol.device)
        for i in range(0, len(corners), self.batch_size):
            chunk = corners[i:i + self.batch_size]
            regions = [tuple(slice(c, c + p) for c, p in zip(corner, self.patch)) for corner in chunk]
            x = torch.stack([vol[r] for r in regions])[:, None]
            probs = predictor(x).float().softmax(1)
            if score is None:
                score = torch.zeros((probs.shape[1], *padded.shape), device=vol.device)
            for r, p in zip(regions, probs):
                score[(slice(None), *r)] += p
                count[r] += 1
        score = score / count
        crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, image.shape))
        return score[(slice(None), *crop)].cpu().numpy()

    def __call__(self, predictor, image: np.ndarray, device) -> np.ndarray:
        is_module = isinstance(predictor, nn.Module)
        was_training = predictor.training if is_module else False
        if is_module:
            predictor.eval()
        try:
            probs = self.probabilities(predictor, image, device)
        finally:
            if is_module:
                predictor.train(was_training)
        pred = probs.argmax(0).astype(np.uint8)
        return largest_component(pred, probs.shape[0]) if self.lcc else pred


# -- which methods run in 3D --------------------------------------------------------------------
#: built-in methods whose losses are written for any spatial rank; each passes the method contract
#: on 3D patches with the V-Net (tests/test_la.py)
RUNS_IN_3D = ("unet-l", "unet-f", "mt", "uamt", "em", "ict", "cps", "dct", "bcp", "mcnet", "abd", "ad-mt", "unimatch",
              "ssnet", "action")
#: built-in methods that cannot run in 3D yet, and why
NOT_IN_3D = {
    "cct": "its auxiliary decoders perturb and resize 2D feature maps (dropout2d, 2D interpolation)",
    "dan": "its discriminator is a stack of 2D convolutions",
    "urpc": "its multi-scale heads are 2D convolutions",
    "gcl": "its contrastive stages partition and crop 2D slices of a volume",
    "scs": "its SimCLR views and pixel contrast are built for 2D slices",
}


def check_method_3d(method: str) -> None:
    """A built-in method not written for 3D is refused on a 3D dataset, with the reason."""
    if method in NOT_IN_3D:
        raise ValueError(f"{method} cannot run on a 3D dataset: {NOT_IN_3D[method]}. "
                         f"Methods that run in 3D: {', '.join(RUNS_IN_3D)}")


# -- wiring a run -------------------------------------------------------------------------------
def check_vnet_patch(patch_zyx, what: str = "patch") -> None:
    """V-Net halves every side four times: refuse a patch (z, y, x) with a side not divisible by 16."""
    if len(patch_zyx) != 3 or any(int(p) < 16 or int(p) % 16 for p in patch_zyx):
        raise ValueError(f"{what} {list(reversed(tuple(patch_zyx)))} (x, y, z): V-Net needs three sides, "
                         "each divisible by 16 (e.g. 64,64,32)")


def inference_window(dataset, train_cfg) -> SlidingWindow:
    """The sliding window a 3D run of ``dataset`` is tested with: the run's patch and strides (the
    dataset's defaults where the config leaves them empty), its ``lcc`` switch and window batch.
    The engine's test and ``ssl_bench.predict`` (the qualitative figure) both build it here."""
    patch = zyx(train_cfg.patch_size or dataset.default_patch_size)
    stride = zyx(train_cfg.sw_stride or dataset.default_stride)
    if len(patch) != 3 or len(stride) != 3:
        raise ValueError(f"patch_size and sw_stride take three numbers (x, y, z), e.g. patch_size=112,112,80; "
                         f"got {train_cfg.patch_size or dataset.default_patch_size} and "
                         f"{train_cfg.sw_stride or dataset.default_stride}")
    if "vnet" in train_cfg.backbone:
        check_vnet_patch(patch, "patch_size")
    return SlidingWindow(patch, stride, lcc=train_cfg.lcc, batch_size=max(1, train_cfg.eval_batch_size // 4))


def configure(dataset, train_cfg) -> tuple[int, int, int]:
    """Set up a 3D dataset for one run: its training patch and its test-time inference (stored on
    the dataset as ``patch`` and ``inference``, from ``inference_window``). Returns the patch (z, y, x):
    the run's ``image_size``."""
    window = inference_window(dataset, train_cfg)
    dataset.patch = window.patch
    dataset.inference = window
    return window.patch


def is_volumetric(dataset) -> bool:
    return getattr(dataset, "spatial_dims", 2) == 3
