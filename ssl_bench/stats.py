"""Statistics of per-case results: the cell statistic, its interval, paired differences, the
test behind a bold mark, and Holm's correction. README's "Statistics" section says the same.

**Unit.** The patient (``ssl_bench.datasets.base.patient_of``: ACDC's ED and ES volumes are one
patient; every other dataset here has one volume per patient). Seeds and patients are crossed:
every run (a seed, or a seed and a split seed) scores the same test patients.

**The statistic of a cell** is the one the tables show, as ``ssl_bench.metrics.aggregate``
computes it and MLflow records it: for a class, the mean over the volumes where it is defined
(the empty-mask policy: both-empty volumes left out, a false positive or a total miss scored
DSC 0 / ASD = volume diagonal); for the Average column, the mean over the classes defined in the
run of those class means. Per run ``k`` it is ``T_k``; the cell's statistic is the mean over its
runs of ``T_k``.

**One value per (run, patient)** carries it: the patient's pseudo-value (linearised contribution,
Cochran, *Sampling Techniques*, 3rd ed. 1977, ch. 6, ratio estimator)
``psi = T + (S_p - T N_p) / N_bar`` per class, where ``S_p`` and ``N_p`` are the sum and the
count of the patient's defined values, ``N_bar`` the mean count per patient of the run; the
Average column's ``psi`` is the mean of the class ``psi`` over the classes defined in the run.
Their mean over the run's patients is ``T_k`` exactly. Where every patient has every class
defined in each of its volumes (ACDC), ``psi`` is simply the patient's mean over its volumes (and
classes). A both-empty patient gets ``psi = T``: no information, as the policy says; a false
positive (DSC 0) lowers it. The interval, the paired difference and the test all use ``psi``.

**Variance** (``crossed_variance``): the runs x patients matrix of ``psi`` (or of paired
differences of ``psi``) is a two-way crossed random-effects layout ``x = mu + a_run + b_patient
+ e``. The ANOVA (method of moments) estimates of the three components give
``Var(mean) = s2_run / K + s2_patient / P + s2_e / (K P)`` (Searle, Casella & McCulloch,
*Variance Components*, 1992, ch. 4), with Satterthwaite's (1946) degrees of freedom; a
component estimated below 0 is set to 0, and the residual term is left out where its coefficient
would be negative (conservative). Satterthwaite's df, computed from the estimated mean squares,
are liberal where the run term carries the variance (they rise exactly when ``MS_run`` is low by
chance), so where that term is at least ``RUN_SHARE_CAP`` (half) of the variance they are capped at
the runs' ``K - 1``; where the patient term carries it they stand. ``ssl-bench bench stats``
measures the result (``results/bench/stats.md``). Runs with different test sets (split seeds) form
balanced blocks whose mean squares are pooled, the blocks taken as independent; the result is
never below the between-run variance ``var(T_k) / K`` (df ``K - 1``), which is what the runs
alone say. The interval is ``mean +- t_{df, 0.975} sqrt(Var)``; the test is the t-test of
``mean / sqrt(Var)``. So the p-value carries the spread over seeds, not only over patients; with
one run the seed part cannot be estimated and the interval covers patients only.

**Paired** (``compare``): method minus reference on the same (seed, split seed) runs and the
same patients, ``Delta_k = T_k(method) - T_k(reference)``: the difference of the statistics
the table shows, each under the empty policy, so nothing is dropped (a false positive where the
reference correctly predicts nothing stays in, penalised). The per-patient Wilcoxon signed-rank
test on the seed-averaged patient differences is kept as a secondary p-value. A comparison is
tested only with at least ``MIN_RUNS`` paired runs.

**Holm** (``holm``): Holm's step-down adjustment (Scand. J. Statist. 1979) of a family of p-values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

ALPHA = 0.05
LEVEL = 0.95
#: paired runs (seed x split seed) a comparison needs before it is tested (and can be bold)
MIN_RUNS = 3
#: the df are capped at the runs' ``K - 1`` where the run (seed) term is at least this share of the
#: variance (module docstring, "Variance"; the share was chosen by ``ssl-bench bench stats``)
RUN_SHARE_CAP = 0.5


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """Sums and counts of one cell's defined per-volume values, per (run, patient, class)."""

    runs: tuple  # (seed, split_seed) per row
    patients: tuple  # patient ids per column
    sums: np.ndarray  # (K, P, C)
    counts: np.ndarray  # (K, P, C) defined volumes
    present: np.ndarray  # (K, P) bool: the patient is in the run's test set

    @property
    def n_runs(self) -> int:
        return len(self.runs)


