"""Test-time evaluation: slice-by-slice inference on 3D cases, metrics, reports, MLflow names.

Inference follows the 2D protocol of the paper's tables (SSL4MIS, ACTION IPMI 2023): every axial
slice is resized to the training size, segmented, and the prediction is resized back to the
original slice grid, so metrics are computed on the label's own grid (with its spacing for the mm
metrics). ``resample`` (the train key ``eval_resample``) chooses how: ``bilinear`` (the default)
resizes the image bilinearly and the class probabilities bilinearly before the argmax;
``nearest`` is the upstream test scripts' form (SSL4MIS ``code/test_2D_fully.py`` ``test_single_volume``,
also ACTION's ``test_2D.py`` and BCP's ``test_ACDC.py``): ``scipy.ndimage.zoom(order=0)`` of the
image to the training size and of the argmax back. Metrics and the empty-mask policy: ``ssl_bench.metrics``.

Speed: slices go through the network in batches on the device and the label volume comes back in
one transfer; while the device segments the next case, the metrics of the previous ones are
computed by ``workers`` processes (spawned, so safe next to CUDA and threads; one case or one
worker computes them in this process). The records are the same, in the same order, either way.
"""
from __future__ import annotations

import atexit
import csv
import io
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.datasets.base import atomic_write_text
from ssl_bench.metrics import METRICS, POLICY, aggregate, case_metrics
from ssl_bench.sampling import to_device


@dataclass
class EvalResult:
    """Per-case records (``case_metrics`` output plus ``case_id``) and their ``aggregate`` summary."""

    records: list[dict]
    summary: dict
    class_names: list[str] = field(default_factory=list)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W); identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


RESAMPLE = ("bilinear", "nearest")


def zoom_index(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """The source index of each of ``n_out`` outputs under ``scipy.ndimage.zoom(order=0)``
    (``grid_mode=False``): output i samples input coordinate i (n_in - 1) / (n_out - 1), rounded
    half up (spline order 0). One difference, on purpose: where round-off puts scipy's last
    coordinate a hair past n_in - 1 (e.g. 8 -> 26), its ``mode="constant"`` returns 0 for that
    row/column; here it is the edge pixel."""
    if n_out == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    coord = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))
    return torch.floor(coord + 0.5).long().clamp_(0, n_in - 1).to(device)


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of (B, [C,] H, W) as ``scipy.ndimage.zoom(order=0)`` does it
    (not ``F.interpolate(mode="nearest")``, which samples other pixels)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    iy = zoom_index(x.shape[-2], size[0], x.device)
    ix = zoom_index(x.shape[-1], size[1], x.device)
    return x.index_select(-2, iy).index_select(-1, ix)


@torch.no_grad()
def predict_volume(predictor: nn.Module | Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, image_size: int, device,
                   batch_size: int = 16, resample: str = "bilinear") -> np.ndarray:
    """Segment a (Z, Y, X) normalised volume slice by slice; returns (Z, Y, X) uint8 class indices.

    Each slice is resized to ``image_size`` x ``image_size`` and the network runs in eval mode
    (its previous mode is restored afterwards). ``resample="bilinear"``: bilinear image resize,
    softmax probabilities resized back to (Y, X) bilinearly, argmax there. ``"nearest"``: the
    upstream form, nearest (scipy ``zoom(order=0)``) image resize, argmax at the training size,
    the class map resized back with nearest.
    """
    if resample not in RESAMPLE:
        raise ValueError(f"eval_resample={resample!r}; choose one of {', '.join(RESAMPLE)}")
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"predict_volume needs a (Z, Y, X) volume, got shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    depth, height, width = image.shape
    # plain callables (test doubles, wrapped models) have no train/eval mode to switch
    is_module = isinstance(predictor, nn.Module)
    was_training = predictor.training if is_module else False
    if is_module:
        predictor.eval()
    try:
        volume = to_device(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), device)
        chunks = []  # class indices stay on the device until the whole volume is done
        for start in range(0, depth, batch_size):
            x = volume[start:start + batch_size, None]
            size_in = (image_size, image_size)
            logits = predictor(_resize(x, size_in) if resample == "bilinear" else _resize_nearest(x, size_in))
            if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the predictor must map (B, 1, H, W) to (B, C, H, W) logits; "
                                 f"got {tuple(logits.shape)} for input {tuple(x.shape)}")
            if logits.shape[1] > 256:
                raise ValueError(f"{logits.shape[1]} classes do not fit the uint8 label volume")
            if resample == "bilinear":
                labels = _resize(logits.float().softmax(dim=1), (height, width)).argmax(dim=1)
            else:
                labels = _resize_nearest(logits.argmax(dim=1), (height, width))
            chunks.append(labels.to(torch.uint8))
        if not chunks:
            return np.zeros((depth, height, width), dtype=np.uint8)
        return torch.cat(chunks).cpu().numpy()
    finally:
        if is_module:
            predictor.train(was_training)


