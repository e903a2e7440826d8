"""CutMix / ClassMix of unlabeled images and their pseudo-labels, as ACTION's released stage iii
applies them (its ``generate_unsup_data``, taken from ReCo: Liu, Zhi, Johns & Davison,
"Bootstrapping Semantic Segmentation with Regional Contrast", ICLR 2022; CutMix: Yun et al.,
ICCV 2019; ClassMix: Olsson et al., WACV 2021).

Image i of the batch keeps its pixels where its mask is 1 and takes those of image i + 1
(cyclically) where the mask is 0. The same masks mix the teacher's probabilities, so every mixed
pixel keeps the pseudo-label and confidence of the image it came from.

* CutMix: one box of half the image area per image, its width uniform in (W/2, W), its height
  area / width (rounded), placed uniformly; the box comes from the partner image.
* ClassMix: the pixels of image i whose pseudo-label is one of a random half (rounded down) of
  the classes present in image i stay; the rest comes from the partner.
"""
from __future__ import annotations

import torch

MIXES = ("none", "cutmix", "classmix")


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


def classmix_mask(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(H, W) float mask: 1 on the pixels of a random half of the classes present in ``labels``."""
    present = torch.unique(labels.cpu())
    keep = present[torch.randperm(len(present), generator=generator)[:len(present) // 2]]
    return torch.isin(labels.cpu(), keep).float()


def mix_masks(kind: str, pseudo: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, H, W) masks of one mixing ``kind`` for a batch with pseudo-labels ``pseudo`` (B, H, W)."""
    if kind == "cutmix":
        masks = [cutmix_mask(*pseudo.shape[-2:], generator) for _ in range(len(pseudo))]
    elif kind == "classmix":
        masks = [classmix_mask(p, generator) for p in pseudo]
    else:
        raise ValueError(f"unknown mix {kind!r}; choose one of {', '.join(MIXES)}")
    return torch.stack(masks).to(pseudo.device)


def mix_with_next(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x[i] where masks[i] = 1, x[(i + 1) % B] elsewhere; x is (B, C, H, W), masks (B, H, W)."""
    m = masks[:, None].to(x.dtype)
    return x * m + x.roll(-1, dims=0) * (1 - m)
