"""A plain Mean Teacher step after the field's published recipe, timed beside ssl-bench's MT step.

The recipe is the one of SSL4MIS's ``train_mean_teacher_2D.py`` (the benchmark code most
semi-supervised segmentation tables since 2021 were produced with). It is written here from a
description of what that script does, for this comparison only:

* data: a torch ``DataLoader`` over 2D slices stored at their native size (here 0.85 x the
  training width, like ACDC's 256 x 216). Each sample is augmented on the CPU inside the loader,
  with numpy and scipy: with probability 1/2 a random rot90 and a flip along a random axis, else
  with probability 1/2 a rotation by a random integer angle in [-20, 20) (nearest interpolation);
  then it is zoomed to the training size (cubic for the image, nearest for the label). A
  two-stream batch sampler puts ``labeled_bs`` labeled and ``unlabeled_bs`` unlabeled slices in
  each batch. The loader runs ``workers`` processes (SSL4MIS uses 4; on a CPU-only machine the
  default 0 keeps them from taking the cores the step itself needs) with pinned memory on CUDA.
* step: the batch is copied to the device; the student segments every slice; the EMA teacher
  segments the unlabeled ones plus Gaussian noise (sigma 0.1, clipped to +-0.2) under no_grad;
  loss = 0.5 (cross-entropy + Dice) on the labeled slices + w * the mean squared difference of
  the softmaxes on the unlabeled ones, w a sigmoid ramp-up; the Dice loss loops over classes in
  Python; SGD step; the teacher's EMA loops over the parameters; the poly learning rate is set.
* logging: ``.item()`` of the loss and of its CE and Dice parts every step, as that script logs
  them at each iteration; on a GPU each is a host synchronisation.

Both sides use ssl-bench's U-Net (the 16-32-64-128-256 configuration of SSL4MIS's UNet), the same
number of images per step and the same device, so the ratio measures the machinery around the
networks. ``run`` times both in alternating blocks in one process (``steps.interleaved_medians``)
and writes ``<device>_reference_mt.json`` and ``.md``.
"""
from __future__ import annotations

import functools
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

GOAL = 1.5  # ssl-bench's MT step at least this many times faster than the plain one


