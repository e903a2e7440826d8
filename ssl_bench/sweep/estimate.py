"""Seconds per iteration of a job, from measured step times, never guessed.

Sources, in this order of preference (the first that measured the job's method on the sweep's
kind of device wins; only when none did, one measured on another kind is used and says so):

1. finished runs under the results root: the ``cost`` member of their ``metrics.json``
   (``ssl_bench.cost``: wall seconds per iteration, validation and checkpoints included), the
   median over runs of the same method, device, image size and batch;
2. ``results/bench/*.csv`` written by the step benchmark: columns ``device, method, stage,
   image_size, [patch,] labeled_bs, unlabeled_bs, amp, channels_last, compile, median_step_s, ...``; a
   method's stages are weighted by their share of its iterations (a row of stage ``all`` is
   taken as it is); rows with the job's ``amp`` and without channels_last / compile preferred;
3. ``results/bench/steps_*.json`` of ``ssl-bench bench steps``.

A CSV figure on the sweep's kind of device is multiplied by ``StepTimes.calibration``: how much
slower the finished runs under the results root went than the CSV says for their own methods
(the step benchmark leaves out validation, checkpoints, data and the machine's other load).

A measurement at another image size or batch is scaled by the pixels per batch
(image_size² x the images a step puts through the networks), and the estimate says so. The images
are ``registry.step_images``: labeled + unlabeled, but a supervised-only method (UNet-L) sees its
labeled ones only, or the whole batch labeled under ``supervised_whole_batch`` (the protocols'
UNet-L/F). The step benchmark's UNet-L row sees ``labeled_bs`` images; a ``field`` UNet-L run,
``labeled_bs + unlabeled_bs``: the estimate (and the calibration) count each as it ran.

3D runs (a volumetric dataset: the run's ``image_size`` is its (z, y, x) patch) are estimated from
3D measurements only (a CSV row with a ``patch``, x x y x z; a finished 3D run's cost), and 2D runs
from 2D ones only; across patch sizes the scale is the voxels per batch, patch volume x
(labeled_bs + unlabeled_bs). A CSV without the ``patch`` column holds 2D rows.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from ssl_bench.bench.steps import parse_patch
from ssl_bench.registry import step_images

CSV_COLUMNS = {"device", "method", "stage", "image_size", "labeled_bs", "unlabeled_bs", "median_step_s"}
WHOLE_METHOD_STAGES = {"all", "total", ""}


@dataclass
class Estimate:
    seconds_per_iteration: float
    source: str  # where the measurement came from, and how it was scaled


@dataclass
class Measured:
    """Seconds per iteration of a whole method (stages weighted) at one size and batch."""

    method: str
    device: str
    image_size: int
    labeled_bs: int  # the images a step put through the networks (``registry.step_images``)
    unlabeled_bs: int
    seconds: float
    patch: tuple[int, ...] | None = None  # 3D: the patch (x, y, z); None: 2D slices of image_size

    @property
    def pixels(self) -> int:
        """Pixels (2D) or voxels (3D) per batch."""
        return batch_pixels(self.image_size, self.patch, self.labeled_bs, self.unlabeled_bs)

    @property
    def config(self) -> str:
        return f"{size_text(self.image_size, self.patch, self.labeled_bs, self.unlabeled_bs)}, {self.device}"


def batch_pixels(image_size: int, patch, labeled_bs: int, unlabeled_bs: int) -> int:
    """Pixels of a 2D batch or voxels of a 3D one."""
    return (math.prod(patch) if patch else image_size ** 2) * (labeled_bs + unlabeled_bs)


def size_text(image_size: int, patch, labeled_bs: int, unlabeled_bs: int) -> str:
    """``24 px, 2+2 slices`` or ``patch 64x64x32, 2+2 patches`` (``4 labeled patches`` where no
    unlabeled image is seen)."""
    batch = f"{labeled_bs}+{unlabeled_bs}" if unlabeled_bs else f"{labeled_bs} labeled"
    if patch:
        return f"patch {'x'.join(map(str, patch))}, {batch} patches"
    return f"{image_size} px, {batch} slices"


def patch_of(size) -> tuple[int, ...] | None:
    """The patch (x, y, z) of a 3D run's size (its (z, y, x) patch, a list after JSON); None for a
    2D run's int side."""
    return tuple(int(v) for v in reversed(size)) if isinstance(size, (tuple, list)) else None


