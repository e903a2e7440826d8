"""Where the training slices live and how the loop draws a batch from them.

Two placements of a ``SlicePool`` (``--set sampling=...``), which give the same batches:

* ``device`` (default): the pool's slices are torch tensors on the training device (in pinned
  host memory when they would take more than ``DEVICE_SHARE`` of its free memory); a batch is
  gathered there by index and augmented there (``ssl_bench.augment``: batched warps and
  intensity ops), so nothing but a few random numbers crosses to the GPU per step;
* ``host``: numpy gather and augmentation on the CPU, then a copy of every tensor to the
  device (the loop before issue 11, kept as the reference path).

Every random number (which slices, which augmentation) is drawn from the run's CPU generator in
the same order on both paths and every device: one seed gives one data stream, on a laptop and on
a GPU. The draws are small; ``to_device`` sends them from pinned memory without waiting for the
GPU (a copy from pageable memory to a GPU synchronises with its stream).
"""
from __future__ import annotations

import numpy as np
import torch

#: at most this share of the device's free memory holds the slice pools; more goes to pinned memory
DEVICE_SHARE = 0.25


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; a CPU tensor reaches a GPU from pinned memory, without a host sync."""
    device = torch.device(device)
    if t.device == device or (device.type == t.device.type and device.index is None):
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class SlicePool:
    """Slices of some cases at training size, sampled uniformly with a seeded generator."""

    def __init__(self, slice_set):
        if isinstance(slice_set, tuple):
            images, labels, case_index = slice_set[:3]
            position = None
        else:
            images, labels = slice_set.images, slice_set.labels
            case_index = slice_set.case_index
            position = getattr(slice_set, "position", None)
        self.images = images
        self.labels = labels
        self.case_index = np.asarray(case_index)
        if position is None:  # relative z of each slice in its volume
            position = np.zeros(len(self.case_index), np.float32)
            for c in np.unique(self.case_index):
                idx = np.nonzero(self.case_index == c)[0]
                position[idx] = np.linspace(0, 1, len(idx)) if len(idx) > 1 else 0.0
        self.position = np.asarray(position, np.float32)
        self.tensors: tuple[torch.Tensor, ...] | None = None  # set by place(): the device path

    def __len__(self):
        return len(self.case_index)

    @property
    def nbytes(self) -> int:
        """Bytes the placed pool takes (float32 images, uint8 labels)."""
        return len(self) * int(np.prod(self.images.shape[1:])) * (4 + 1)

    def place(self, device, pinned: bool = False) -> "SlicePool":
        """Hold the slices as tensors on ``device`` (or in pinned host memory): the device path."""
        device = torch.device(device)
        tensors = (torch.from_numpy(np.ascontiguousarray(self.images, np.float32)),
                   torch.from_numpy(np.ascontiguousarray(self.labels, np.uint8)),  # 1 byte per voxel
                   torch.from_numpy(self.position),
                   torch.from_numpy(self.case_index.astype(np.int64)))
        if device.type != "cpu":
            tensors = tuple(t.pin_memory() if pinned else t.to(device) for t in tensors)
        self.tensors = tensors
        return self

    def sample(self, n: int, g: torch.Generator, device=None):
        """(x (n, 1, H, W) float32, y (n, H, W) int64, position, case index) of ``n`` slices drawn
        with ``g``; on ``device`` for a placed pool, on the CPU otherwise."""
        idx = torch.randint(0, len(self), (n,), generator=g).sort().values  # sorted: contiguous reads
        if self.tensors is None:  # host path
            i = idx.numpy()
            x = torch.from_numpy(np.asarray(self.images[i], dtype=np.float32))[:, None]
            y = torch.from_numpy(np.asarray(self.labels[i]).astype(np.int64))
            return x, y, torch.from_numpy(self.position[i]), torch.from_numpy(self.case_index[i].astype(np.int64))
        images, labels, position, case = self.tensors
        at = idx if images.device.type == "cpu" else to_device(idx, images.device)
        picked = [t.index_select(0, at) for t in (images, labels, position, case)]
        if device is not None:
            picked = [to_device(t, device) for t in picked]
        x, y, pos, c = picked
        return x[:, None], y.long(), pos, c


def make_pool(data):
    """The pool of a dataset's training data: a ``SlicePool`` of 2D slices, or what the data makes
    of itself (3D volumes: ``ssl_bench.volumetric.PatchPool``)."""
    return data.make_pool() if hasattr(data, "make_pool") else SlicePool(data)


def concat_pools(a, b) -> SlicePool:
    """Concatenate two slice sets (UNet-F trains on labeled + unlabeled cases with labels)."""
    if hasattr(a, "concat"):  # 3D volumes
        return a.concat(b).make_pool()
    pa, pb = SlicePool(a), SlicePool(b)
    off = int(pa.case_index.max()) + 1 if len(pa) else 0
    merged = SlicePool((np.concatenate([np.asarray(pa.images), np.asarray(pb.images)]),
                        np.concatenate([np.asarray(pa.labels), np.asarray(pb.labels)]),
                        np.concatenate([pa.case_index, pb.case_index + off])))
    merged.position = np.concatenate([pa.position, pb.position])
    return merged


def place_pools(pools: list[SlicePool | None], device) -> str:
    """Put the pools on ``device`` (the ``device`` path); returns where they went: ``device`` or
    ``pinned`` (a GPU whose free memory they would fill beyond ``DEVICE_SHARE``)."""
    device = torch.device(device)
    present = [p for p in pools if p is not None]
    pinned = False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        pinned = sum(p.nbytes for p in present) > DEVICE_SHARE * free
    for p in present:
        p.place(device, pinned=pinned)
    return "pinned" if pinned else "device"


def make_batch(lb: SlicePool, ulb: SlicePool | None, cfg, aug, g: torch.Generator, device,
               need_unlabeled: bool):
    """One training batch (``methods.base.Batch``) on ``device``: ``cfg.labeled_bs`` labeled slices
    (weak augmentation, labels warped alike) and ``cfg.unlabeled_bs`` unlabeled ones (a weak and a
    strong view of the same geometry, and the raw slice), drawn with ``g`` in this order.

    The labeled draws come first, so a caller that wants every method to see one data stream
    (supervised ones included) draws the unlabeled part too and ignores it."""
    from ssl_bench.methods.base import Batch

    x_lb_raw, y_lb_raw, pos_lb, case_lb = lb.sample(cfg.labeled_bs, g, device)
    x_lb, y_lb = aug.weak(x_lb_raw, y_lb_raw, g)
    if need_unlabeled and ulb is not None and len(ulb):
        x_u_raw, _, pos_u, case_u = ulb.sample(cfg.unlabeled_bs, g, device)  # their labels are never used
        case_u = case_u + 100_000  # distinct ids from labeled volumes
    else:
        x_u_raw = torch.zeros(0, 1, *x_lb_raw.shape[2:], device=x_lb_raw.device)
        pos_u = torch.zeros(0, device=x_lb_raw.device)
        case_u = torch.zeros(0, dtype=torch.long, device=x_lb_raw.device)
    x_w, x_s = aug.pair(x_u_raw, g)
    t = lambda v: v.to(device, non_blocking=True)  # noqa: E731  (no-op on the device path)
    return Batch(x_lb=t(x_lb), y_lb=t(y_lb), x_ulb=t(x_w), x_ulb_strong=t(x_s), x_ulb_raw=t(x_u_raw),
                 x_lb_raw=t(x_lb_raw), y_lb_raw=t(y_lb_raw), pos_lb=t(pos_lb), pos_ulb=t(pos_u),
                 case_lb=t(case_lb), case_ulb=t(case_u))