class SliceDataset(torch.utils.data.Dataset):
    """Native-size slices, augmented and zoomed per sample on the CPU (see the module doc)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int):
        self.images, self.labels, self.size = images, labels, size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, label = self.images[i], self.labels[i]
        if random.random() > 0.5:
            k = np.random.randint(0, 4)
            axis = np.random.randint(0, 2)
            image = np.flip(np.rot90(image, k), axis=axis).copy()
            label = np.flip(np.rot90(label, k), axis=axis).copy()
        elif random.random() > 0.5:
            angle = np.random.randint(-20, 20)
            image = ndimage.rotate(image, angle, order=0, reshape=False)
            label = ndimage.rotate(label, angle, order=0, reshape=False)
        h, w = image.shape
        if (h, w) != (self.size, self.size):
            image = ndimage.zoom(image, (self.size / h, self.size / w), order=3)
            label = ndimage.zoom(label, (self.size / h, self.size / w), order=0)
        return {"image": torch.from_numpy(image.astype(np.float32))[None],
                "label": torch.from_numpy(label.astype(np.int64))}


class TwoStreamSampler(torch.utils.data.Sampler):
    """Endless batches of ``n_lb`` labeled indices (``0..n_labeled-1``) then ``n_ulb`` unlabeled."""

    def __init__(self, n_labeled: int, n_total: int, n_lb: int, n_ulb: int, seed: int = 0):
        self.n_labeled, self.n_total, self.n_lb, self.n_ulb = n_labeled, n_total, n_lb, n_ulb
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        while True:
            yield (list(self.rng.integers(0, self.n_labeled, self.n_lb))
                   + list(self.rng.integers(self.n_labeled, self.n_total, self.n_ulb)))

    def __len__(self):
        return 2**31


def _seed_worker(seed: int, worker_id: int) -> None:
    random.seed(seed + worker_id)
    np.random.seed(seed + worker_id)


def dice_loss_per_class(probs: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """1 - soft Dice, averaged over classes one by one (squared sums in the denominator)."""
    onehot = torch.cat([(target == c).unsqueeze(1) for c in range(n_classes)], 1).float()
    loss = 0.0
    for c in range(n_classes):
        p, t = probs[:, c], onehot[:, c]
        loss = loss + 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    return loss / n_classes


def sigmoid_rampup(current: float, length: float) -> float:
    if length == 0:
        return 1.0
    phase = 1.0 - np.clip(current, 0.0, length) / length
    return float(np.exp(-5.0 * phase * phase))


class ReferenceMeanTeacher:
    """The plain step (see the module doc) on synthetic slices; ``timed_step`` includes the wait
    for the loader's next batch."""

    def __init__(self, image_size: int, labeled_bs: int, unlabeled_bs: int, device, workers: int = 0,
                 seed: int = 0, n_classes: int = 4):
        from ssl_bench.bench import synthetic_slices
        from ssl_bench.ema import make_teacher
        from ssl_bench.nets import create_backbone

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.device, self.n_lb, self.n_classes = torch.device(device), labeled_bs, n_classes
        native_w = max(8, round(image_size * 0.85))
        images, labels, _ = synthetic_slices(64, image_size, n_classes, seed)
        images = np.stack([ndimage.zoom(im, (1, native_w / image_size), order=1) for im in images])
        labels = np.stack([ndimage.zoom(la, (1, native_w / image_size), order=0) for la in labels])
        loader = torch.utils.data.DataLoader(
            SliceDataset(images, labels, image_size),
            batch_sampler=TwoStreamSampler(32, 64, labeled_bs, unlabeled_bs, seed),
            num_workers=workers, pin_memory=self.device.type == "cuda",
            worker_init_fn=functools.partial(_seed_worker, seed))
        self.batches = iter(loader)
        self.model = create_backbone("unet", 1, n_classes).to(self.device).train()
        self.ema_model = make_teacher(self.model).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.iteration, self.max_iterations = 1000, 30000  # past the recipe's first 1000 steps
        self.log: list[tuple[float, float, float]] = []

    def step(self) -> None:
        batch = next(self.batches)
        volume, label = batch["image"].to(self.device), batch["label"].to(self.device)
        unlabeled = volume[self.n_lb:]
        ema_inputs = unlabeled + torch.clamp(torch.randn_like(unlabeled) * 0.1, -0.2, 0.2)
        outputs = self.model(volume)
        outputs_soft = torch.softmax(outputs, dim=1)
        with torch.no_grad():
            ema_soft = torch.softmax(self.ema_model(ema_inputs), dim=1)
        loss_ce = F.cross_entropy(outputs[:self.n_lb], label[:self.n_lb])
        loss_dice = dice_loss_per_class(outputs_soft[:self.n_lb], label[:self.n_lb], self.n_classes)
        weight = 0.1 * sigmoid_rampup(self.iteration // 150, 200.0)
        consistency = torch.mean((outputs_soft[self.n_lb:] - ema_soft) ** 2)
        loss = 0.5 * (loss_ce + loss_dice) + weight * consistency
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        alpha = min(1 - 1 / (self.iteration + 1), 0.99)
        for ema_p, p in zip(self.ema_model.parameters(), self.model.parameters()):
            ema_p.data.mul_(alpha).add_(p.data, alpha=1 - alpha)
        lr = 0.01 * (1.0 - self.iteration / self.max_iterations) ** 0.9
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.iteration += 1
        self.log.append((loss.item(), loss_ce.item(), loss_dice.item()))  # logged every iteration

    def timed_step(self) -> float:
        from ssl_bench.bench import synchronize

        t0 = time.perf_counter()
        self.step()
        synchronize(self.device)
        return time.perf_counter() - t0


def _markdown(rep: dict) -> str:
    s = rep["setting"]
    verdict = "met" if rep["speedup"] >= GOAL else "**missed**"
    return "\n".join([
        f"# ssl-bench's Mean Teacher step vs the plain reference step ({rep['device']})", "",
        f"{s['image_size']} x {s['image_size']}, {s['labeled_bs']} + {s['unlabeled_bs']} slices, "
        f"amp={s['amp']}, channels_last={s['channels_last']}, compile={s['compile']}; reference loader "
        f"workers: {rep['workers']}. Median of {rep['steps']} steps each after {rep['warmup']} warm-up steps, "
        f"timed in alternating blocks in one process (ssl_bench/bench/reference_mt.py: what the reference does).", "",
        "| step | median s/step |", "|---|---:|",
        f"| plain reference (SSL4MIS recipe) | {rep['reference_median_s']:.4f} |",
        f"| ssl-bench MT (`ssl-bench run --method mt`) | {rep['ssl_bench_median_s']:.4f} |", "",
        f"ssl-bench's step is **{rep['speedup']:.2f} x** faster (goal >= {GOAL} x: {verdict}).", "",
        f"Measured {rep['measured_at']} on {rep['machine']}, {rep['torch_threads']} torch threads, "
        f"load average {rep['loadavg_before'][0]:.2f} -> {rep['loadavg_after'][0]:.2f} (1 min).", ""])


def run(image_size: int = 64, labeled_bs: int = 6, unlabeled_bs: int = 6, device: str = "cpu",
        steps: int = 10, warmup: int = 2, workers: int = 0, amp: bool = False, channels_last: bool = False,
        compile: bool = False, out_dir: Path | str | None = Path("results/bench"), suffix: str = "") -> dict:
    """Time both steps; write ``<device>_reference_mt<suffix>.json`` and ``.md`` (``out_dir`` None:
    return the report only, as the card does)."""
    import os

    from ssl_bench.bench import check_device, device_tag, machine
    from ssl_bench.bench.steps import Setting, StepBench, interleaved_medians
    from ssl_bench.datasets.base import atomic_write_text

    check_device(device)
    if workers < 0:
        raise ValueError(f"bench reference-mt: workers={workers}; use 0 (load in this process) or more")
    s = Setting(image_size, labeled_bs, unlabeled_bs, amp, channels_last, compile, device)
    before = machine()
    ours = StepBench("mt", s)
    reference = ReferenceMeanTeacher(image_size, labeled_bs, unlabeled_bs, device, workers)
    ours_s, ref_s = interleaved_medians(ours.timed_step, reference.timed_step, steps, warmup)
    losses = [x[0] for x in reference.log]
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"the reference step diverged ({losses}): the comparison would be meaningless")
    rep = {"benchmark": "reference_mt", "device": device_tag(device), "setting": vars(s), "workers": workers,
           "steps": steps, "warmup": warmup, "reference_median_s": ref_s, "ssl_bench_median_s": ours_s,
           "speedup": ref_s / ours_s, "goal": GOAL, **before, "loadavg_before": before["loadavg"],
           "loadavg_after": list(os.getloadavg())}
    if out_dir is None:
        return rep
    out = Path(out_dir)
    tag = device_tag(device)
    atomic_write_text(out / f"{tag}_reference_mt{suffix}.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(out / f"{tag}_reference_mt{suffix}.md", _markdown(rep))
    return rep