def cell_of(long: pd.DataFrame, value: str) -> Cell:
    """``long`` (columns ``seed``, ``split_seed``, ``patient``, ``case_id``, ``class`` and
    ``value``; NaN = undefined under the empty policy) as a ``Cell``. A (run, case, class) given
    twice is an error: it would be silently averaged."""
    df = long.assign(seed=long["seed"].astype(str), split_seed=long["split_seed"].astype(str))
    dup = df.duplicated(["seed", "split_seed", "case_id", "class"])
    if dup.any():
        row = df[dup].iloc[0]
        raise ValueError(f"per-case results list case {row['case_id']} ({row['class']}) twice for seed "
                         f"{row['seed']}, split seed {row['split_seed']}: keep one run per (seed, split seed)")
    runs = sorted(set(zip(df["seed"], df["split_seed"])))
    patients = sorted(set(df["patient"].astype(str)))
    classes = sorted(set(df["class"].astype(str)))
    ri = {r: i for i, r in enumerate(runs)}
    pi = {p: i for i, p in enumerate(patients)}
    ci = {c: i for i, c in enumerate(classes)}
    k = np.array([ri[r] for r in zip(df["seed"], df["split_seed"])], dtype=int)
    p = np.array([pi[x] for x in df["patient"].astype(str)], dtype=int)
    c = np.array([ci[x] for x in df["class"].astype(str)], dtype=int)
    v = df[value].to_numpy(dtype=float)
    ok = np.isfinite(v)
    shape = (len(runs), len(patients), len(classes))
    sums, counts = np.zeros(shape), np.zeros(shape)
    np.add.at(sums, (k[ok], p[ok], c[ok]), v[ok])
    np.add.at(counts, (k[ok], p[ok], c[ok]), 1.0)
    present = np.zeros(shape[:2], dtype=bool)
    present[k, p] = True
    return Cell(tuple(runs), tuple(patients), sums, counts, present)


