"""Statistics of per-case results: bootstrap confidence intervals, paired differences between
two methods, the Wilcoxon signed-rank test and Holm's correction.

The data of one table cell is a matrix ``runs x cases``: one row per run (a seed, or a seed and a
split seed), one column per test case, NaN where a case is not in that run's test set or the
metric is undefined there (both masks empty; ``ssl_bench.metrics``). Its statistic is the mean
over runs of each run's mean over its cases, i.e. the mean over seeds of the per-run figure the
tables show.

* ``bootstrap_ci``: a two-level bootstrap. Each replicate draws the runs with replacement *and*
  the test cases with replacement (one draw of cases shared by every run: seeds and cases are
  crossed, every run is scored on the same patients; runs whose test sets differ, as with split
  seeds of a phantom, draw from the union of the cases and skip those they lack), so the
  interval covers both the spread over seeds and the sampling of test patients. Percentile
  interval, fixed RNG seed (a table prints the same interval every time).
* ``paired``: method minus reference on the same test case, the same seed and the same split
  seed. Its mean and bootstrap CI use the matrix of differences; the Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, two-sided) uses one difference per test case, averaged over the
  seeds: the same patient scored under three seeds is one patient, and counting it three times
  would overstate the evidence.
* ``holm``: Holm's step-down adjustment (Holm, Scand. J. Statist. 1979) of a family of p-values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

#: bootstrap replicates and RNG seed of every interval in the tables
N_BOOT = 2000
BOOT_SEED = 0
ALPHA = 0.05


def matrix_mean(values: np.ndarray) -> float:
    """Mean over runs (rows) of each run's mean over its defined cases; NaN if nothing is defined."""
    values = np.asarray(values, dtype=float)
    defined = np.isfinite(values)
    counts = defined.sum(axis=-1)
    sums = np.where(defined, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_means = sums / counts
    rows = counts > 0
    return float(row_means[rows].mean()) if rows.any() else math.nan


def bootstrap_ci(values: np.ndarray, level: float = 0.95, n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile interval of ``matrix_mean`` under the two-level (runs x cases) bootstrap."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or not np.isfinite(values).any():
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n_runs, n_cases = values.shape
    rows = rng.integers(0, n_runs, size=(n_boot, n_runs))
    cols = rng.integers(0, n_cases, size=(n_boot, n_cases))
    sample = values[rows[:, :, None], cols[:, None, :]]  # (n_boot, runs, cases)
    defined = np.isfinite(sample)
    counts = defined.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        run_means = np.where(defined, sample, 0.0).sum(axis=2) / counts
        used = counts > 0  # a drawn run may have none of the drawn cases defined
        stats = np.where(used, run_means, 0.0).sum(axis=1) / used.sum(axis=1)
    stats = stats[np.isfinite(stats)]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped, as Wilcoxon
    did). All differences zero: p = 1 (no evidence of any difference); none at all: NaN."""
    from scipy.stats import wilcoxon

    d = np.asarray([x for x in differences if math.isfinite(x)], dtype=float)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order. With the m finite p-values sorted ascending,
    p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)); NaN entries are not part of the
    family and stay NaN."""
    p = np.asarray(pvalues, dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(p.shape, math.nan)
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (len(finite) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def case_matrix(long: pd.DataFrame, value: str) -> pd.DataFrame:
    """``long`` (columns ``seed``, ``split_seed``, ``case_id`` and ``value``) as a matrix with one
    row per (seed, split_seed) and one column per case."""
    return long.pivot_table(index=["seed", "split_seed"], columns="case_id", values=value,
                            aggfunc="mean", dropna=False)


@dataclass(frozen=True)
class Paired:
    """Method minus reference on the same cases, seeds and split seeds."""

    mean: float  # mean over paired runs of the mean difference over their cases
    ci: tuple[float, float]  # two-level bootstrap over paired runs x cases
    p: float  # Wilcoxon signed-rank, one difference per case (averaged over seeds)
    n_runs: int  # paired (seed, split seed) runs
    n_cases: int  # test cases with at least one paired difference


def paired(method: pd.DataFrame, reference: pd.DataFrame, value: str) -> Paired | None:
    """Paired differences ``method - reference`` of column ``value`` (see the module docstring);
    None when no (seed, split seed, case) has a defined value in both."""
    a, b = case_matrix(method, value), case_matrix(reference, value)
    runs = a.index.intersection(b.index)
    cases = a.columns.intersection(b.columns)
    diff = (a.loc[runs, cases] - b.loc[runs, cases]).to_numpy(dtype=float)
    defined = np.isfinite(diff)
    if not defined.any():
        return None
    diff = diff[defined.any(axis=1)][:, defined.any(axis=0)]
    with np.errstate(invalid="ignore"):
        per_case = np.nanmean(diff, axis=0)
    return Paired(mean=matrix_mean(diff), ci=bootstrap_ci(diff), p=wilcoxon_p(per_case),
                  n_runs=int(diff.shape[0]), n_cases=int(diff.shape[1]))
