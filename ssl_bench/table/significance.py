"""Which measured cells are bold, their confidence intervals, and what each std covers.

Bold (``bold_marks``): in each column and for each metric, the row with the best shown mean
(highest DSC, lowest ASD) is compared with the runner-up by ``ssl_bench.stats.paired`` (per-case
differences on the same test cases, seeds and split seeds; two-sided Wilcoxon signed-rank on one
difference per case). The p-values of all such comparisons of a table form one family, corrected
by Holm; the best is bold only where its adjusted p < ``ALPHA`` and the paired mean difference
favours it. A tie at display precision, a column with one row, or a comparison without per-case
results gets no bold. The footnote names the test, the correction, and how many seeds and cases
entered.

Spread (``spread_line``): a run is one (seed, split seed); the ± of a cell is the sample std over
its runs, which covers initialisation seeds, labeled sets (split seeds of a split that draws the
labeled patients, i.e. any split but the field's fixed list), or both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from ssl_bench.stats import ALPHA, Paired, bootstrap_ci, case_matrix, holm, paired

from .model import ASD_DIGITS, DICE_DIGITS, Stat
from .runs import display_name

#: per-case column -> (display digits, higher is better)
METRICS = {"dice": (DICE_DIGITS, True), "asd_vox": (ASD_DIGITS, False)}
#: per-case value -> table unit (DSC in %)
SCALE = {"dice": 100.0, "asd_vox": 1.0}


@dataclass
class RunnerUp:
    """The best row of one column and metric against the runner-up."""

    column: int
    metric: str
    best: int
    runner_up: int
    result: Paired | None  # None: a row has no per-case results
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        if self.result is None or not self.p_holm < ALPHA:
            return False
        return self.result.mean > 0 if METRICS[self.metric][1] else self.result.mean < 0


def runner_up_test(stats: Sequence[Stat | None], cells: Sequence[pd.DataFrame], column: int,
                   metric: str) -> RunnerUp | None:
    """The comparison of one column (None: fewer than two rows, or a tie as shown)."""
    digits, highest = METRICS[metric]
    ranked = sorted((i for i, s in enumerate(stats) if s is not None), key=lambda i: stats[i].mean,
                    reverse=highest)
    if len(ranked) < 2:
        return None
    best, second = ranked[:2]
    if round(stats[best].mean, digits) == round(stats[second].mean, digits):
        return None
    a, b = cells[best], cells[second]
    result = paired(a, b, metric) if len(a) and len(b) else None
    return RunnerUp(column, metric, best, second, result)


def bold_marks(tests: list[RunnerUp], n_rows: int, n_cols: int) -> dict[str, list[list[bool]]]:
    """Holm over ``tests`` (set in place), then metric -> [column][row] bold flags."""
    for t, p in zip(tests, holm([t.result.p if t.result else math.nan for t in tests])):
        t.p_holm = p
    flags = {m: [[False] * n_rows for _ in range(n_cols)] for m in METRICS}
    for t in tests:
        flags[t.metric][t.column][t.best] = t.significant
    return flags


def mark_grid(grid: list[list[tuple[Stat | None, Stat | None]]], cells: list[list[pd.DataFrame]]
              ) -> tuple[dict[str, list[list[bool]]], list[RunnerUp]]:
    """Bold flags for a [row][column] grid of (DSC, ASD) stats and the per-case rows of each cell."""
    n_rows, n_cols = len(grid), len(grid[0]) if grid else 0
    tests = []
    for j in range(n_cols):
        for k, metric in enumerate(METRICS):
            t = runner_up_test([grid[i][j][k] for i in range(n_rows)], [cells[i][j] for i in range(n_rows)],
                               j, metric)
            if t is not None:
                tests.append(t)
    return bold_marks(tests, n_rows, n_cols), tests


def statistics_lines(runs: pd.DataFrame, tests: list[RunnerUp], missing_runs: int, ci: bool,
                     by: Sequence[str] = ("method", "setting")) -> list[str]:
    """The footnote lines of a measured table: spread, bold rule, intervals."""
    return [spread_line(runs, by), bold_line(tests, missing_runs), *([ci_line(missing_runs)] if ci else [])]


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def bold_line(tests: list[RunnerUp], missing_runs: int) -> str:
    """The footnote line that says how bold was decided."""
    rule = ("Bold: a column's best mean (highest DSC, lowest ASD), only where it is significantly better "
            "than the runner-up: two-sided Wilcoxon signed-rank test on paired per-case differences (same "
            "test case, seed and split seed; one difference per case, averaged over seeds), Holm-corrected "
            f"over the {len(tests)} comparison(s) of this table, alpha = {ALPHA}")
    done = [t.result for t in tests if t.result is not None]
    if done:
        rule += (f"; {_span([r.n_runs for r in done])} paired run(s) (seed x split seed) and "
                 f"{_span([r.n_cases for r in done])} test case(s) per comparison")
    untested = len(tests) - len(done)
    if untested:
        why = (f"per-case results (test_<checkpoint>_per_case.csv) missing for {missing_runs} run(s)"
               if missing_runs else "no seed and split seed in common")
        rule += f"; {untested} comparison(s) not tested (no bold): {why}"
    if not tests:
        rule += " (nothing to compare: one row per column, or ties as shown)"
    return rule + "."


def ci_of(cell: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """The 95 % two-level bootstrap interval (seeds x test cases) of a cell, in table units."""
    if not len(cell):
        return None
    lo, hi = bootstrap_ci(case_matrix(cell, metric).to_numpy(dtype=float))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return lo * SCALE[metric], hi * SCALE[metric]


def ci_line(missing_runs: int) -> str:
    line = ("[lo, hi]: 95 % bootstrap confidence interval of the mean, runs (seeds) and test cases both "
            "resampled (2000 replicates, percentile); Average uses each case's mean over its classes")
    if missing_runs:
        line += f"; none where per-case results are missing ({missing_runs} run(s))"
    return line + "."


def spread_kind(runs: pd.DataFrame) -> str:
    """What the spread over these runs covers."""
    seeds = runs["seed"].nunique() > 1
    split = runs["split"] if "split" in runs else pd.Series([""] * len(runs), index=runs.index)
    drawn = runs[split.fillna("").astype(str) != "field"]
    splits = drawn["split_seed"].nunique() > 1
    if seeds and splits:
        return "initialisation seeds and labeled sets (split seeds)"
    if splits:
        return "labeled sets (split seeds)"
    return "initialisation seeds"


def spread_line(runs: pd.DataFrame, by: Sequence[str] = ("method", "setting")) -> str:
    """The footnote line saying what each std covers (one clause per kind)."""
    kinds: dict[str, list[str]] = {}
    for key, r in runs.groupby(list(by), sort=True):
        if len(r) < 2:
            continue  # one run: no std to describe
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join([display_name(key[0]), *map(str, key[1:])]) if by[0] == "method" else " ".join(map(str, key))
        kinds.setdefault(spread_kind(r), []).append(label)
    if not kinds:
        return "No std: one run per cell; n = number of runs (seed x split seed)."
    if len(kinds) == 1:
        return f"Std covers {next(iter(kinds))}; n = number of runs (seed x split seed)."
    parts = [f"{kind} for {', '.join(labels)}" for kind, labels in kinds.items()]
    return "Std covers " + "; ".join(parts) + "; n = number of runs (seed x split seed)."
