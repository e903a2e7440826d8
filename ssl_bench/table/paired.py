"""Paired differences against a reference method (``ssl-bench table --compare-to METHOD``).

One table per (dataset, protocol) with the layout of Tables 1/2: the other methods as rows,
(setting, class) as columns. A cell reads ``ΔDSC [lo, hi] p=... / ΔASD [lo, hi] p=...`` where
Δ = method − reference on the same seeds, split seeds and patients (``ssl_bench.stats.compare``):
the difference of the statistics the main table shows, its 95 % interval and the p-value of the
test whose variance holds both the seed and the patient spread, Holm-corrected in the family it
shares with the main table (``main.table_family``: the same comparison gets the same adjusted p
in both). Comparisons with fewer than ``min_runs`` paired runs are not tested and say so. Bold:
adjusted p < alpha. The default reference is UNet-L (the labeled-only baseline every
semi-supervised method must beat) where it was run.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ssl_bench.stats import ALPHA, MIN_RUNS

from .cases import load_cases
from .main import (DEFAULT_REFERENCE, class_label, column_groups, method_checkpoints, missing_runs, shown_checkpoint,
                   table_columns, table_family)
from .model import Block, Table, checkpoint_line, protocol_line
from .runs import REPORTED, display_name, is_main_variant, method_order
from .significance import METRICS, SCALE, TEST_TEXT, family_text, missing_lines


def paired_tables(runs: pd.DataFrame, checkpoint: str = REPORTED, reference: str | None = None,
                  results_root: Path | None = None, warn=None, min_runs: int = MIN_RUNS) -> list[Table]:
    """Tables of paired differences against ``reference`` (default: UNet-L where present);
    ``warn`` is told about a (dataset, protocol) that lacks an explicitly named reference."""
    runs = runs[runs.apply(is_main_variant, axis=1)] if len(runs) else runs
    tables = []
    for (dataset, ptag), d in sorted(runs.groupby(["dataset", "protocol_tag"]), key=lambda kv: kv[0]):
        ref = reference or DEFAULT_REFERENCE
        if ref not in set(d["method"]):
            if reference and warn is not None:
                warn(f"{dataset}, protocol {ptag}: no runs of {reference}, no paired comparison")
            continue
        per_method = method_checkpoints(d, checkpoint)
        cols = table_columns(d, per_method, dataset)
        others = sorted(set(d["method"]) - {ref}, key=lambda m: method_order(display_name(m)))
        if not cols or not others:
            continue
        tables.append(_table(d, dataset, ptag, ref, others, cols, per_method, checkpoint, results_root, min_runs))
    return tables


def _table(d, dataset, ptag, ref, others, cols, per_method, checkpoint, results_root, min_runs) -> Table:
    cases = load_cases(d, per_method, results_root)
    family = table_family(d, cols, per_method, cases, ref, min_runs)
    table = Table(title=f"{dataset}, protocol {ptag}: paired differences against {display_name(ref, dataset)}, "
                        f"Δ = method − {display_name(ref, dataset)} ({shown_checkpoint(checkpoint, per_method)} checkpoint)",
                  row_header="Method", columns=[class_label(c) for _, c in cols], groups=column_groups(cols),
                  protocol=ptag)
    block = Block(None)
    for m in others:
        cells = []
        for j, (s, c) in enumerate(cols):
            cell = []
            for metric in METRICS:
                r, p_holm, test = family.get(j, metric, m, ref)
                cell += [(" / ", False)] if cell else []
                cell.append((_text(r, p_holm, metric), test.tested and p_holm < ALPHA))
                table.records.append(_record(dataset, ptag, s, m, ref, c, metric, per_method[m], r, p_holm))
            cells.append(cell)
        block.rows.append((display_name(m, dataset), cells))
    table.blocks.append(block)
    table.footnote = [
        protocol_line(ptag), checkpoint_line(checkpoint, per_method),
        f"Δ = method − {display_name(ref, dataset)}: difference of the statistics the main table shows (Average: mean "
        "over classes of the class means), on the same seeds, split seeds and patients (DSC in % points: positive "
        "is better; ASD in voxels: negative is better); [lo, hi]: its 95 % t interval (seed and patient "
        "spread); n = paired runs x patients.",
        f"p: {TEST_TEXT}, {family_text(family.size, display_name(ref, dataset))} (the family of the main table "
        f"too), needs >= {family.min_runs} paired runs; bold: adjusted p < {ALPHA}. The CSV adds "
        "p_wilcoxon_patients, a two-sided Wilcoxon signed-rank test on the seed-averaged per-patient differences "
        "(secondary: it leaves out the seed spread).",
        *missing_lines(missing_runs(d, cases), cases.unscored),
    ]
    return table


def _text(r, p_holm: float, metric: str) -> str:
    if r is None:
        return "—"
    digits, k = METRICS[metric][0], SCALE[metric]
    ci = ("" if not all(map(math.isfinite, r.ci)) else
          f" [{r.ci[0] * k:+.{digits}f}, {r.ci[1] * k:+.{digits}f}]")
    test = f"p={p_holm:.2g}" if r.tested else f"not tested: {r.why_not}"
    return f"{r.mean * k:+.{digits}f}{ci} {test} (n={r.n_runs}x{r.n_patients})"


def _record(dataset, ptag, setting, method, ref, cls, metric, ckpt, r, p_holm) -> dict:
    nan, k = math.nan, SCALE[metric]
    return {"block": f"paired vs {ref}", "dataset": dataset, "protocol": ptag, "setting": setting,
            "method": method, "reference": ref, "class": cls, "metric": metric, "checkpoint": ckpt,
            "delta_mean": r.mean * k if r else nan, "delta_ci_low": r.ci[0] * k if r else nan,
            "delta_ci_high": r.ci[1] * k if r else nan, "p": r.p if r else nan, "p_holm": p_holm,
            "p_wilcoxon_patients": r.p_wilcoxon if r else nan, "tested": bool(r and r.tested),
            "n_runs": r.n_runs if r else 0, "n_patients": r.n_patients if r else 0}
