"""What evaluation costs: scoring a test set, and ssl-bench's surface metrics against medpy.

* **surface metrics vs medpy** on a LiTS-size case (``volume`` = 100 x 512 x 512 by default,
  spacing 2.5 x 0.7 x 0.7 mm; a liver of about 1.4 M voxels and a few tumours, the prediction a
  dilated, shifted and holed copy). Both compute, for each class and each unit (voxels, mm), Dice,
  ASD, ASSD and HD95. medpy is used at its most economical: each directed surface-distance set is
  computed once per class and unit (``medpy.metric.binary.__surface_distances``, which its
  ``asd``/``assd``/``hd95`` call one to two times each) and the three numbers derived from them
  the way those functions do. The values are compared (largest absolute difference; the goal is
  identical values) and the times give the speed-up (the goal is >= 20 x). ssl-bench's time is
  the median of ``repeats`` runs; medpy's is one run (it takes a minute).
* **test set**: the time to predict and score ``cases`` synthetic cases (``case_shape``, ACDC's
  10 x 256 x 216 by default, three classes; the metric processes started before the timing, as
  they stay up during a run) with ``evaluate_cases``, metrics computed one case after another in this process
  (``workers=1``) and by ``workers`` processes while the device segments the next case. The
  predictor runs ssl-bench's U-Net on every slice (its cost) but takes its classes from the image
  intensities, so the predictions are close to the labels, as a trained network's are.

``run`` writes ``<device>_eval.json`` and ``.md``.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

GOAL = 20.0  # surface metrics at least this many times faster than medpy
LITS_SPACING = (2.5, 0.7, 0.7)


def lits_like_case(shape=(100, 512, 512), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label) uint8 volumes: background 0, liver 1, tumour 2 (see the module doc)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    r = (((z - 0.5 * shape[0]) / (0.35 * shape[0])) ** 2 + ((y - 0.45 * shape[1]) / (0.2 * shape[1])) ** 2
         + ((x - 0.35 * shape[2]) / (0.18 * shape[2])) ** 2)
    coarse = ndimage.gaussian_filter(rng.standard_normal((max(shape[0] // 4, 2), max(shape[1] // 16, 2),
                                                          max(shape[2] // 16, 2))), 1.0)
    warp = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1)
    label = np.zeros(shape, np.uint8)
    label[r + 0.6 * warp[:shape[0], :shape[1], :shape[2]] < 1] = 1
    liver = np.argwhere(label == 1)
    for _ in range(6):
        c = liver[rng.integers(len(liver))]
        radius = rng.uniform(0.01, 0.04) * shape[1]
        d = ((z - c[0]) * LITS_SPACING[0] / LITS_SPACING[1]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        label[(d < radius ** 2) & (label == 1)] = 2
    pred = label.copy()
    pred[ndimage.binary_dilation(label > 0, iterations=2) & (pred == 0)] = 1
    pred = np.roll(pred, max(1, shape[2] // 170), axis=2)
    holes = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2) > 0.35
    pred[holes & (pred == 1)] = 0
    return pred, label


def medpy_case_metrics(pred: np.ndarray, label: np.ndarray, n_classes: int, spacing) -> dict:
    """Every metric of ``ssl_bench.metrics.case_metrics`` (both-present classes) with medpy."""
    from medpy.metric import binary

    surface_distances = getattr(binary, "__surface_distances")  # module-level, not name-mangled
    out = {}
    for c in range(1, n_classes):
        p, lab = pred == c, label == c
        row = {"dice": binary.dc(p, lab)}
        for unit, sp in (("vox", None), ("mm", spacing)):
            a = surface_distances(p, lab, sp, 1)
            b = surface_distances(lab, p, sp, 1)
            both = np.hstack((a, b))
            row.update({f"asd_{unit}": a.mean(), f"assd_{unit}": both.mean(),
                        f"hd95_{unit}": np.percentile(both, 95)})
        out[c] = row
    return out


def surface_metrics_vs_medpy(shape=(100, 512, 512), repeats: int = 3) -> dict:
    from ssl_bench.metrics import case_metrics

    pred, label = lits_like_case(shape)
    names = ["background", "liver", "tumour"]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = case_metrics(pred, label, names, LITS_SPACING)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    theirs = medpy_case_metrics(pred, label, len(names), LITS_SPACING)
    medpy_s = time.perf_counter() - t0
    values, worst = {}, 0.0
    for c, name in enumerate(names[1:], start=1):
        row = ours["classes"][name]
        if row["rule"] != "both_present":
            raise ValueError(f"bench eval: volume {shape} is too small to hold a {name} in both masks")
        values[name] = {m: {"ssl_bench": row[m], "medpy": float(v)} for m, v in theirs[c].items()}
        worst = max([worst] + [abs(row[m] - float(v)) for m, v in theirs[c].items()])
    ours_s = statistics.median(times)
    return {"shape": list(shape), "spacing": list(LITS_SPACING),
            "voxels": {n: int((label == c).sum()) for c, n in enumerate(names) if c},
            "ssl_bench_s": ours_s, "ssl_bench_runs_s": times, "medpy_s": medpy_s, "speedup": medpy_s / ours_s,
            "max_abs_difference": worst, "identical": worst == 0.0, "values": values}


class IntensityPredictor(nn.Module):
    """U-Net forward pass (its cost), classes from the intensities (see the module doc)."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        from ssl_bench.nets import create_backbone

        self.net, self.n_classes = create_backbone("unet", 1, n_classes), n_classes

    def forward(self, x):
        logits = self.net(x)
        nearest = torch.cat([-50 * (x - c) ** 2 for c in range(self.n_classes)], 1)
        return nearest + 0 * logits


