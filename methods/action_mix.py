"""CutMix / ClassMix of unlabeled images and their pseudo-labels, as ACTION's released stage iii
applies them (its ``generate_unsup_data``, taken from ReCo: Liu, Zhi, Johns & Davison,
"Bootstrapping Semantic Segmentation with Regional Contrast", ICLR 2022; CutMix: Yun et al.,
ICCV 2019; ClassMix: Olsson et al., WACV 2021).

Image i of the batch keeps its pixels where its mask is 1 and takes those of image i + 1
(cyclically) where the mask is 0. The same masks mix the teacher's probabilities, so every mixed
pixel keeps the pseudo-label and confidence of the image it came from.

* CutMix: one box of half the image area per image, its width uniform in (W/2, W), its height
  area / width (rounded), placed uniformly; the box comes from the partner image. On 3D patches
  (Z, Y, X), as the release's ``generate_cutout_mask_3d`` (``code/augment_3d.py``): that box in
  the axial (Y, X) plane, through a band of a quarter of the slices (the release: 20 of its
  patch's 80, hard-coded; here ``max(1, round(Z / 4))``), the band's start uniform.
* ClassMix: the pixels of image i whose pseudo-label is one of a random half (rounded down) of
  the classes present in image i stay; the rest comes from the partner (any rank: the release's
  3D ``generate_class_mask`` is the 2D one).

The release then perturbs the mixed student images (its ``augment.py`` ``augmentation``), which
``release_perturbation`` reproduces on single-channel slices (config ``strong_view=released``).
Its 3D counterpart (``augment_3d.py`` ``batch_transform``: a +-2 % colour jitter and a PIL blur
applied slice by slice, along mismatched axes) is not ported: ``release_perturbation`` refuses a
5D batch, and ACTION refuses ``strong_view=released`` on a 3D backbone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_bench.sampling import to_device

MIXES = ("none", "cutmix", "classmix")
STRONG_VIEWS = ("harness", "released")


def cutmix_mask(height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(H, W) float mask: 1 everywhere but a zero box of area H W / 2 (the pasted region)."""
    area = height * width / 2
    w = int(torch.randint(width // 2 + 1, width, (1,), generator=generator))
    h = min(height, round(area / w))
    top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
    mask = torch.ones(height, width)
    mask[top:top + h, left:left + w] = 0
    return mask


def cutmix_mask_3d(depth: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(Z, Y, X) float mask: 1 everywhere but a zero cuboid, ``cutmix_mask``'s box in the (Y, X)
    plane (the same draws, first) through ``max(1, round(Z / 4))`` consecutive slices."""
    plane = cutmix_mask(height, width, generator)
    band = min(depth, max(1, round(depth / 4)))
    first = int(torch.randint(0, depth - band + 1, (1,), generator=generator))
    mask = torch.ones(depth, height, width)
    mask[first:first + band] = plane
    return mask


def classmix_mask(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(H, W) float mask: 1 on the pixels of a random half of the classes present in ``labels``."""
    present = torch.unique(labels.cpu())
    keep = present[torch.randperm(len(present), generator=generator)[:len(present) // 2]]
    return torch.isin(labels.cpu(), keep).float()


def classmix_masks(pseudo: torch.Tensor, n_classes: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``classmix_mask`` of every image, the same draws and masks, on ``pseudo``'s device: which
    classes each image holds is read back once for the batch (the one sync, unavoidable: how many
    classes the generator permutes depends on it); the masks are built on the device."""
    b = pseudo.shape[0]
    present = torch.zeros(b, n_classes, dtype=torch.bool, device=pseudo.device)
    present.scatter_(1, pseudo.reshape(b, -1).long(), True)
    keep = torch.zeros(b, n_classes, dtype=torch.bool)
    for i, row in enumerate(present.cpu()):
        classes = torch.arange(n_classes)[row]
        keep[i, classes[torch.randperm(len(classes), generator=generator)[:len(classes) // 2]]] = True
    keep = to_device(keep, pseudo.device)
    return keep.gather(1, pseudo.reshape(b, -1).long()).reshape(pseudo.shape).float()


def mix_masks(kind: str, pseudo: torch.Tensor, generator: torch.Generator | None = None,
              n_classes: int | None = None) -> torch.Tensor:
    """(B, *spatial) masks of one mixing ``kind`` for a batch with pseudo-labels ``pseudo``
    (B, H, W) or (B, Z, Y, X) (``n_classes``: how many classes a pseudo-label can take, for
    ClassMix; reading the largest label instead costs a sync)."""
    if kind == "cutmix":  # drawn on the host, sent from pinned memory
        if pseudo.dim() not in (3, 4):
            raise ValueError(f"cutmix takes 2D or 3D pseudo-labels (B, H, W) / (B, Z, Y, X); got {tuple(pseudo.shape)}")
        box = cutmix_mask if pseudo.dim() == 3 else cutmix_mask_3d
        masks = [box(*pseudo.shape[1:], generator) for _ in range(len(pseudo))]
        return to_device(torch.stack(masks), pseudo.device)
    if kind == "classmix":
        return classmix_masks(pseudo, n_classes or int(pseudo.max()) + 1, generator)
    raise ValueError(f"unknown mix {kind!r}; choose one of {', '.join(MIXES)}")


def mix_with_next(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x[i] where masks[i] = 1, x[(i + 1) % B] elsewhere; x is (B, C, *spatial), masks (B, *spatial)."""
    m = masks[:, None].to(x.dtype)
    return x * m + x.roll(-1, dims=0) * (1 - m)


def _draw(shape, generator, device, low=0.0, high=1.0):
    dd = generator.device if generator is not None else torch.device("cpu")
    return to_device(torch.rand(*shape, generator=generator, device=dd) * (high - low) + low, device)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with one ``sigma`` per image (a 9-tap kernel covers
    3 sigma up to 1.15 px; reflect padding, so a constant image stays constant)."""
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, 2r+1)
    b, c, h, w = x.shape
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    kc = k.repeat_interleave(c, 0)
    y = F.conv2d(y, kc[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kc[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def release_perturbation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ACTION's released stage-iii student perturbation (charlesyou999648/ACTION ``code/augment.py``
    ``augmentation`` after ``generate_unsup_data``), per image: with p 0.5 colour jitter, with p 0.5
    a Gaussian blur of sigma uniform in [0.15, 1.15]. The release's ``ColorJitter((0.75, 1.25),
    (0.75, 1.25), (0.75, 1.25), (-0.25, 0.25))`` acts on 3-channel images; on a single-channel MR
    slice saturation is a no-op and hue is undefined, so brightness (x * b) and contrast
    ((x - mean) * c + mean, mean over the image) with b, c uniform in [0.75, 1.25] remain, in that
    order. Its AdvMorph (p 0.5) is left out: its module is missing from the release."""
    if x.dim() != 4:
        raise ValueError(f"the release's stage-iii perturbation is ported for 2D slices (B, 1, H, W) only; got "
                         f"{tuple(x.shape)} (its 3D form, augment_3d.py batch_transform, is not ported)")
    if x.shape[0] == 0:
        return x
    n, dev = x.shape[0], x.device
    shape = (n,) + (1,) * (x.dim() - 1)
    jitter = _draw((n,), generator, dev) < 0.5
    b = _draw((n,), generator, dev, 0.75, 1.25)
    c = _draw((n,), generator, dev, 0.75, 1.25)
    blur = _draw((n,), generator, dev) < 0.5
    sigma = _draw((n,), generator, dev, 0.15, 1.15)
    out = x * b.view(shape)
    mean = out.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    out = (out - mean) * c.view(shape) + mean
    x = torch.where(jitter.view(shape), out, x)
    return torch.where(blur.view(shape), gaussian_blur(x, sigma), x)
