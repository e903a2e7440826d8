"""Validation Dice against iteration, one line per method (mean over its runs, a band of ± one
sample std where it has two or more), one panel per labeled setting.

Read from each run's ``log.jsonl`` (``val/dice/mean``, logged at the run's global step, so a
multi-stage method's curve starts where its final stage does); a step logged twice (a resumed
run) counts once, the last line winning.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ssl_bench.table.cases import run_dirs
from ssl_bench.table.runs import setting_order
from ssl_bench.tracking import read_log

from .common import FigureResult, legend_below, method_colors, methods_in, namer, save, shown_runs

METRIC = "val/dice/mean"


def validation_curve(run_dir: Path | None) -> pd.Series:
    """Validation mean Dice (%) by step of one run (empty if it logged none)."""
    points = {}
    for entry in read_log(run_dir / "log.jsonl") if run_dir else []:
        value = entry.get("metrics", {}).get(METRIC)
        if value is not None:
            points[int(entry["step"])] = 100.0 * float(value)
    return pd.Series(points, dtype=float).sort_index()


def curves(runs: pd.DataFrame, out_dir: Path, results_root: Path | None = None,
           name: str = "curves") -> FigureResult:
    runs = shown_runs(runs)
    label_of = namer(runs)
    dirs = run_dirs(runs, results_root)
    settings = sorted(runs["setting"].unique(), key=setting_order)
    fig, axes = plt.subplots(1, len(settings), figsize=(6.4 * len(settings), 4.4), squeeze=False, sharey=True)
    labels, notes = [], []
    colors = method_colors(methods_in(runs))
    for ax, setting in zip(axes[0], settings):
        here = runs[runs["setting"] == setting]
        for m in methods_in(here):
            series = [validation_curve(dirs[r]) for r in here.loc[here["method"] == m, "run_id"]]
            series = [s for s in series if len(s)]
            if not series:
                notes.append(f"{label_of(m)}, {setting}: no {METRIC} in log.jsonl")
                continue
            table = pd.concat(series, axis=1)  # steps x runs
            mean, std = table.mean(axis=1), table.std(axis=1)
            color = colors[m]
            ax.plot(mean.index, mean.values, color=color, lw=1.8, label=label_of(m))
            if table.shape[1] > 1:
                ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=color, alpha=0.2, lw=0)
            if label_of(m) not in labels:
                labels.append(label_of(m))
        ax.set_title(setting)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation DSC [%]")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    bottom = legend_below(fig, [handles[k] for k in labels], labels)
    fig.suptitle("Validation Dice during training (mean ± std over runs)")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return save(fig, out_dir, name, "curves", labels, notes)
