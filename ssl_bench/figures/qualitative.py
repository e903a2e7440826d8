"""A grid like Figs. 3 and 4 of You et al. (IPMI 2023): image, ground truth and every method's
prediction of a few test slices, classes as coloured overlays with contours, one colour per
class in every panel, and a legend of the classes.

Which slices (a fixed rule, so the figure cannot be cherry-picked):

* runs: for each method, its run of the lowest seed within the lowest split seed that every
  method has (one labeled setting; all methods then share the same test cases);
* cases: each test case's mean Dice over those methods (its per-case "mean", from the runs'
  ``test_<checkpoint>_per_case.csv``); the **median** case (the lower median) and the
  **hardest** case (the lowest);
* slice: the slice of the case with the most ground-truth foreground voxels (along axis 0 of the
  (Z, Y, X) volume; on a 3D dataset such as LA, the axial slice, along z).

Predictions are recomputed from each run's checkpoint (``ssl_bench.predict``), with the
engine's own inference, so they are the predictions the test scored: on a 2D run the slice
itself; on a 3D run the whole volume by the run's sliding window (patch, strides, largest-component
switch), once per method and case, of which the figure shows the chosen slice.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba
from matplotlib.patches import Patch

from ssl_bench.datasets.base import DataError
from ssl_bench.predict import RunPredictor, load_predictor, predict_slice
from ssl_bench.registry import get_dataset_class
from ssl_bench.volumetric import is_volumetric, zyx
from ssl_bench.table.cases import load_cases, run_dirs
from ssl_bench.table.main import method_checkpoints
from ssl_bench.table.runs import REPORTED, display_name, setting_order

from .common import FigureResult, class_color, methods_in, save, shown_runs

ALPHA = 0.4
LONG_ID = 12  # characters of a case id that still fit beside 'median: ' in a row label


def pick_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per method: the lowest seed of the lowest split seed common to all methods."""
    methods = methods_in(runs)
    common = set.intersection(*[set(runs.loc[runs["method"] == m, "split_seed"]) for m in methods])
    if not common:
        raise DataError("the methods share no split seed, so they were tested on different cases; "
                        "select runs of one split seed (or run every method with the same --split-seed)")
    split = min(common, key=int)
    here = runs[runs["split_seed"] == split].copy()
    here["_seed"] = here["seed"].astype(int)
    return here.sort_values("_seed").groupby("method", sort=False).head(1).drop(columns="_seed")


def pick_cases(case_means: pd.Series) -> list[tuple[str, str]]:
    """[("median", case), ("hardest", case)] from each case's mean Dice (one row if they coincide)."""
    ordered = case_means.sort_values(kind="stable")
    median = ordered.index[(len(ordered) - 1) // 2]
    hardest = ordered.index[0]
    return [("median", median)] + ([("hardest", hardest)] if hardest != median else [])


def most_foreground_slice(label: np.ndarray) -> int:
    """The index along axis 0 (the slice axis; z, axial, on 3D data) of the slice of a (Z, Y, X)
    label volume with the most foreground voxels (the first of equals)."""
    label = np.asarray(label)
    return int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(axis=1)))


def case_name(why: str, case_id: str) -> str:
    """A row's first words, ``median: <case>``; a long case id (LA's 20 characters) on a line of its
    own, so the label stays within its row."""
    return f"{why}:{chr(10) if len(case_id) > LONG_ID else ' '}{case_id}"


def slice_label(z: int, volumetric: bool) -> str:
    """How a row names its slice: ``slice z`` (2D), ``axial slice z=..`` (3D)."""
    return f"axial slice z={z}" if volumetric else f"slice {z}"


def slice_rule(predictors: dict[str, RunPredictor], dataset: str, shown: list[tuple[str, str, int]]) -> str:
    """The notes' account of the shown slice; on 3D, with the slices shown (``shown``: (why, case,
    z) a row) and each method's sliding window."""
    if not any(p.volumetric for p in predictors.values()):
        return "slice: most ground-truth foreground"
    slices = ", ".join(f"{why} {case_id} z={z}" for why, case_id, z in shown)
    windows = "; ".join(f"{display_name(m, dataset)} patch {list(zyx(p.window.patch))}, stride {list(zyx(p.window.stride))}"
                        f", lcc {'on' if p.window.lcc else 'off'}" for m, p in predictors.items())
    return (f"slice: the axial slice (axis z) with most ground-truth foreground ({slices}), of each method's "
            f"sliding-window prediction of the whole volume as its test ran it ((x, y, z): {windows})")


