"""Paired differences against a reference method (``ssl-bench table --compare-to METHOD``).

One table per (dataset, protocol) with the layout of Tables 1/2: the other methods as rows,
(setting, class) as columns. A cell reads ``ΔDSC [lo, hi] p=... / ΔASD [lo, hi] p=...`` where
Δ = method − reference on the same test cases, seeds and split seeds
(``ssl_bench.stats.paired``): its mean, the 95 % two-level bootstrap interval (runs and cases
resampled) and the two-sided Wilcoxon signed-rank p-value on one difference per case, Holm-
corrected over every p-value of the table. Bold: adjusted p < alpha. The default reference is
UNet-L (the labeled-only baseline every semi-supervised method must beat) where it was run.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ssl_bench.stats import ALPHA, holm, paired

from .cases import load_cases
from .main import class_label, column_groups, method_checkpoints, shown_checkpoint, table_columns
from .model import Block, Table, checkpoint_line, protocol_line
from .runs import REPORTED, display_name, is_main_variant, method_order
from .significance import METRICS, SCALE

DEFAULT_REFERENCE = "unet-l"


def paired_tables(runs: pd.DataFrame, checkpoint: str = REPORTED, reference: str | None = None,
                  results_root: Path | None = None, warn=None) -> list[Table]:
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
        tables.append(_table(d, dataset, ptag, ref, others, cols, per_method, checkpoint, results_root))
    return tables


def _table(d, dataset, ptag, ref, others, cols, per_method, checkpoint, results_root) -> Table:
    cases = load_cases(d, per_method, results_root)
    results = {}  # (method, column, metric) -> Paired | None
    for m in others:
        for j, (s, c) in enumerate(cols):
            here = d[d["setting"] == s]
            a = cases.cell(here.loc[here["method"] == m, "run_id"], c)
            b = cases.cell(here.loc[here["method"] == ref, "run_id"], c)
            for metric in METRICS:
                results[m, j, metric] = paired(a, b, metric) if len(a) and len(b) else None
    keys = list(results)
    adjusted = dict(zip(keys, holm([results[k].p if results[k] else math.nan for k in keys])))
    table = Table(title=f"{dataset}, protocol {ptag}: paired differences against {display_name(ref)}, "
                        f"Δ = method − {display_name(ref)} ({shown_checkpoint(checkpoint, per_method)} checkpoint)",
                  row_header="Method", columns=[class_label(c) for _, c in cols], groups=column_groups(cols),
                  protocol=ptag)
    block = Block(None)
    for m in others:
        cells = []
        for j, (s, c) in enumerate(cols):
            cell = []
            for metric in METRICS:
                r, p_holm = results[m, j, metric], adjusted[m, j, metric]
                cell += [(" / ", False)] if cell else []
                cell.append((_text(r, p_holm, metric), r is not None and p_holm < ALPHA))
                table.records.append(_record(dataset, ptag, s, m, ref, c, metric, per_method[m], r, p_holm))
            cells.append(cell)
        block.rows.append((display_name(m), cells))
    table.blocks.append(block)
    lacking = len(cases.lacking(d["run_id"]))
    table.footnote = [
        protocol_line(ptag), checkpoint_line(checkpoint, per_method),
        f"Δ = method − {display_name(ref)} on the same test cases, seeds and split seeds (DSC in % points: "
        "positive is better; ASD in voxels: negative is better); [lo, hi]: 95 % bootstrap interval, runs and "
        "cases resampled; n = paired runs x test cases.",
        "p: two-sided Wilcoxon signed-rank test on one difference per test case (averaged over seeds), "
        f"Holm-corrected over the {sum(r is not None for r in results.values())} p-values of this table; "
        f"bold: adjusted p < {ALPHA}.",
        *([f"—: no per-case results (test_<checkpoint>_per_case.csv) for {lacking} run(s)."] if lacking else []),
    ]
    return table


def _text(r, p_holm: float, metric: str) -> str:
    if r is None:
        return "—"
    digits, k = METRICS[metric][0], SCALE[metric]
    return (f"{r.mean * k:+.{digits}f} [{r.ci[0] * k:+.{digits}f}, {r.ci[1] * k:+.{digits}f}] "
            f"p={p_holm:.2g} (n={r.n_runs}x{r.n_cases})")


def _record(dataset, ptag, setting, method, ref, cls, metric, ckpt, r, p_holm) -> dict:
    nan, k = math.nan, SCALE[metric]
    return {"block": f"paired vs {ref}", "dataset": dataset, "protocol": ptag, "setting": setting,
            "method": method, "reference": ref, "class": cls, "metric": metric, "checkpoint": ckpt,
            "delta_mean": r.mean * k if r else nan, "delta_ci_low": r.ci[0] * k if r else nan,
            "delta_ci_high": r.ci[1] * k if r else nan, "p": r.p if r else nan, "p_holm": p_holm,
            "n_runs": r.n_runs if r else 0, "n_cases": r.n_cases if r else 0}
