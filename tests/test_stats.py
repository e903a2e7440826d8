"""ssl_bench.stats against hand-computed values on tiny tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ssl_bench import stats


def test_holm_matches_the_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not part of the family (m = 2) and stays NaN; adjusted values are capped at 1
    out = stats.holm([0.2, math.nan, 0.5])
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    # two raw p-values below 0.05 that Holm does not keep below it
    assert stats.holm([0.03125, 0.03125]) == pytest.approx([0.0625, 0.0625])


def test_wilcoxon_exact_p_values():
    # n = 6, all positive: W- = 0, P = 2 * 1/2^6
    assert stats.wilcoxon_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    # rank 2 negative: W- = 2; subsets of {1..6} with sum <= 2: {}, {1}, {2} -> 2 * 3/64
    assert stats.wilcoxon_p([1, -2, 3, 4, 5, 6]) == pytest.approx(6 / 64)
    assert stats.wilcoxon_p([0, 1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)  # zeros dropped
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # identical: no evidence
    assert math.isnan(stats.wilcoxon_p([math.nan]))


def test_matrix_mean_is_the_mean_of_run_means():
    assert stats.matrix_mean(np.array([[1.0, np.nan], [3.0, 5.0]])) == pytest.approx(2.5)
    assert math.isnan(stats.matrix_mean(np.full((2, 2), np.nan)))


def test_bootstrap_ci_hand_cases():
    # one run, cases 0 and 1: replicate means 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    assert stats.bootstrap_ci(np.array([[0.0, 1.0]])) == (0.0, 1.0)
    assert stats.bootstrap_ci(np.full((3, 4), 0.7)) == pytest.approx((0.7, 0.7))
    # seeds that differ by a constant: only the run draw moves the mean (0, 0.5, 1), so the
    # interval is (0, 1); a bootstrap over cases alone would say (0.5, 0.5)
    assert stats.bootstrap_ci(np.array([[0.0] * 5, [1.0] * 5])) == (0.0, 1.0)
    # one run of 400 normal cases: close to the normal interval mean +- 1.96 sd / sqrt(n)
    x = np.random.default_rng(1).normal(0.0, 1.0, 400)
    lo, hi = stats.bootstrap_ci(x[None, :])
    half = 1.96 * x.std(ddof=1) / 20
    assert lo == pytest.approx(x.mean() - half, abs=0.02) and hi == pytest.approx(x.mean() + half, abs=0.02)


def long(values: dict[tuple[str, str], list[float]], cases: list[str]) -> pd.DataFrame:
    """{(seed, split_seed): per-case values} -> the long per-case frame."""
    return pd.DataFrame([{"seed": s, "split_seed": k, "case_id": c, "dice": v}
                         for (s, k), vals in values.items() for c, v in zip(cases, vals)])


def test_paired_differences_pair_case_seed_and_split():
    ref = long({("0", "0"): [0.5, 0.5, 0.5], ("1", "0"): [0.4, 0.6, 0.5],
                ("2", "0"): [0.9, 0.9, 0.9]}, ["a", "b", "c"])  # seed 2: no partner, left out
    # differences: seed 0 [0.1, 0.2, -0.1], seed 1 [0.3, 0.0, 0.1]; case d has no partner
    method = long({("0", "0"): [0.6, 0.7, 0.4, 0.0], ("1", "0"): [0.7, 0.6, 0.6, 0.0]}, ["a", "b", "c", "d"])
    r = stats.paired(method, ref, "dice")
    assert r.n_runs == 2 and r.n_cases == 3
    assert r.mean == pytest.approx((0.2 / 3 + 0.4 / 3) / 2)  # mean over seeds of each seed's mean
    # per case, averaged over seeds: [0.2, 0.1, 0.0]; the zero is dropped: n = 2, both positive
    assert r.p == pytest.approx(2 * 1 / 4)


def test_known_shift_is_significant_identical_is_not():
    rng = np.random.default_rng(0)
    cases = [f"case{i:02d}" for i in range(12)]
    base = {(str(s), "0"): list(rng.uniform(0.5, 0.9, 12)) for s in range(3)}
    shifted = {k: [v + 0.05 for v in vals] for k, vals in base.items()}
    r = stats.paired(long(shifted, cases), long(base, cases), "dice")
    assert r.mean == pytest.approx(0.05)
    assert r.ci == pytest.approx((0.05, 0.05))
    assert r.p == pytest.approx(2 / 2 ** 12)  # every case better: the smallest exact p for n = 12
    same = stats.paired(long(base, cases), long(base, cases), "dice")
    assert same.mean == 0.0 and same.p == 1.0 and same.ci == (0.0, 0.0)
    # a noisy shift: the interval covers the true shift and excludes 0
    noisy = {k: [v + 0.05 + e for v, e in zip(vals, rng.normal(0, 0.01, 12))] for k, vals in base.items()}
    r = stats.paired(long(noisy, cases), long(base, cases), "dice")
    assert r.ci[0] < 0.05 < r.ci[1] and r.ci[0] > 0 and r.p < 0.001
    assert stats.paired(long(base, cases), long({("9", "9"): [0.1] * 12}, cases), "dice") is None
