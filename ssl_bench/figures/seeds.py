"""Every run's test mean Dice as a dot, per method (one panel per labeled setting), with the
mean over runs as a bar: the spread over seeds (and split seeds) is visible, not summarised
away. Dots are spread sideways by a fixed offset per run so that equal values stay visible; the
marker tells the split seed (which patients were labeled) where runs have several.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
import pandas as pd

from ssl_bench.table.main import method_checkpoints
from ssl_bench.table.runs import REPORTED, setting_order

from .common import FigureResult, legend_below, method_colors, methods_in, namer, save, shown_runs

MARKERS = ["o", "^", "s", "D", "v", "P", "X"]


def seeds(runs: pd.DataFrame, out_dir: Path, checkpoint: str = REPORTED, name: str = "seeds") -> FigureResult:
    runs = shown_runs(runs)
    label_of = namer(runs)
    per_method = method_checkpoints(runs, checkpoint)
    methods = methods_in(runs)
    colors = method_colors(methods)
    settings = sorted(runs["setting"].unique(), key=setting_order)
    splits = sorted(runs["split_seed"].unique(), key=int)
    markers = dict(zip(splits, MARKERS * len(splits)))
    fig, axes = plt.subplots(1, len(settings), figsize=(max(4.8, 0.9 * len(methods) + 2) * len(settings), 4.6),
                             squeeze=False, sharey=True)
    for ax, setting in zip(axes[0], settings):
        for x, m in enumerate(methods):
            here = runs[(runs["method"] == m) & (runs["setting"] == setting)]
            col = f"test/{per_method[m]}/dice/mean"
            here = here[here[col].notna()] if col in here else here.iloc[0:0]
            if not len(here):
                continue
            values = 100.0 * here[col].astype(float).to_numpy()
            offsets = np.linspace(-0.18, 0.18, values.size) if values.size > 1 else np.zeros(1)
            for k, split in enumerate(here["split_seed"]):
                ax.scatter(x + offsets[k], values[k], s=30, color=colors[m], edgecolor="black", lw=0.4,
                           zorder=3, marker=markers[split], label=label_of(m))
            ax.hlines(values.mean(), x - 0.3, x + 0.3, color=colors[m], lw=2.2, zorder=2)
        ax.set_xticks(range(len(methods)), [label_of(m) for m in methods], rotation=30, ha="right")
        ax.set_title(setting)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test DSC [%] per run (bar: mean)")
    handles = {}
    for ax in axes[0]:
        for h in ax.collections:
            handles.setdefault(h.get_label(), h)
    labels = [label_of(m) for m in methods if label_of(m) in handles]
    shown = [handles[k] for k in labels]
    if len(splits) > 1:  # one grey marker per split seed
        shown += [Line2D([], [], ls="", marker=markers[k], color="grey", label=f"split seed {k}") for k in splits]
    bottom = legend_below(fig, shown, [h.get_label() for h in shown])
    fig.suptitle("Per-run test Dice: the spread over seeds")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return save(fig, out_dir, name, "seeds", labels)
