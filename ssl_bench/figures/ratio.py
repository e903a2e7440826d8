"""Test Dice against the labeled setting, one line per method, error bars ± one sample std
over its runs (seeds, split seeds), the number of runs beside each point.

Values are the tables' ``test/<checkpoint>/dice/mean`` (each method at the checkpoint its
protocol reports, unless one is given).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ssl_bench.table.main import method_checkpoints
from ssl_bench.table.model import Stat
from ssl_bench.table.runs import REPORTED, column_values, setting_order

from .common import FigureResult, method_colors, methods_in, namer, save, shown_runs


def ratio(runs: pd.DataFrame, out_dir: Path, checkpoint: str = REPORTED, name: str = "ratio") -> FigureResult:
    runs = shown_runs(runs)
    label_of = namer(runs)
    per_method = method_checkpoints(runs, checkpoint)
    settings = sorted(runs["setting"].unique(), key=setting_order)
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    labels = []
    colors = method_colors(methods_in(runs))
    for k, m in enumerate(methods_in(runs)):
        xs, ys, errs, ns = [], [], [], []
        for x, s in enumerate(settings):
            here = runs[(runs["method"] == m) & (runs["setting"] == s)]
            stat = Stat.of(column_values(here, f"test/{per_method[m]}/dice/mean"), 100.0)
            if stat is not None:
                xs.append(x + 0.04 * (k - 1))  # a small offset keeps overlapping bars apart
                ys.append(stat.mean)
                errs.append(0.0 if stat.n < 2 else stat.std)
                ns.append(stat.n)
        if not xs:
            continue
        ax.errorbar(xs, ys, yerr=errs, color=colors[m], marker="o", capsize=4, lw=1.6, label=label_of(m))
        for x, y, n in zip(xs, ys, ns):
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7,
                        color=colors[m])
        labels.append(label_of(m))
    ax.set_xticks(range(len(settings)), settings)
    ax.set_xlabel("labeled setting")
    ax.set_ylabel("test DSC [%] (mean ± std over runs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=False)
    ax.set_title("Test Dice against the amount of labels")
    fig.tight_layout()
    return save(fig, out_dir, name, "ratio", labels)
