"""What every figure shares: the Agg backend, colours, sizes, saving, the runs a figure shows.

Colours are fixed per class index (Okabe & Ito's colour-blind-safe palette, background never
drawn) and per method (its place in the paper's order, BCP after it), so a class or a method has
the same colour in every panel and every figure; where two methods of one figure would share a
colour (two variants of a method, plugins), the later ones take colours no method of the figure
uses. Figures are written as PNG and PDF at a fixed size in
pixels (``size`` inches x ``DPI``), each file to a temporary name first and then renamed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ssl_bench.table.runs import PAPER_ORDER, base_method, display_name, is_main_variant, method_order  # noqa: E402

DPI = 100
#: foreground class i (1-based) -> colour (Okabe & Ito 2008, black left out)
CLASS_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]
_METHOD_CMAP = plt.get_cmap("tab20")
#: methods with a fixed colour, in the order colours are handed out
COLOR_ORDER = [*PAPER_ORDER, "BCP"]
LEGEND_ENTRY_IN = 1.6  # inches a legend entry needs, to fit the legend in the figure's width


def class_color(index: int) -> str:
    """The colour of foreground class ``index`` (1 = the first foreground class)."""
    return CLASS_COLORS[(index - 1) % len(CLASS_COLORS)]


def _palette(i: int):
    i %= _METHOD_CMAP.N
    return _METHOD_CMAP((2 * i) % 20 + (2 * i) // 20)  # tab20's dark shades first, then the light ones


def method_color(method: str):
    """A method's own colour: its place in COLOR_ORDER, others after it by name; a variant
    ("action:paper") has its method's colour (``method_colors`` keeps the variants of one figure
    apart)."""
    name = display_name(base_method(method))
    return _palette(COLOR_ORDER.index(name) if name in COLOR_ORDER else len(COLOR_ORDER) + sum(map(ord, name)))


def method_colors(methods: Sequence[str]) -> dict:
    """Distinct colours for the methods of one figure, in the order given: each keeps
    ``method_color`` unless a method before it has that colour already; those take the palette's
    colours that no method of the figure claims, in palette order."""
    own = {m: method_color(m) for m in methods}
    out, taken = {}, set()
    for m in methods:
        if own[m] not in taken:
            out[m] = own[m]
            taken.add(own[m])
    claimed = set(own.values())
    free = (c for c in map(_palette, range(_METHOD_CMAP.N)) if c not in claimed)
    for m in methods:
        if m not in out:
            out[m] = next(free, own[m])  # more methods than colours: a repeat
    return out


def legend_below(fig, handles: Sequence, labels: Sequence[str]) -> float:
    """A legend under the axes, in as many rows as the figure's width needs; returns the bottom
    fraction of the figure it takes (for ``tight_layout(rect=(0, bottom, 1, 1))``)."""
    width, height = fig.get_size_inches()
    ncol = max(1, min(len(labels), int(width // LEGEND_ENTRY_IN)))
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    return min(0.5, (0.12 + 0.3 * rows) / height + 0.02)


@dataclass
class FigureResult:
    kind: str
    paths: list[Path]  # the PNG, then the PDF
    size_px: tuple[int, int]  # width, height of the PNG
    labels: list[str] = field(default_factory=list)  # method (or dataset) names shown in the legend
    notes: list[str] = field(default_factory=list)  # how the data were chosen, what is left out


def save(fig, out_dir: Path, name: str, kind: str, labels: Sequence[str], notes: Sequence[str] = ()) -> FigureResult:
    """Write ``<name>.png`` and ``<name>.pdf`` atomically and close the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        tmp = out_dir / f".{name}.{ext}.tmp"
        fig.savefig(tmp, dpi=DPI, format=ext)
        os.replace(tmp, path)
        paths.append(path)
    width, height = fig.get_size_inches() * DPI
    plt.close(fig)
    return FigureResult(kind, paths, (int(round(width)), int(round(height))), list(labels), list(notes))


def shown_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the main tables (no ablations, ACTION's default augmentation)."""
    return runs[runs.apply(is_main_variant, axis=1)] if len(runs) else runs


def namer(runs: pd.DataFrame):
    """``display_name`` on the runs' dataset (V-Net-L / V-Net-F on a 3D one); the plain names where
    the runs hold several datasets or none."""
    datasets = runs["dataset"].unique() if "dataset" in runs and len(runs) else []
    dataset = str(datasets[0]) if len(datasets) == 1 else None
    return lambda method: display_name(method, dataset)


def methods_in(runs: pd.DataFrame) -> list[str]:
    return sorted(runs["method"].unique(), key=lambda m: method_order(display_name(m)))


def log_figures(result: FigureResult, run_id: str, tracking_uri: str) -> None:
    """Attach the figure's files to an MLflow run (artifact folder ``figures/``)."""
    from ssl_bench.mlflow_store import make_client, with_retry

    client = make_client(tracking_uri)
    for path in result.paths:
        with_retry(lambda p=path: client.log_artifact(run_id, str(p), "figures"))