def evaluate_cases(predictor: nn.Module, dataset, case_ids: Sequence[str], image_size: int, device,
                   progress: bool = True, batch_size: int = 16, workers: int = 1,
                   resample: str = "bilinear", empty_asd: str = "diagonal") -> EvalResult:
    """Predict and score every case of ``case_ids`` (``dataset.load_case(id)`` gives a ``Case``),
    ``batch_size`` slices per forward pass, ``resample`` as ``predict_volume``, ``empty_asd`` as
    ``metrics.case_metrics`` (recorded in the summary), metrics in ``workers`` processes (see the
    module doc)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class_names = list(dataset.class_names)
    pool = metrics_pool(workers) if workers > 1 and len(case_ids) > 1 else None
    pending = []  # futures (pool) or records (serial), in case order
    columns = (TextColumn("[bold]evaluating[/] {task.fields[case]}"), BarColumn(),
               MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("evaluate", total=len(case_ids), case="")
        for case_id in case_ids:
            bar.update(task, case=case_id)
            case = dataset.load_case(case_id)
            infer = getattr(dataset, "inference", None)  # 3D datasets: sliding window (ssl_bench.volumetric)
            pred = (infer(predictor, case.image, device) if infer is not None else
                    predict_volume(predictor, case.image, image_size, device, batch_size=batch_size,
                                   resample=resample))
            if pred.shape != case.label.shape:
                raise ValueError(f"case {case_id}: image {case.image.shape} and label {case.label.shape} "
                                 "differ in shape; fix the dataset's load_case")
            args = (pred, np.asarray(case.label), class_names, case.spacing, empty_asd)
            pending.append(pool.submit(case_metrics, *args) if pool is not None else case_metrics(*args))
            bar.advance(task)
    try:
        scored = [p.result() if pool is not None else p for p in pending]
    except BrokenProcessPool:
        _POOLS.pop(workers, None)  # a worker died (killed, out of memory): the next call starts afresh
        raise
    records = [{"case_id": case_id, **rec} for case_id, rec in zip(case_ids, scored)]
    summary = aggregate(records, class_names)
    summary["empty_asd"] = empty_asd
    return EvalResult(records=records, summary=summary, class_names=class_names)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def metrics_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes for ``case_metrics``, made once per process and
    reused (validation evaluates every ``val_every`` steps; spawning costs about a second)."""
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[workers]


@atexit.register
def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def _json_safe(value):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_eval(result: EvalResult, out_dir: Path | str, prefix: str) -> tuple[Path, Path]:
    """Write ``<prefix>_summary.json`` and ``<prefix>_per_case.csv`` atomically; returns both paths.

    The JSON holds ``policy`` (the empty-mask rules), ``per_case`` (records), ``classes`` and
    ``mean`` (the summary); NaN is written as ``null``. The CSV has one row per case and
    foreground class: case_id, class, rule, voxel counts and every metric (empty cell = NaN).
    """
    out_dir = Path(out_dir)
    summary = result.summary
    doc = {"policy": {**POLICY, "empty_asd": summary.get("empty_asd", "diagonal")}, "n_cases": summary["n_cases"], "per_case": result.records,
           "classes": summary["classes"], "mean": summary["mean"]}
    json_path = out_dir / f"{prefix}_summary.json"
    atomic_write_text(json_path, json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n")

    header = ["case_id", "class", "rule", "pred_voxels", "label_voxels", *METRICS]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for rec in result.records:
        for name, row in rec["classes"].items():
            cells = [rec.get("case_id", ""), name, row["rule"], row["pred_voxels"], row["label_voxels"]]
            cells += ["" if math.isnan(row[m]) else repr(float(row[m])) for m in METRICS]
            writer.writerow(cells)
    csv_path = out_dir / f"{prefix}_per_case.csv"
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def mlflow_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """Flatten a summary to MLflow names ``<prefix>/<metric>/<class>`` and ``<prefix>/n/<class>``.

    ``prefix`` is e.g. ``"test/best"``; class is a class name or ``mean``. Undefined (NaN) means
    are left out (MLflow stores no NaN reliably); ``n`` is always present, 0 when nothing was
    aggregated.
    """
    prefix = prefix.rstrip("/")
    out: dict[str, float] = {}
    groups = [*summary["classes"].items(), ("mean", summary["mean"])]
    for name, stats in groups:
        out[f"{prefix}/n/{name}"] = float(stats["n"])
        for metric in METRICS:
            value = float(stats[metric])
            if math.isfinite(value):
                out[f"{prefix}/{metric}/{name}"] = value
    return out


#: the headline metrics: (MLflow name, metric, scale); DSC in %, ASD in voxels, as the tables print
HEADLINE = (("DSC", "dice", 100.0), ("ASD", "asd_vox", 1.0))


def headline_metrics(flat: dict[str, float], checkpoint: str) -> dict[str, float]:
    """``DSC/<class|mean>`` and ``ASD/<class|mean>`` of the reported checkpoint, from the flat
    ``test/<checkpoint>/...`` metrics: the figures a reader compares first, under short names
    that sort before ``test/``, ``train/`` and ``val/`` in MLflow's column picker and compare view
    (``ssl-bench ui`` also makes them the columns of its runs-table view)."""
    out = {}
    for name, metric, scale in HEADLINE:
        prefix = f"test/{checkpoint}/{metric}/"
        out.update({f"{name}/{k[len(prefix):]}": v * scale for k, v in flat.items() if k.startswith(prefix)})
    return out
