"""Per-class voxel frequency of each dataset (the class imbalance of You et al., IPMI 2023,
Fig. 1): one panel per dataset, one bar per class (background grey, foreground classes in their
colours), log scale, the percentage on each bar. Counted over every case of the dataset at its
native resolution by ``ssl-bench data info``'s ``dataset_summary`` (from the slice cache where
it is fresh, otherwise from the files).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt

from ssl_bench.data_summary import dataset_summary
from ssl_bench.registry import get_dataset_class

from .common import FigureResult, class_color, save


def class_frequencies(dataset: str, data_root: Path) -> list[tuple[str, float]]:
    """(class name, % of voxels) of every class of ``dataset`` under ``data_root``."""
    from rich.console import Console

    ds = get_dataset_class(dataset)(data_root)
    summary = dataset_summary(ds, int(ds.default_image_size), Console(stderr=True, quiet=True))
    if summary["problems"]:
        from ssl_bench.datasets.base import DataError

        raise DataError(f"{dataset} at {data_root}: {summary['problems'][0]} "
                        f"(`ssl-bench data info {dataset} {data_root}` lists every problem)")
    return [(c["name"], 100.0 * c["voxel_fraction"]) for c in summary["classes"]]


def imbalance(datasets: Sequence[str], data_root: Path, out_dir: Path, name: str = "imbalance") -> FigureResult:
    freqs = {d: class_frequencies(d, data_root) for d in datasets}
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4.4), squeeze=False)
    for ax, (dataset, classes) in zip(axes[0], freqs.items()):
        colors = ["#9E9E9E" if i == 0 else class_color(i) for i in range(len(classes))]
        values = [max(v, 1e-6) for _, v in classes]  # a class with no voxel still gets a visible stub
        bars = ax.bar(range(len(classes)), values, color=colors, edgecolor="black", lw=0.5)
        for bar, (_, v) in zip(bars, classes):
            ax.annotate(f"{v:.3g}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(classes)), [c for c, _ in classes], rotation=20)
        ax.set_title(dataset)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("voxels of the class [% of all voxels]")
    fig.suptitle("Class imbalance: voxel frequency per class")
    fig.tight_layout()
    return save(fig, out_dir, name, "imbalance", list(datasets))
