"""Cost per run (``ssl_bench.cost``) per method: what a sweep of each method takes."""
from __future__ import annotations

import math

import pandas as pd

from .model import Block, Table, labeled_only_batch, size_text
from .runs import display_name, method_order


def cost_tables(runs: pd.DataFrame) -> list[Table]:
    """Per dataset, what the runs of each method cost (``ssl_bench.cost``), one row per method,
    device, image size and batch: runs, seconds per iteration, train and device hours per run
    (mean), device-hours in total, and the highest GPU memory (allocated) and host RSS peaks."""
    if "cost/device_hours" not in runs:
        return []
    tables = []
    for (dataset, ptag), d in sorted(runs.groupby(["dataset", "protocol_tag"]), key=lambda kv: kv[0]):
        measured = d[d["cost/device_hours"].notna()]
        if not len(measured):
            continue
        table = Table(title=f"{dataset}, protocol {ptag}: cost per run", row_header="Method",
                      columns=["device", "image / batch", "runs", "s / iteration", "train h / run",
                               "device-h / run", "device-h total", "peak GPU MiB", "peak RSS MiB"])
        block = Block(None)
        keys = ["method", "device", "image", "batch", "cost/labeled_bs", "cost/unlabeled_bs"]
        measured = measured.assign(device=measured["device"].fillna("") if "device" in measured else "",
                                   image=[_image_text(row) for _, row in measured.iterrows()],
                                   batch=[_batch_text(row) for _, row in measured.iterrows()])
        groups = measured.groupby(keys, sort=False, dropna=False)
        for (method, device, image, batch, lb, ulb), g in sorted(groups, key=lambda kv: (method_order(display_name(kv[0][0], dataset)), kv[0][1:])):
            size = g["cost/image_size"].iloc[0] if "cost/image_size" in g else float("nan")
            hours = g["cost/device_hours"].astype(float)
            gpu = g["cost/peak_gpu_allocated_mb"].dropna() if "cost/peak_gpu_allocated_mb" in g else pd.Series(dtype=float)
            rec = {"dataset": dataset, "protocol": ptag, "method": method, "display_name": display_name(method, dataset), "device": device,
                   "image_size": "" if pd.isna(size) else int(size), "image": image, "batch": batch, "labeled_bs": int(lb), "unlabeled_bs": int(ulb), "runs": len(g),
                   "seconds_per_iteration": float(g["cost/seconds_per_iteration"].mean()),
                   "train_hours_per_run": float(g["cost/train_seconds"].mean()) / 3600,
                   "device_hours_per_run": float(hours.mean()), "device_hours_total": float(hours.sum()),
                   "peak_gpu_allocated_mib": float(gpu.max()) if len(gpu) else float("nan"),
                   "peak_host_rss_mib": float(g["cost/peak_host_rss_mb"].max())}
            texts = [device or "?", f"{image} / {batch}", str(len(g)),
                     f"{rec['seconds_per_iteration']:.3g}", f"{rec['train_hours_per_run']:.3g}",
                     f"{rec['device_hours_per_run']:.3g}", f"{rec['device_hours_total']:.3g}",
                     "—" if math.isnan(rec["peak_gpu_allocated_mib"]) else f"{rec['peak_gpu_allocated_mib']:.0f}",
                     f"{rec['peak_host_rss_mib']:.0f}"]
            block.rows.append((display_name(method, dataset), [[(t, False)] for t in texts]))
            table.records.append(rec)
        table.blocks.append(block)
        unmeasured = len(d) - len(measured)
        if unmeasured:
            table.notes.append(f"{unmeasured} run(s) of {dataset}, protocol {ptag} have no cost record (run before ssl-bench "
                               "recorded costs) and are not counted.")
        table.footnote = ["Wall time on one device (a CPU slot on a CPU-only machine); train time includes "
                          "validation and checkpoints, device-hours add the final test. Peaks are the highest "
                          "of the runs (GPU: torch.cuda.max_memory_allocated; host: ru_maxrss)."]
        tables.append(table)
    return tables


def _image_text(row) -> str:
    """What one training image of a run is: "N px" (2D: the cost record's ``image_size``), or the 3D
    patch "x x y x z voxels" (a 3D run's cost records its patch as a list, which MLflow metrics cannot
    hold, so it comes from the run's config as the as-run line reads it)."""
    size = row.get("cost/image_size")
    if size is not None and not pd.isna(size) and float(size) > 0:
        return f"{int(size)} px"
    text = size_text(row)
    return f"{text} voxels" if " x " in text else (f"{text} px" if text not in ("?", "0") else "?")


def _batch_text(row) -> str:
    """The batch one step of a run drew, as the as-run line counts it (the cost record keeps the
    configured labeled + unlabeled pair)."""
    lab, unl = int(row["cost/labeled_bs"]), int(row["cost/unlabeled_bs"])
    return labeled_only_batch(row, lab, unl) or f"{lab}+{unl}"