def _class_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(K, C) class statistic per run: mean over the defined volumes (NaN: none defined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums.sum(axis=1) / counts.sum(axis=1)


def run_values(cell: Cell) -> np.ndarray:
    """``T_k`` per run: the mean over the run's defined classes of each class mean (NaN: none)."""
    t = _class_means(cell.sums, cell.counts)
    defined = np.isfinite(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, t, 0.0).sum(axis=1) / defined.sum(axis=1)


def patient_values(cell: Cell) -> np.ndarray:
    """(K, P) pseudo-values ``psi`` (module docstring); NaN where the patient is not in the run's
    test set or the run defines no class. Row means over present patients equal ``run_values``."""
    t = _class_means(cell.sums, cell.counts)  # (K, C)
    defined = np.isfinite(t)
    n_patients = cell.present.sum(axis=1)  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_bar = cell.counts.sum(axis=1) / n_patients[:, None]  # (K, C)
        psi = t[:, None, :] + (cell.sums - t[:, None, :] * cell.counts) / n_bar[:, None, :]
        out = np.where(defined[:, None, :], psi, 0.0).sum(axis=2) / defined.sum(axis=1)[:, None]
    return np.where(cell.present, out, np.nan)


# ----------------------------------------------------------------------------- variance


@dataclass(frozen=True)
class Variance:
    var: float  # estimated variance of the mean over runs of the row means
    df: float  # its degrees of freedom (Satterthwaite); NaN when nothing is estimable
    seeds_estimated: bool  # the seed (run) component entered: at least two runs


def crossed_variance(x: np.ndarray, run_share_cap: float = RUN_SHARE_CAP) -> Variance:
    """Variance of ``mean over rows of each row's mean over its finite entries`` for a runs x
    patients matrix ``x`` (NaN: patient not in that run's test set); see the module docstring.
    ``run_share_cap`` 0 caps the df whenever the run term enters (the rule before 2026-12-03)."""
    x = np.asarray(x, dtype=float)
    rows = np.isfinite(x).any(axis=1)
    x = x[rows]
    n_runs = x.shape[0]
    if n_runs == 0:
        return Variance(math.nan, math.nan, False)
    pattern = [tuple(np.isfinite(r)) for r in x]
    ss = {"run": 0.0, "pat": 0.0, "err": 0.0}
    dof = {"run": 0, "pat": 0, "err": 0}
    a_coef = b_coef = 0.0  # sum (K_g - 1) P_g and (P_g - 1) K_g: multipliers of the components
    alpha = beta = gamma = 0.0  # sum w^2 / K_g, w^2 / P_g, w^2 / (K_g P_g), w = K_g / K
    for pat in dict.fromkeys(pattern):
        block = x[[i for i, q in enumerate(pattern) if q == pat]][:, np.array(pat)]
        kg, pg = block.shape
        grand = block.mean()
        rm, cm = block.mean(axis=1), block.mean(axis=0)
        ss["run"] += pg * ((rm - grand) ** 2).sum()
        ss["pat"] += kg * ((cm - grand) ** 2).sum()
        ss["err"] += ((block - rm[:, None] - cm[None, :] + grand) ** 2).sum()
        dof["run"] += kg - 1
        dof["pat"] += pg - 1
        dof["err"] += (kg - 1) * (pg - 1)
        a_coef += (kg - 1) * pg
        b_coef += (pg - 1) * kg
        w = kg / n_runs
        alpha += w * w / kg
        beta += w * w / pg
        gamma += w * w / (kg * pg)
    ms = {k: ss[k] / dof[k] if dof[k] else math.nan for k in ss}
    mse = ms["err"] if dof["err"] else 0.0
    # V = c_run MS_run + c_pat MS_pat + c_err MS_err, each component clamped at 0
    coef = {"run": 0.0, "pat": 0.0, "err": gamma}
    if dof["run"] and ms["run"] > mse:
        coef["run"] = alpha * dof["run"] / a_coef
        coef["err"] -= coef["run"]
    if dof["pat"] and ms["pat"] > mse:
        coef["pat"] = beta * dof["pat"] / b_coef
        coef["err"] -= coef["pat"]
    if not dof["err"] or coef["err"] < 0:
        coef["err"] = 0.0  # a negative term makes Satterthwaite's df liberal: leave it out (conservative)
    var = sum(coef[k] * (ms[k] if dof[k] else 0.0) for k in coef)
    denom = sum((coef[k] * ms[k]) ** 2 / dof[k] for k in coef if dof[k] and coef[k])
    df = var * var / denom if denom > 0 else (math.inf if var == 0 and any(dof.values()) else math.nan)
    if coef["run"] > 0 and coef["run"] * ms["run"] >= run_share_cap * var:
        df = min(df, float(dof["run"]))  # the run (seed) part carries the variance: not above the runs' df
    seeds = n_runs >= 2
    if seeds:  # never below what the spread of the run means alone says
        means = np.array([np.nanmean(r) for r in x])
        between = float(means.var(ddof=1)) / n_runs
        if between > var:
            var, df = between, float(n_runs - 1)
    return Variance(float(max(var, 0.0)), float(df), seeds)


def _t_quantile(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, df)) if math.isfinite(df) else 1.959963984540054


def t_p_value(mean: float, v: Variance) -> float:
    """Two-sided p of ``mean / sqrt(var)`` against Student's t with ``v.df`` degrees of freedom."""
    from scipy.stats import t

    if not (math.isfinite(mean) and math.isfinite(v.var)) or not v.df > 0:
        return math.nan
    if v.var == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * t.sf(abs(mean) / math.sqrt(v.var), v.df))