def overlay(ax, image: np.ndarray, labels: np.ndarray | None, num_classes: int) -> None:
    """The slice in grey with each foreground class filled (alpha) and outlined in its colour."""
    ax.imshow(image, cmap="gray", interpolation="nearest")
    if labels is not None:
        rgba = np.zeros((*labels.shape, 4))
        for c in range(1, num_classes):
            rgba[labels == c] = to_rgba(class_color(c), ALPHA)
        ax.imshow(rgba, interpolation="nearest")
        for c in range(1, num_classes):
            if (labels == c).any():
                ax.contour(labels == c, levels=[0.5], colors=[class_color(c)], linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])


def qualitative(runs: pd.DataFrame, data_root: Path, out_dir: Path, checkpoint: str = REPORTED,
                setting: str | None = None, results_root: Path | None = None,
                name: str = "qualitative") -> FigureResult:
    runs = shown_runs(runs)
    setting = setting or sorted(runs["setting"].unique(), key=setting_order)[0]
    chosen = pick_runs(runs[runs["setting"] == setting])
    methods = methods_in(chosen)
    per_method = method_checkpoints(chosen, checkpoint)
    cases = load_cases(chosen, per_method, results_root).frame
    # a case's mean Dice over its foreground classes (the per-case frame holds one row per class)
    means = cases.groupby("case_id")["dice"].mean().dropna()
    if means.empty:
        raise DataError("no per-case results (test_<checkpoint>_per_case.csv) for the chosen runs; "
                        "the qualitative figure picks its cases from them")
    dataset_name = str(chosen["dataset"].iloc[0])
    ds = get_dataset_class(dataset_name)(data_root)
    volumetric = is_volumetric(ds)
    dirs = run_dirs(chosen, results_root)
    predictors = {}
    for m in methods:
        run = chosen[chosen["method"] == m].iloc[0]
        predictors[m] = load_predictor(dirs[str(run["run_id"])], per_method[m], ds)
    rows = pick_cases(means)
    ncol = 2 + len(methods)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 2.4 * len(rows) + 0.8), squeeze=False)
    shown = []  # (why, case, slice) a row
    for r, (why, case_id) in enumerate(rows):
        case = ds.load_case(case_id)
        z = most_foreground_slice(case.label)
        shown.append((why, case_id, z))
        image, truth = np.asarray(case.image[z], dtype=float), np.asarray(case.label[z])
        overlay(axes[r][0], image, None, ds.num_classes)
        overlay(axes[r][1], image, truth, ds.num_classes)
        axes[r][0].set_ylabel(f"{case_name(why, case_id)}\n{slice_label(z, volumetric)}, DSC {100 * means[case_id]:.1f}",
                              fontsize=8)
        for k, m in enumerate(methods):
            overlay(axes[r][2 + k], image, predict_slice(predictors[m], case.image, z), ds.num_classes)
    for k, title in enumerate(["Image", "Ground truth", *[display_name(m, dataset_name) for m in methods]]):
        axes[0][k].set_title(title, fontsize=9)
    legend = [Patch(facecolor=class_color(c), edgecolor="none", label=ds.class_names[c]) for c in range(1, ds.num_classes)]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), frameon=False)
    seeds = ", ".join(f"{display_name(m, dataset_name)} seed {s}" for m, s in zip(chosen["method"], chosen["seed"]))
    axial = ", axial slices of the 3D predictions" if volumetric else ""
    fig.suptitle(f"{dataset_name}, {setting}: median and hardest test case by mean Dice over methods{axial}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    notes = [f"runs: {seeds}, split seed {chosen['split_seed'].iloc[0]}; "
             f"cases: median and hardest by mean Dice over methods; {slice_rule(predictors, dataset_name, shown)}"]
    return save(fig, out_dir, name, "qualitative", [display_name(m, dataset_name) for m in methods], notes)