def synthetic_test_set(cases: int, shape: tuple[int, int, int], seed: int = 0):
    """A dataset-like object of ``cases`` noisy blob volumes (``load_case``, ``class_names``)."""
    from ssl_bench.datasets.base import Case

    class TestSet:
        class_names = ["background", "A", "B"]

        def __init__(self):
            rng = np.random.default_rng(seed)
            self.cases = {}
            for i in range(cases):
                field = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
                label = np.digitize(field, np.quantile(field, [0.7, 0.9])).astype(np.uint8)
                image = (label + rng.normal(0, 0.3, shape)).astype(np.float32)
                self.cases[f"case{i:02d}"] = Case(f"case{i:02d}", f"p{i:02d}", image, label, (10.0, 1.5, 1.5))

        def load_case(self, case_id):
            return self.cases[case_id]

    return TestSet()


def time_test_set(cases: int, shape, image_size: int, device, workers: int) -> dict:
    from ssl_bench.evaluate import evaluate_cases

    ds = synthetic_test_set(cases, shape)
    ids = sorted(ds.cases)
    net = IntensityPredictor().to(device)
    out = {}
    for n in sorted({1, workers}):
        evaluate_cases(net, ds, ids[:2], image_size, device, progress=False, workers=n)  # warm-up, pool started
        t0 = time.perf_counter()
        res = evaluate_cases(net, ds, ids, image_size, device, progress=False, workers=n)
        out[f"workers_{n}"] = {"seconds": time.perf_counter() - t0, "mean_dice": res.summary["mean"]["dice"]}
    return {"cases": cases, "shape": list(shape), "image_size": image_size, "workers": workers, **out}


def _markdown(rep: dict) -> str:
    s, t = rep["surface_metrics"], rep["test_set"]
    verdict = "met" if s["speedup"] >= GOAL and s["identical"] else "**missed**"
    lines = [f"# Evaluation cost ({rep['device']})", "",
             "Written by `ssl-bench bench eval` (ssl_bench/bench/eval.py: the volumes and how medpy is called).", "",
             f"## Surface metrics vs medpy: {' x '.join(map(str, s['shape']))} voxels, spacing "
             f"{' x '.join(map(str, s['spacing']))} mm, liver and tumour, voxel and mm units", "",
             "| | seconds |", "|---|---:|",
             f"| medpy (each surface-distance set once) | {s['medpy_s']:.2f} |",
             f"| ssl-bench `case_metrics` (median of {len(s['ssl_bench_runs_s'])}) | {s['ssl_bench_s']:.3f} |", "",
             f"**{s['speedup']:.1f} x** faster; largest absolute difference of any value: {s['max_abs_difference']:.3g} "
             f"({'identical' if s['identical'] else 'not identical'}). Goal >= {GOAL:g} x with identical values: {verdict}.", "",
             "| class | metric | ssl-bench | medpy |", "|---|---|---:|---:|"]
    for name, metrics in s["values"].items():
        for m, v in metrics.items():
            lines.append(f"| {name} | {m} | {v['ssl_bench']!r} | {v['medpy']!r} |")
    lines += ["", f"## Scoring a test set: {t['cases']} cases of {' x '.join(map(str, t['shape']))}, "
                  f"inference at {t['image_size']} px", "", "| metric workers | seconds | mean Dice |", "|---:|---:|---:|"]
    for k, v in t.items():
        if k.startswith("workers_"):
            lines.append(f"| {k.split('_')[1]} | {v['seconds']:.2f} | {v['mean_dice']:.4f} |")
    lines += ["", f"Measured {rep['measured_at']} on {rep['machine']}, {rep['torch_threads']} torch threads, "
                  f"load average {rep['loadavg_before'][0]:.2f} -> {rep['loadavg_after'][0]:.2f} (1 min).", ""]
    return "\n".join(lines)


def run(volume=(100, 512, 512), repeats: int = 3, cases: int = 8, case_shape=(10, 256, 216), image_size: int = 64,
        device: str = "cpu", workers: int = 0, out_dir: Path | str = Path("results/bench")) -> dict:
    from ssl_bench.bench import check_device, device_tag, machine
    from ssl_bench.datasets.base import atomic_write_text

    dev = check_device(device)
    if min(volume) < 8 or repeats < 1 or cases < 1:
        raise ValueError(f"bench eval: volume {volume} needs every side >= 8, repeats and cases >= 1")
    workers = workers or min(cases, os.cpu_count() or 1)
    before = machine()
    rep = {"benchmark": "eval", "device": device_tag(dev), **before,
           "surface_metrics": surface_metrics_vs_medpy(tuple(volume), repeats),
           "test_set": time_test_set(cases, tuple(case_shape), image_size, dev, workers),
           "loadavg_before": before["loadavg"], "loadavg_after": list(os.getloadavg())}
    out = Path(out_dir)
    atomic_write_text(out / f"{rep['device']}_eval.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(out / f"{rep['device']}_eval.md", _markdown(rep))
    return rep