def run_patch(run) -> tuple[int, ...] | None:
    """A 3D run's patch (x, y, z) (its ``image_size`` is the (z, y, x) patch); None for a 2D run."""
    return patch_of(run.image_size)


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` for a recorded device name (``cpu``, ``cuda:0 (NVIDIA H200)``, ``NVIDIA H200``)."""
    return "cpu" if device.strip().lower().startswith("cpu") else "cuda"


def default_bench_dirs() -> list[Path]:
    """``results/bench`` of the working directory and of the ssl-bench checkout (where they exist)."""
    import ssl_bench

    dirs = [Path.cwd() / "results" / "bench", Path(ssl_bench.__file__).resolve().parents[1] / "results" / "bench"]
    out = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


class StepTimes:
    """The measurements of a results root and of benchmark folders, read once, on first use."""

    def __init__(self, results_root: Path, bench_dirs: Sequence[Path] = ()):
        self.results_root = Path(results_root)
        self.bench_dirs = [Path(d) for d in bench_dirs]
        self._fractions: dict[tuple, dict[str, float]] = {}
        self._calibrations: dict[tuple, tuple[float, list[str]] | None] = {}

    @cached_property
    def from_runs(self) -> list[tuple[str, Measured]]:
        from ssl_bench.run_index import find_run_dirs

        found: dict[tuple, list[float]] = {}
        for run_dir in find_run_dirs(self.results_root):
            try:
                metrics = json.loads((run_dir / "metrics.json").read_text())
                method = json.loads((run_dir / "tags.json").read_text())["method"]
                config = run_dir / "config.json"
                train = json.loads(config.read_text()).get("train", {}) if config.exists() else {}
                c = metrics["cost"]
                size = c["image_size"]  # a 3D run's is its patch, (z, y, x)
                patch = patch_of(size)
                seen = step_images(method, int(c["labeled_bs"]), int(c["unlabeled_bs"]),
                                   bool(train.get("supervised_whole_batch", False)))
                key = (method, c["device"], 0 if patch else int(size), *seen, patch)
                found.setdefault(key, []).append(float(c["seconds_per_iteration"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unfinished, or finished before costs were recorded
        return [(f"median of {len(v)} finished run(s) under {self.results_root}",
                 Measured(*key[:5], statistics.median(v), key[5])) for key, v in found.items()]

    @cached_property
    def csv_rows(self) -> list[tuple[Path, dict]]:
        rows = []
        for folder in self.bench_dirs:
            for path in sorted(folder.glob("*.csv")):
                with open(path, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    if not CSV_COLUMNS <= set(reader.fieldnames or ()):
                        continue  # another benchmark's table
                    rows += [(path, r) for r in reader]
        return rows

    @cached_property
    def from_steps_json(self) -> list[tuple[str, Measured]]:
        out = []
        for folder in self.bench_dirs:
            for path in sorted(folder.glob("steps_*.json")):
                try:
                    report = json.loads(path.read_text())
                    out += [(str(path), Measured(m["method"], report["device"], int(report["image_size"]),
                                                 *step_images(m["method"], int(report["labeled_bs"]),
                                                              int(report["unlabeled_bs"])),
                                                 float(m["seconds_per_step"]))) for m in report["methods"]]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return out

    def csv_groups(self, method: str, amp: bool) -> dict[tuple, dict[str, float]]:
        """The CSV rows of ``method`` by (file, device, image size, labeled, unlabeled, patch), each
        stage's median step seconds; rows with ``amp`` as given and without channels_last or
        compile preferred (they describe a plain run). Labeled and unlabeled are the images the
        benchmarked step saw (``registry.step_images``; the benchmark never fills UNet-L's batch)."""
        rows = [(p, r) for p, r in self.csv_rows if r["method"] == method]
        plain = [(p, r) for p, r in rows if _flag(r.get("amp")) == amp
                 and not _flag(r.get("channels_last")) and not _flag(r.get("compile"))]
        groups: dict[tuple, dict[str, float]] = {}
        for path, r in plain or rows:
            patch = parse_patch((r.get("patch") or "").strip())
            seen = step_images(method, int(float(r["labeled_bs"])), int(float(r["unlabeled_bs"])))
            key = (path, r["device"], 0 if patch else int(float(r["image_size"])), *seen, patch)
            groups.setdefault(key, {})[r["stage"].strip().lower()] = float(r["median_step_s"])
        return groups

    def from_csv(self, run) -> list[tuple[str, Measured]]:
        """The CSV rows of the run's method as whole-method measurements (stages weighted)."""
        method = run.spec.method
        out = []
        for (path, device, size, lb, ulb, patch), stages in self.csv_groups(method, bool(run.train_cfg.amp)).items():
            whole = next((stages[s] for s in WHOLE_METHOD_STAGES if s in stages), None)
            if whole is None:
                fractions = self.stage_fractions(run)
                if not set(fractions) <= set(stages):
                    continue  # a stage of the method was not measured
                whole = sum(f * stages[s] for s, f in fractions.items())
            out.append((str(path), Measured(method, device, size, lb, ulb, whole, patch)))
        return out

    def stage_fractions(self, run) -> dict[str, float]:
        """Each stage's share of the run's iterations (the method is built once to ask it)."""
        key = (run.spec.method, repr(run.method_cfg), run.train_cfg.total_iterations)
        if key not in self._fractions:
            import torch

            from ssl_bench.engine import stage_iterations
            from ssl_bench.methods.base import MethodContext

            ctx = MethodContext(num_classes=run.dataset.num_classes, image_size=run.image_size,
                                backbone=run.train_cfg.backbone,
                                total_iterations=run.train_cfg.total_iterations,
                                generator=torch.Generator().manual_seed(0))
            stages = run.method_cls(run.method_cfg, ctx).stages()
            its = stage_iterations(stages, run.train_cfg.total_iterations)
            self._fractions[key] = {s.name.lower(): n / sum(its) for s, n in zip(stages, its)}
        return self._fractions[key]

    def calibration(self, run, device: str) -> tuple[float, list[str]] | None:
        """How much slower the finished runs under the results root went than the step benchmark
        says: the median over their (method, batch) groups, on ``device``'s kind and the run's
        dimensionality, of measured seconds per iteration / the benchmarked step scaled to their
        batch. Their cost holds validation, checkpoints, data and the machine's other load, which
        the benchmark leaves out. Only methods the CSV measured in one stage take part (a
        multi-stage method's weights would need the method built); None where none finished.
        Worked out once per (device, dimensionality, amp): a sweep asks it for every job."""
        is_3d, amp = run_patch(run) is not None, bool(run.train_cfg.amp)
        key = (device, is_3d, amp)
        if key not in self._calibrations:
            self._calibrations[key] = self._calibration(device, is_3d, amp)
        return self._calibrations[key]

    def _calibration(self, device: str, is_3d: bool, amp: bool) -> tuple[float, list[str]] | None:
        ratios, methods = [], []
        for _, done in self.from_runs:
            if (done.patch is not None) != is_3d or device_kind(done.device) != device:
                continue
            bench = [Measured(done.method, dev, size, lb, ulb, *stages.values(), patch)
                     for (_, dev, size, lb, ulb, patch), stages in self.csv_groups(done.method, amp).items()
                     if len(stages) == 1 and device_kind(dev) == device and (patch is not None) == is_3d]
            if not bench:
                continue
            near = min(bench, key=lambda m: abs(m.pixels - done.pixels))
            ratios.append(done.seconds / (near.seconds * done.pixels / near.pixels))
            methods.append(done.method)
        if not ratios:
            return None
        return statistics.median(ratios), sorted(set(methods))

    def estimate(self, run, device: str) -> Estimate | None:
        """Seconds per iteration of a prepared run on ``device`` (``cpu`` or ``cuda``), from
        measurements of its dimensionality only (2D slices or 3D patches). A benchmark-based
        estimate on the sweep's kind of device is multiplied by ``calibration`` where it exists."""
        method, is_3d = run.spec.method, run_patch(run) is not None
        sources = (("runs", lambda: self.from_runs), ("csv", lambda: self.from_csv(run)),
                   ("steps", lambda: self.from_steps_json))
        for same_kind in (True, False):
            for name, fetch in sources:
                found = [(where, m) for where, m in fetch()
                         if m.method == method and (m.patch is not None) == is_3d
                         and (device_kind(m.device) == device) == same_kind]
                if not found:
                    continue
                est = _scaled(found, run, same_kind)
                cal = self.calibration(run, device) if name == "csv" and same_kind else None
                if cal is not None:
                    ratio, methods = cal
                    est = Estimate(est.seconds_per_iteration * ratio,
                                   f"{est.source}; x{ratio:.2f}: the finished runs under {self.results_root} "
                                   f"({', '.join(methods)}) took {ratio:.2f} x their benchmarked step (median; "
                                   "validation, checkpoints, data, machine load)")
                return est
        return None


def _scaled(found: list[tuple[str, Measured]], run, same_kind: bool) -> Estimate:
    """The measurement closest in pixels (voxels) per batch, scaled to the run's."""
    cfg, patch = run.train_cfg, run_patch(run)
    size = 0 if patch else run.image_size
    seen = step_images(run.spec.method, cfg.labeled_bs, cfg.unlabeled_bs, cfg.supervised_whole_batch)
    pixels = batch_pixels(size, patch, *seen)
    where, best = min(found, key=lambda wm: abs(wm[1].pixels - pixels))
    text = f"{where} ({best.config})"
    scale = pixels / best.pixels
    if scale != 1:
        text += f", scaled x{scale:.3g} to {size_text(size, patch, *seen)}"
    if not same_kind:
        text += f"; measured on {best.device}, not on the sweep's kind of device"
    return Estimate(best.seconds * scale, text)


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")