def interval(mean: float, v: Variance) -> tuple[float, float]:
    if not (math.isfinite(mean) and math.isfinite(v.var)) or not v.df > 0:
        return math.nan, math.nan
    half = _t_quantile(v.df) * math.sqrt(v.var)
    return mean - half, mean + half


# ----------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """One cell's statistic with its interval."""

    mean: float  # mean over runs of T_k
    ci: tuple[float, float]
    n_runs: int
    n_patients: int
    seeds_estimated: bool  # False: one run, the interval covers patients only


def estimate(cell: Cell) -> Estimate | None:
    t = run_values(cell)
    ok = np.isfinite(t)
    if not ok.any():
        return None
    psi = patient_values(cell)[ok]
    mean = float(t[ok].mean())
    v = crossed_variance(psi)
    return Estimate(mean, interval(mean, v), int(ok.sum()), int(np.isfinite(psi).any(axis=0).sum()),
                    v.seeds_estimated)


@dataclass(frozen=True)
class Comparison:
    """Method minus reference (module docstring, "Paired")."""

    mean: float  # mean over paired runs of T_k(method) - T_k(reference)
    ci: tuple[float, float]
    p: float  # t-test with seed and patient variance; NaN when not tested
    p_wilcoxon: float  # secondary: Wilcoxon signed-rank over patients (seed-averaged differences)
    n_runs: int  # paired (seed, split seed) runs
    n_patients: int
    tested: bool = True
    why_not: str = ""  # why it was not tested

    def flipped(self) -> "Comparison":
        """Reference minus method."""
        return Comparison(-self.mean, (-self.ci[1], -self.ci[0]), self.p, self.p_wilcoxon, self.n_runs,
                          self.n_patients, self.tested, self.why_not)


def compare(method: Cell, reference: Cell, min_runs: int = MIN_RUNS,
            run_share_cap: float = RUN_SHARE_CAP) -> Comparison | None:
    """Paired ``method - reference``; None when they share no run with a defined statistic."""
    ta, tb = run_values(method), run_values(reference)
    ia = {r: i for i, r in enumerate(method.runs) if math.isfinite(ta[i])}
    ib = {r: i for i, r in enumerate(reference.runs) if math.isfinite(tb[i])}
    runs = [r for r in method.runs if r in ia and r in ib]
    if not runs:
        return None
    pa, pb = patient_values(method), patient_values(reference)
    patients = sorted(set(method.patients) | set(reference.patients))
    col_a = {p: j for j, p in enumerate(method.patients)}
    col_b = {p: j for j, p in enumerate(reference.patients)}
    diff = np.full((len(runs), len(patients)), np.nan)
    for i, r in enumerate(runs):
        for j, p in enumerate(patients):
            if p in col_a and p in col_b:
                diff[i, j] = pa[ia[r], col_a[p]] - pb[ib[r], col_b[p]]
    deltas = np.array([ta[ia[r]] - tb[ib[r]] for r in runs])
    mean = float(deltas.mean())
    v = crossed_variance(diff, run_share_cap)
    seen = np.isfinite(diff)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_patient = np.where(seen, diff, 0.0).sum(axis=0) / seen.sum(axis=0)
    n_pat = int(seen.any(axis=0).sum())
    p_w = wilcoxon_p(per_patient)
    ci = interval(mean, v)
    if len(runs) < min_runs:
        return Comparison(mean, ci, math.nan, p_w, len(runs), n_pat, False,
                          f"{len(runs)} paired run(s) < {min_runs}")
    return Comparison(mean, ci, t_p_value(mean, v), p_w, len(runs), n_pat)


# ----------------------------------------------------------------------------- tests


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


def favours(mean: float, higher_is_better: bool) -> bool:
    return mean > 0 if higher_is_better else mean < 0


def bold(result: Comparison | None, p_holm: float, higher_is_better: bool) -> bool:
    """The bold rule: tested, Holm-adjusted p below ``ALPHA`` and the difference in its favour."""
    return (result is not None and result.tested and p_holm < ALPHA
            and favours(result.mean, higher_is_better))
