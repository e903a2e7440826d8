"""Feature-level perturbations shared by CCT and URPC.

They follow Ouali et al., "Semi-Supervised Semantic Segmentation with Cross-Consistency
Training", CVPR 2020, Sec. 3.2: feature-based (F-Noise, F-Drop), prediction-based (guided
masking of objects or context, guided cutout, intermediate VAT) and random (DropOut).
Every function takes one feature map (B, C, h, w), or a list of them for the multi-level
ones, and returns a perturbed copy; nothing here has parameters.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ssl_bench.sampling import to_device


def feature_noise(x: torch.Tensor, uniform_range: float = 0.3) -> torch.Tensor:
    """F-Noise: x + x * N with N ~ U(-r, r) of shape (C, h, w), shared by the batch."""
    noise = (torch.rand(x.shape[1:], device=x.device, dtype=x.dtype) * 2 - 1) * uniform_range
    return x + x * noise.unsqueeze(0)


def feature_drop(x: torch.Tensor, low: float = 0.6, high: float = 0.9) -> torch.Tensor:
    """F-Drop: zero the most active region of each sample.

    The attention map is the channel mean; positions whose attention reaches gamma times the
    sample's maximum are dropped, gamma ~ U(low, high) drawn per sample.
    """
    attention = x.mean(1, keepdim=True)
    peak = attention.flatten(1).max(1).values.view(-1, 1, 1, 1)
    gamma = low + (high - low) * torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
    return x * (attention < gamma * peak).to(x.dtype)


def resize_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, 1, H, W) 0/1 mask resized (nearest) to the spatial size of ``like``."""
    if mask.shape[-2:] != like.shape[-2:]:
        mask = F.interpolate(mask, size=like.shape[-2:], mode="nearest")
    return mask.to(like.dtype)


def object_mask(logits: torch.Tensor) -> torch.Tensor:
    """M_obj: 1 where the prediction is a foreground class (class 0 is background), (B, 1, H, W)."""
    return (logits.argmax(1, keepdim=True) > 0).float()


def guided_cutout_masks(logits: torch.Tensor, n: int, erase: float = 0.4, min_pixels: int = 50,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` G-Cutout masks (n, B, 1, H, W) of one prediction: 0 on a random box covering
    ``erase`` of each predicted object's bounding box, a box drawn per mask.

    Objects are the connected components of the predicted foreground; components smaller than
    ``min_pixels`` are left alone (the reference code skips contours under 50 points). They are
    found once for the ``n`` masks: one read of the prediction (scipy labels it on the host, so
    this sync stays), and the masks reach the device from pinned memory. The boxes are drawn in
    the order of ``n`` calls of ``guided_cutout_mask`` (mask by mask, then image by image and
    object by object), so the masks are those calls' masks.
    """
    fg = object_mask(logits)[:, 0].cpu().numpy().astype(np.uint8)
    objects = []  # (image, top, left, height, width, erased height, erased width)
    for b in range(fg.shape[0]):
        labels, _ = ndimage.label(fg[b])
        for idx, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None or int((labels[box] == idx).sum()) < min_pixels:
                continue
            (r0, r1), (c0, c1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
            eh, ew = int((r1 - r0) * erase), int((c1 - c0) * erase)
            if eh and ew:
                objects.append((b, r0, c0, r1 - r0, c1 - c0, eh, ew))
    keep = np.ones((n, *fg.shape), dtype=np.float32)
    for k in range(n):
        for b, r0, c0, h, w, eh, ew in objects:
            dr = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
            dc = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
            keep[k, b, r0 + dr: r0 + dr + eh, c0 + dc: c0 + dc + ew] = 0.0
    return to_device(torch.from_numpy(keep)[:, :, None], logits.device)


def guided_cutout_mask(logits: torch.Tensor, erase: float = 0.4, min_pixels: int = 50,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One G-Cutout mask (B, 1, H, W): ``guided_cutout_masks`` with ``n = 1``."""
    return guided_cutout_masks(logits, 1, erase, min_pixels, generator)[0]


def l2_normalise(d: torch.Tensor, add: float = 0.0) -> torch.Tensor:
    """Each sample scaled to unit L2 norm (an all-zero sample stays zero); ``add`` is added to the
    norm first (SS-Net's release divides by norm + 1e-8)."""
    norm = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
    return d / (norm + add).clamp_min(1e-30)


def vat_perturbation(decode: Callable[[list[torch.Tensor]], torch.Tensor], feats: list[torch.Tensor],
                     xi: float = 0.1, eps: float = 2.0, iterations: int = 1) -> list[torch.Tensor]:
    """I-VAT: the adversarial direction of ``decode`` around ``feats`` (Miyato et al., TPAMI 2018).

    One power iteration per ``iterations`` on KL(p(z) || p(z + xi d)); the result is scaled to
    norm ``eps`` per sample and level. Computed in float32 without autocast, where a small xi
    survives that half precision would round away. ``xi`` must move the prediction measurably:
    when z + xi d rounds to z the gradient is exactly zero and so is the perturbation (this
    happens at xi = 1e-6 on the U-Net's features). Only the direction is differentiated
    (``torch.autograd.grad`` on d), so no parameter gradient is left behind.
    """
    clean = [f.detach().float() for f in feats]
    with torch.autocast(clean[0].device.type, enabled=False):
        with torch.no_grad():
            target = decode(clean).float().softmax(1)
        ds = [l2_normalise(torch.rand_like(f) - 0.5) for f in clean]
        for _ in range(iterations):
            ds = [d.requires_grad_() for d in ds]
            logp = decode([f + xi * d for f, d in zip(clean, ds)]).float().log_softmax(1)
            kl = F.kl_div(logp, target, reduction="batchmean")
            # a level the decoder ignores (smp's raw-input "feature") gets no gradient
            grads = torch.autograd.grad(kl, ds, allow_unused=True)
            ds = [l2_normalise(g.detach()) if g is not None else torch.zeros_like(d)
                  for g, d in zip(grads, ds)]
    return [(eps * d).to(f.dtype) for d, f in zip(ds, feats)]
