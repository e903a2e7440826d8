"""ssl_bench.stats against hand-computed values on tiny tables, and the calibration of the bold
rule by simulation (``ssl_bench.bench.stats``)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ssl_bench import stats
from ssl_bench.datasets.base import patient_of


def test_holm_matches_the_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not part of the family (m = 2) and stays NaN; adjusted values are capped at 1
    out = stats.holm([0.2, math.nan, 0.5])
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([0.03125, 0.03125]) == pytest.approx([0.0625, 0.0625])


def test_wilcoxon_exact_p_values():
    # n = 6, all positive: W- = 0, P = 2 * 1/2^6
    assert stats.wilcoxon_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    # rank 2 negative: W- = 2; subsets of {1..6} with sum <= 2: {}, {1}, {2} -> 2 * 3/64
    assert stats.wilcoxon_p([1, -2, 3, 4, 5, 6]) == pytest.approx(6 / 64)
    assert stats.wilcoxon_p([0, 1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)  # zeros dropped
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # identical: no evidence
    assert math.isnan(stats.wilcoxon_p([math.nan]))


def test_patient_of_groups_acdc_frames_and_keeps_one_volume_patients(tmp_path):
    assert patient_of("patient011_frame01") == patient_of("patient011_frame02") == "patient011"
    assert patient_of("lits-7") == "lits-7" and patient_of("BRATS_001") == "BRATS_001"
    assert patient_of("patient011") == "patient011"  # not a frame id: its own patient
    # the same grouping as the ACDC dataset's own index (SSL4MIS h5 layout, file names only)
    from ssl_bench.datasets.acdc import index_h5

    (tmp_path / "data").mkdir()
    for name in ("patient001_frame01", "patient001_frame02", "patient042_frame01", "patient042_frame02"):
        (tmp_path / "data" / f"{name}.h5").write_bytes(b"")
    sources = index_h5(tmp_path)
    assert len(sources) == 4 and all(patient_of(c) == s.patient_id for c, s in sources.items())


def frame(values: dict, cls: str = "c", value: str = "dice") -> pd.DataFrame:
    """{(seed, case_id): value} -> the long per-case frame (patient from the case id)."""
    return pd.DataFrame([{"seed": s, "split_seed": "0", "case_id": c, "patient": patient_of(c), "class": cls,
                          value: v} for (s, c), v in values.items()])


def test_ed_and_es_are_one_patient_n_counts_patients():
    # 3 patients x (ED, ES), 3 seeds; the patient's value is the mean of its two frames
    vals = {}
    for s in range(3):
        for p, (ed, es) in enumerate([(0.6, 0.8), (0.5, 0.7), (0.9, 0.9)]):
            vals[str(s), f"patient00{p}_frame01"] = ed + 0.01 * s
            vals[str(s), f"patient00{p}_frame02"] = es + 0.01 * s
    cell = stats.cell_of(frame(vals), "dice")
    assert cell.patients == ("patient000", "patient001", "patient002")
    psi = stats.patient_values(cell)
    assert psi[0] == pytest.approx([0.7, 0.6, 0.9]) and psi[2] == pytest.approx([0.72, 0.62, 0.92])
    e = stats.estimate(cell)
    assert e.n_runs == 3 and e.n_patients == 3 and e.mean == pytest.approx(2.2 / 3 + 0.01)
    ref = stats.cell_of(frame({k: v - 0.05 for k, v in vals.items()}), "dice")
    r = stats.compare(cell, ref)
    assert r.n_patients == 3 and r.n_runs == 3 and r.mean == pytest.approx(0.05)


def test_crossed_variance_hand_values():
    # x = a_run + b_patient, a = 0, 1, 2; b = 0, 3, 6: MS_run = 3 * 2 / 2 = 3, MS_patient = 3 * 18 / 2 = 27,
    # MS_error = 0: Var = (3 + 27) / (3 * 3) = 10/3; Satterthwaite df (30/9)^2 / ((3/9)^2/2 + (27/9)^2/2)
    # = 900/369 = 2.439; the run term is 1/10 of Var (< RUN_SHARE_CAP), so the df stand
    x = np.add.outer([0.0, 1.0, 2.0], [0.0, 3.0, 6.0])
    v = stats.crossed_variance(x)
    assert v.var == pytest.approx(10 / 3) and v.df == pytest.approx(900 / 369) and v.seeds_estimated
    lo, hi = stats.interval(4.0, v)
    # t(900/369 df, 0.975) = 3.63941 (scipy.stats.t.ppf)
    assert (lo + hi) / 2 == pytest.approx(4.0) and hi - 4.0 == pytest.approx(3.63941 * math.sqrt(10 / 3), rel=1e-5)
    # the rule before 2026-12-03 capped at the runs' 2 df whenever the run term entered
    assert stats.crossed_variance(x, run_share_cap=0.0).df == 2.0
    # transposed: the run term is 9/10 of Var (>= RUN_SHARE_CAP): capped at the runs' K - 1 = 2
    t = stats.crossed_variance(x.T)
    assert t.var == pytest.approx(10 / 3) and t.df == 2.0
    # runs with disjoint test sets (split seeds): blocks of one run each, so only the run means
    # speak for the seed spread: means 2 and 7, var 12.5 / 2 runs = 6.25 with 1 df (above the
    # patient part 0.25 * MS_patient 5 = 1.25)
    v = stats.crossed_variance(np.array([[1.0, 3.0, np.nan, np.nan], [np.nan, np.nan, 5.0, 9.0]]))
    assert v.var == pytest.approx(6.25) and v.df == 1.0
    one = stats.crossed_variance(np.array([[1.0, 3.0, 5.0]]))  # one run: patients only
    assert one.var == pytest.approx(4.0 / 3) and one.df == 2.0 and not one.seeds_estimated


def lits_cells():
    """4 one-volume patients, classes liver (everywhere) and tumour (in lits-1 and lits-2 only);
    3 seeds. Method A hallucinates a tumour in lits-3 (label_empty: DSC 0); the reference
    correctly predicts none there (both_empty: NaN, left out)."""
    rows_a, rows_b = [], []
    for s in range(3):
        for case, liver_a, liver_b, tum_a, tum_b in [("lits-1", 0.90, 0.90, 0.8, 0.8), ("lits-2", 0.80, 0.80, 0.6, 0.6),
                                                   ("lits-3", 0.90, 0.90, 0.0, math.nan),
                                                   ("lits-4", 0.95, 0.95, math.nan, math.nan)]:
            for rows, liver, tum in ((rows_a, liver_a, tum_a), (rows_b, liver_b, tum_b)):
                rows += [{"seed": str(s), "split_seed": "0", "case_id": case, "patient": case, "class": "liver",
                          "dice": liver + 0.01 * s},
                         {"seed": str(s), "split_seed": "0", "case_id": case, "patient": case, "class": "tumour",
                          "dice": tum}]
    return pd.DataFrame(rows_a), pd.DataFrame(rows_b)


def test_lits_like_average_is_the_shown_statistic_and_its_interval_is_around_it():
    a, _ = lits_cells()
    cell = stats.cell_of(a, "dice")
    # seed 0: liver (0.9 + 0.8 + 0.9 + 0.95) / 4 = 0.8875, tumour (0.8 + 0.6 + 0) / 3 = 0.4667;
    # Average = class-first (as metrics.aggregate and MLflow): (0.8875 + 0.4667) / 2 = 0.67708
    assert stats.run_values(cell)[0] == pytest.approx((0.8875 + 1.4 / 3) / 2)
    psi = stats.patient_values(cell)
    assert np.nanmean(psi, axis=1) == pytest.approx(stats.run_values(cell))  # psi carries the same statistic
    e = stats.estimate(cell)
    assert e.mean == pytest.approx((0.8875 + 0.01 + 1.4 / 3) / 2)
    assert e.ci[0] < e.mean < e.ci[1] and (e.ci[0] + e.ci[1]) / 2 == pytest.approx(e.mean)
    # the case-first mean of the old Average rows would be different: seed 0 (0.85 + 0.7 + 0.45 + 0.95) / 4
    assert abs(e.mean - 0.7375) > 0.05


def test_false_positive_tumour_is_kept_and_penalised():
    a, b = lits_cells()
    tum_a, tum_b = (x[x["class"] == "tumour"] for x in (a, b))
    r = stats.compare(stats.cell_of(tum_a, "dice"), stats.cell_of(tum_b, "dice"), min_runs=3)
    # A: (0.8 + 0.6 + 0) / 3 = 0.4667 (the false positive counts); reference: (0.8 + 0.6) / 2 = 0.7
    assert r.mean == pytest.approx(1.4 / 3 - 0.7) and r.n_patients == 4 and r.n_runs == 3
    # reference pseudo-values: 0.7 + (S - 0.7 N) / 0.5 = 0.9, 0.5, 0.7 (no information), 0.7
    psi_b = stats.patient_values(stats.cell_of(tum_b, "dice"))[0]
    assert psi_b == pytest.approx([0.9, 0.5, 0.7, 0.7])
    # the Average column pays for it too: the difference of the class-first means
    avg = stats.compare(stats.cell_of(a, "dice"), stats.cell_of(b, "dice"))
    assert avg.mean == pytest.approx((1.4 / 3 - 0.7) / 2)


def test_fewer_than_min_runs_is_not_tested_and_says_why():
    a, b = lits_cells()
    two_a, two_b = a[a["seed"] != "2"], b[b["seed"] != "2"]
    r = stats.compare(stats.cell_of(two_a, "dice"), stats.cell_of(two_b, "dice"))
    assert not r.tested and math.isnan(r.p) and r.why_not == "2 paired run(s) < 3"
    assert not stats.bold(r, 0.0, False)
    r = stats.compare(stats.cell_of(two_a, "dice"), stats.cell_of(two_b, "dice"), min_runs=2)
    assert r.tested and math.isfinite(r.p)


def test_identical_methods_and_a_constant_shift():
    a, _ = lits_cells()
    cell = stats.cell_of(a, "dice")
    same = stats.compare(cell, cell)
    assert same.mean == 0.0 and same.p == 1.0 and same.ci == (0.0, 0.0)
    shifted = stats.cell_of(a.assign(dice=a["dice"] + 0.05), "dice")
    r = stats.compare(shifted, cell)
    assert r.mean == pytest.approx(0.05) and r.p < 1e-12 and stats.bold(r, r.p, True)
    assert not stats.bold(r, r.p, False)  # lower is better (ASD): +0.05 does not favour it


def test_a_case_given_twice_is_an_error():
    df = frame({("0", "lits-1"): 0.5})
    with pytest.raises(ValueError, match="twice"):
        stats.cell_of(pd.concat([df, df]), "dice")


def test_calibration_bold_rate_under_the_null():
    """The issue's null: two identical methods, seed sd 3, patient sd 8, 20 patients x 2 volumes,
    3 seeds, 2000 simulated tables. The bold rule keeps its rate <= 0.06; the procedure before
    issue 17 (Wilcoxon on per-volume differences) bolds far more often."""
    from ssl_bench.bench.stats import Setting, rates

    s = Setting(n_patients=20, n_volumes=2, n_seeds=3, seed_sd=3.0, patient_sd=8.0)
    r = rates(s, shift=0.0, replicates=2000, seed=0)
    assert r["bold_rate"] <= 0.06
    assert r["legacy_bold_rate"] > 0.2


def test_calibration_where_the_patients_carry_the_variance():
    """Seed sd 1, method x patient sd 4, 3 seeds: Satterthwaite's df stand (the seed term is a
    small share), so the rule keeps its null rate <= 0.06 and finds a 4-Dice shift far more often
    than with the df always capped at the runs' 2 (measured 0.58 against 0.18 over 4000 tables)."""
    from ssl_bench.bench.stats import Setting, rates

    s = Setting(n_patients=20, n_volumes=2, n_seeds=3, seed_sd=1.0, patient_sd=8.0, inter_sd=4.0)
    null = rates(s, shift=0.0, replicates=2000, seed=0, legacy=False)
    assert null["bold_rate"] <= 0.06
    alt = rates(s, shift=4.0, replicates=500, seed=1, legacy=False)
    assert alt["bold_rate"] > 0.45 and alt["always_cap_bold_rate"] < 0.3


def test_bench_stats_grid_writes_one_line_per_mix_and_seed_count(tmp_path):
    from typer.testing import CliRunner

    from ssl_bench.bench.stats import MIXES
    from ssl_bench.cli import app

    res = CliRunner().invoke(app, ["bench", "stats", "--seeds", "3", "--replicates", "100", "--grid",
                                   "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "stats.json").read_text())
    assert [r["mix"] for r in rep["rows"]] == ["as set", *MIXES] and rep["run_share_cap"] == stats.RUN_SHARE_CAP
    md = (tmp_path / "stats.md").read_text()
    assert md.count("\n| ") == 1 + len(rep["rows"]) and "| seed-dominated (6, 1) | 3 |" in md  # header + rows
    # capping can only lower the df, so every table the always-capped rule marks the rule marks too
    for r in rep["rows"]:
        assert r["always_cap_false_positive_rate"] <= r["false_positive_rate"]
        assert r["always_cap_power"] <= r["power"]
