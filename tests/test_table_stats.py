"""Statistics in `ssl-bench table` from per-case CSVs written into real run dirs.

Store (dataset tiny-test: classes ring and core; 10 test cases; 3 seeds; protocol field):
    unet-l   dice = BASE[case] + 0.01 * seed          asd = 2.0 + 0.1 * case + 0.1 * seed
    mt       unet-l + 0.05 dice, - 0.5 asd            (both classes)
    action   = mt on ring; mt + 0.03 dice, - 0.2 asd on core
Every paired difference is a constant, so every test has zero variance: p = 0 for a shift, 1
for identical cells. Protocol equal: unet-l and mt, one seed, 6 cases (one run: not tested
unless --min-runs 1).
"""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_bench import table as tbl
from ssl_bench.metrics import METRICS
from ssl_bench.table.cases import load_cases
from ssl_bench.tracking import RunTracker

BASE = np.linspace(0.6, 0.78, 10)
P10 = 2 / 2 ** 10


def case_values(method: str, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    dice = BASE + 0.01 * seed
    asd = 2.0 + 0.1 * np.arange(10) + 0.1 * seed
    if method == "unet-l":
        return {"ring": (dice, asd), "core": (dice, asd)}
    mt = {"ring": (dice + 0.05, asd - 0.5), "core": (dice + 0.05, asd - 0.5)}
    if method == "mt":
        return mt
    return {"ring": mt["ring"], "core": (mt["core"][0] + 0.03, mt["core"][1] - 0.2)}


def add_case_run(root: Path, uri: str, method: str, seed: int, per_class: dict, protocol: str = "field",
                 split_seed: int = 0, split: str = "random") -> RunTracker:
    """A finished run with test_best_per_case.csv and the MLflow means computed from it."""
    name = f"{protocol}-{method}-{seed}-{split_seed}"
    t = RunTracker(root / name, uri, "ssl-bench/tiny-test", name,
                   {"method": method, "dataset": "tiny-test", "setting": "2 labeled", "seed": seed,
                    "split_seed": split_seed, "split": split, "protocol": protocol, "protocol_version": "1"}, {})
    t.start()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "class", "rule", "pred_voxels", "label_voxels", *METRICS])
    metrics = {}
    for cls, (dice, asd) in per_class.items():
        for i, (d, a) in enumerate(zip(dice, asd)):
            w.writerow([f"case{i:02d}", cls, "both_present", 10, 10,
                        *[repr(float(d)) if m == "dice" else repr(float(a)) if m == "asd_vox" else "" for m in METRICS]])
        metrics |= {f"test/best/dice/{cls}": float(np.mean(dice)), f"test/best/asd_vox/{cls}": float(np.mean(asd))}
    metrics["test/best/dice/mean"] = float(np.mean([np.mean(d) for d, _ in per_class.values()]))
    metrics["test/best/asd_vox/mean"] = float(np.mean([np.mean(a) for _, a in per_class.values()]))
    (root / name / "test_best_per_case.csv").write_text(buf.getvalue())
    t.log_final(metrics)
    t.set_status("finished")
    return t


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template_db):
    root = tmp_path_factory.mktemp("results")
    shutil.copyfile(mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for method in ("unet-l", "mt", "action"):
        for seed in range(3):
            add_case_run(root, uri, method, seed, case_values(method, seed))
    six = np.linspace(0.5, 0.75, 6)
    gain = np.linspace(0.01, 0.06, 6)
    flat = np.full(6, 3.0)
    add_case_run(root, uri, "unet-l", 0, {"ring": (six, flat), "core": (six, flat)}, protocol="equal")
    add_case_run(root, uri, "mt", 0, {"ring": (six + gain, flat), "core": (six + gain, flat)}, protocol="equal")
    # labeled sets drawn by split seeds 1 and 2 (seed 0): the std covers labeled sets
    for k in (1, 2):
        add_case_run(root, uri, "mt", 0, {"ring": (six, flat), "core": (six, flat)}, protocol="paper", split_seed=k)
    return root, uri


def main_md(uri: str, protocol: str, **kw) -> str:
    runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol=protocol)
    return tbl.render(tbl.main_tables(runs, "best", **kw), "md")


def rows_of(md: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}


def test_bold_only_where_the_best_beats_the_runner_up_significantly(store):
    _, uri = store
    md = main_md(uri, "field")
    rows = rows_of(md)
    # Average: ACTION 1.5 points above MT on every case (76.5 = (75 + 78) / 2); ring: ACTION = MT
    # (a tie, no bold); core: ACTION 3 points above MT on every case
    assert rows["ACTION"] == ("| ACTION | **76.5±1.0** / **1.95±0.10** (n=3) | 75.0±1.0 / 2.05±0.10 (n=3) "
                              "| **78.0±1.0** / **1.85±0.10** (n=3) |")
    assert "**" not in rows["MT"] and "**" not in rows["UNet-L"]
    # one family with the paired table against UNet-L: 4 best-vs-runner-up tests (Average and core,
    # DSC and ASD; ring is a tie) + MT and ACTION vs UNet-L in 3 columns x 2 metrics = 16
    assert "Holm-corrected over the 16 test(s) run for this table and its paired table against UNet-L" in md
    assert "n = runs x patients per comparison: 3 x 10." in md
    alone = main_md(uri, "field", compare_to="none")
    assert "Holm-corrected over the 4 test(s) run for this table, alpha" in alone
    assert "Std covers initialisation seeds; n = number of runs" in md
    tex = tbl.render(tbl.main_tables(tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="field"),
                                     "best"), "latex")
    assert r"\textbf{76.5$\pm$1.0}" in tex


def test_one_run_is_not_tested_and_the_cell_says_why(store):
    _, uri = store
    md = main_md(uri, "equal")
    assert "**" not in "\n".join(rows_of(md).values())
    assert rows_of(md)["MT"].count("(not tested: 1 paired run(s) < 3)") == 3  # DSC of 3 columns; ASD is a tie
    assert "Holm-corrected over the 0 test(s)" in md
    assert "3 best mean(s) not tested (no bold): 1 paired run(s) < 3, said in the cell." in md
    # --min-runs 1 tests them (patients only): the 3 DSC comparisons of MT vs UNet-L are the same
    # tests in the main and the paired table (counted once), plus 3 ASD ones (identical: p = 1)
    md1 = main_md(uri, "equal", min_runs=1)
    assert "Holm-corrected over the 6 test(s) run for this table and its paired table" in md1
    assert "Holm-corrected over the 3 test(s) run for this table," in main_md(uri, "equal", min_runs=1,
                                                                            compare_to="none")


def test_confidence_intervals_in_cells_and_csv(store):
    _, uri = store
    runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="field")
    tables = tbl.main_tables(runs, "best", ci=True)
    md = tbl.render(tables, "md")
    # UNet-L ring: values BASE + 0.01 seed, seed means 69.0/70.0/71.0; the interval lies inside the case range
    ring = rows_of(md)["UNet-L"].split("|")[3]
    # hand: psi = BASE + 0.01 seed (additive, no error): MS_run = 10 * 2e-4 / 2 = 0.001, MS_patient =
    # 3 * var(BASE) = 3 * 0.02^2 * 110 / 12 = 0.011, Var = 0.012 / 30 = 4e-4; the run term is 1/12 of it,
    # so Satterthwaite's df stand: 0.012^2 / (0.001^2 / 2 + 0.011^2 / 9) = 10.33, t = 2.221:
    # 70.0 -+ 2.221 * 2.0 = [65.6, 74.4] (capped at the runs' 2 df it would be [61.4, 78.6])
    assert ring.strip().startswith("70.0±1.0 [65.6, 74.4] / 2.55±0.10 [") and "95 % confidence interval" in md
    df = pd.read_csv(io.StringIO(tbl.render(tables, "csv")))
    r = df[(df["method"] == "unet-l") & (df["class"] == "ring")].iloc[0]
    assert 60.0 < r["dsc_ci_low_percent"] < 70.0 < r["dsc_ci_high_percent"] < 80.0
    assert r["asd_ci_low_voxel"] < 2.55 < r["asd_ci_high_voxel"]


def test_compare_to_pairs_cases_and_holm_corrects_the_table(store):
    _, uri = store
    runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="field")
    (t,) = tbl.paired_tables(runs, "best", "mt")
    df = pd.read_csv(io.StringIO(tbl.render([t], "csv")))
    assert set(df["method"]) == {"unet-l", "action"} and set(df["reference"]) == {"mt"}
    # 12 p-values: 10 constant shifts (zero variance: p ~ 0), 2 identical (ACTION = MT on ring: p = 1)
    assert (df["p"] < 1e-12).sum() == 10 and (df["p"] == 1.0).sum() == 2
    assert (df.loc[df["p"] == 1, "p_holm"] == 1.0).all() and df["tested"].all()
    unet = df[(df["method"] == "unet-l") & (df["class"] == "ring") & (df["metric"] == "dice")].iloc[0]
    assert unet["delta_mean"] == pytest.approx(-5.0) and unet["delta_ci_low"] == pytest.approx(-5.0)
    assert unet["n_runs"] == 3 and unet["n_patients"] == 10
    same = df[(df["method"] == "action") & (df["class"] == "ring") & (df["metric"] == "dice")].iloc[0]
    assert same["delta_mean"] == 0.0 and same["p_holm"] == 1.0
    md = tbl.render_md(t)
    assert "**-5.0 [-5.0, -5.0] p=0 (n=3x10)**" in md  # significant after Holm: bold
    assert "+0.0 [+0.0, +0.0] p=1 (n=3x10)" in md and "**+0.0" not in md
    # the family: 4 best-vs-runner-up tests (ACTION vs MT: Average and core, DSC and ASD) + 12 against MT,
    # of which those 4 are the same tests: 12
    assert "Holm-corrected over the 12 test(s) run for this table and its paired table against MT" in md
    # the default reference is UNet-L
    (default,) = tbl.paired_tables(runs, "best")
    assert "against UNet-L" in default.title


def test_std_says_when_it_covers_labeled_sets(store):
    _, uri = store
    md = main_md(uri, "paper")
    assert "Std covers labeled sets (split seeds); n = number of runs" in md


def test_moved_run_dirs_are_found_under_the_results_root(store, tmp_path):
    root, uri = store
    runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="equal")
    copy = tmp_path / "copied-off-a-cluster"
    for d in runs["run_dir"]:
        shutil.copytree(d, copy / Path(d).name)
    moved = runs.assign(run_dir=[str(tmp_path / "gone" / Path(d).name) for d in runs["run_dir"]])
    cases = load_cases(moved, {"unet-l": "best", "mt": "best"}, copy)
    assert not cases.missing and len(cases.frame) == 2 * 6 * 2  # ring and core rows of 6 cases, 2 runs
    lost = load_cases(moved, {"unet-l": "best", "mt": "best"}, tmp_path / "elsewhere")
    assert sorted(lost.missing) == sorted(runs["run_id"]) and lost.frame.empty


def test_cli_ci_and_compare_to(store):
    from typer.testing import CliRunner

    from ssl_bench.cli import app

    root, uri = store
    runner = CliRunner()
    args = ["table", "--tracking-uri", uri, "--results-root", str(root), "--dataset", "tiny-test",
            "--protocol", "field", "--format", "md"]
    res = runner.invoke(app, [*args, "--ci"])
    assert res.exit_code == 0, res.output
    assert "paired differences against UNet-L" in res.output and "±1.0 [" in res.output
    res = runner.invoke(app, [*args, "--compare-to", "none"])
    assert res.exit_code == 0 and "paired differences" not in res.output
    res = runner.invoke(app, [*args, "--compare-to", "nope"])
    assert res.exit_code == 1 and "--compare-to nope" in res.output and "action, mt, unet-l, or none" in res.output


def test_random_split_runs_are_their_own_setting():
    df = pd.DataFrame([
        {"method": "mt", "dataset": "acdc", "setting": "3 labeled", "seed": "0", "split_seed": "0",
         "split": "field", "end_time": 1},
        {"method": "mt", "dataset": "acdc", "setting": "3 labeled", "seed": "0", "split_seed": "0",
         "split": "random", "end_time": 2},
        {"method": "mt", "dataset": "acdc-phantom", "setting": "3 labeled", "seed": "0", "split_seed": "0",
         "split": "random", "end_time": 3},
    ])
    kept = tbl.select_runs(df)
    assert sorted(zip(kept["dataset"], kept["setting"])) == [
        ("acdc", "3 labeled"), ("acdc", "3 labeled (random split)"), ("acdc-phantom", "3 labeled")]


# --- a LiTS-like store: class "core" absent from cases 6-9; UNet-F; a run without per-case CSV ---------

def core_values(method: str, seed: int) -> tuple[list[float], list[float]]:
    """core: present in cases 0-5 (UNet-L 0.5 + 0.01 case + 0.01 seed, MT + 0.1, UNet-F + 0.3); absent
    in 6-9, where MT predicts a core in 6 and 7 (label_empty: DSC 0, ASD 50) and everyone else nothing
    (both_empty: NaN)."""
    add = {"unet-l": 0.0, "mt": 0.1, "unet-f": 0.3}[method]
    dice = [0.5 + 0.01 * i + 0.01 * seed + add for i in range(6)] + [np.nan] * 4
    asd = [2.0 - add] * 6 + [np.nan] * 4
    if method == "mt":
        dice[6] = dice[7] = 0.0
        asd[6] = asd[7] = 50.0
    return dice, asd


def add_lits_run(root: Path, uri: str, method: str, seed: int, with_csv: bool = True) -> None:
    name = f"lits-{method}-{seed}"
    t = RunTracker(root / name, uri, "ssl-bench/tiny-test", name,
                   {"method": method, "dataset": "tiny-test", "setting": "2 labeled", "seed": seed, "split_seed": 0,
                    "split": "random", "protocol": "field", "protocol_version": "1"}, {})
    t.start()
    ring = {"unet-l": 0.0, "mt": 0.05, "unet-f": 0.2}[method]
    classes = {"ring": (list(BASE + ring + 0.01 * seed), [2.0] * 10), "core": core_values(method, seed)}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "class", "rule", "pred_voxels", "label_voxels", *METRICS])
    metrics = {}
    for cls, (dice, asd) in classes.items():
        for i, (d, a) in enumerate(zip(dice, asd)):
            rule = "both_empty" if np.isnan(d) else "label_empty" if d == 0 else "both_present"
            w.writerow([f"case{i:02d}", cls, rule, 10, 10,
                        *["" if np.isnan(d) else repr(float(d)) if m == "dice" else "" if np.isnan(a)
                          else repr(float(a)) if m == "asd_vox" else "" for m in METRICS]])
        metrics |= {f"test/best/dice/{cls}": float(np.nanmean(dice)), f"test/best/asd_vox/{cls}": float(np.nanmean(asd))}
    # metrics.aggregate: Average = mean over classes of the class means
    metrics["test/best/dice/mean"] = (metrics["test/best/dice/ring"] + metrics["test/best/dice/core"]) / 2
    metrics["test/best/asd_vox/mean"] = (metrics["test/best/asd_vox/ring"] + metrics["test/best/asd_vox/core"]) / 2
    if with_csv:
        (root / name / "test_best_per_case.csv").write_text(buf.getvalue())
    t.log_final(metrics)
    t.set_status("finished")


@pytest.fixture(scope="module")
def lits_store(tmp_path_factory, mlflow_template_db):
    root = tmp_path_factory.mktemp("lits-results")
    shutil.copyfile(mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for method in ("unet-l", "mt", "unet-f"):
        for seed in range(3):
            add_lits_run(root, uri, method, seed)
    add_lits_run(root, uri, "unet-f", 3, with_csv=False)
    return root, uri


def lits_tables(uri, root, **kw):
    runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="field")
    warned = []
    main = tbl.main_tables(runs, "best", warn=warned.append, results_root=root, **kw)
    return main, tbl.paired_tables(runs, "best", results_root=root), warned


def test_false_positive_core_is_kept_and_penalised_in_the_pair(lits_store):
    root, uri = lits_store
    _, (paired,), _ = lits_tables(uri, root)
    df = pd.DataFrame(paired.records)
    core = df[(df["method"] == "mt") & (df["class"] == "core") & (df["metric"] == "dice")].iloc[0]
    # seed s: MT (sum of 0.6 + 0.01 i + 0.01 s over i < 6, + 0 + 0) / 8 = 0.46875 + 0.0075 s; UNet-L
    # 0.525 + 0.01 s: Δ = -0.05625 - 0.0025 s, mean -5.875 points; nothing dropped: 10 patients
    assert core["delta_mean"] == pytest.approx(-5.875) and core["n_patients"] == 10 and core["n_runs"] == 3
    asd = df[(df["method"] == "mt") & (df["class"] == "core") & (df["metric"] == "asd_vox")].iloc[0]
    # MT (6 * 1.9 + 100) / 8 = 13.925, UNet-L 2.0
    assert asd["delta_mean"] == pytest.approx(13.925 - 2.0)


def test_lits_like_average_mean_and_interval_agree(lits_store):
    root, uri = lits_store
    (main,), _, _ = lits_tables(uri, root, ci=True)
    rec = {r["method"]: r for r in main.records if r["class"] == "mean"}
    for m in ("unet-l", "mt"):  # every run has its per-case results: the interval is around the shown mean
        r = rec[m]
        assert (r["dsc_ci_low_percent"] + r["dsc_ci_high_percent"]) / 2 == pytest.approx(r["dsc_mean_percent"])
        assert (r["asd_ci_low_voxel"] + r["asd_ci_high_voxel"]) / 2 == pytest.approx(r["asd_mean_voxel"])
    # MT Average DSC, class-first: ring mean(BASE) + 0.05 + 0.01 s = 0.74 + 0.01 s, core 0.46875 + 0.0075 s;
    # over seeds 0-2: (0.75 + 0.47625) / 2 = 61.3125 % (case-first would give another number)
    assert rec["mt"]["dsc_mean_percent"] == pytest.approx(100 * (0.75 + 0.47625) / 2)


def test_unet_f_is_a_reference_row_and_never_bold(lits_store):
    root, uri = lits_store
    (main,), _, _ = lits_tables(uri, root)
    md = tbl.render_md(main)
    rows = rows_of(md)
    assert "**" not in rows["UNet-F"]  # best everywhere, but it does not compete
    # ring: MT beats UNet-L by 5 points on every patient and seed: bold among the competing rows
    assert rows["MT"].split("|")[3].strip().startswith("**75.0±1.0** / 2.00")  # mean(BASE) 0.69 + 0.05 + 0.01
    assert "reference rows (UNet-F) are not ranked and never bold" in md
    flags = {(r["method"], r["class"]): r["dsc_best"] for r in main.records}
    assert not any(v for (m, _), v in flags.items() if m == "unet-f") and flags["mt", "ring"]
    assert all(r["reference_row"] == (r["method"] == "unet-f") for r in main.records)


def test_a_method_a_protocol_lists_in_bounds_is_a_reference_row(lits_store, monkeypatch):
    """A protocol's ``bounds`` makes a row a reference row like UNet-F: MT, bold above, is then
    printed without bold and never ranked; the fingerprint (what runs train with) is unchanged."""
    import dataclasses

    from ssl_bench.protocols import PROTOCOLS

    root, uri = lits_store
    ptag = tbl.select_runs(tbl.load_runs(uri))["protocol_tag"].iloc[0]
    name = str(ptag).rpartition("-v")[0]
    marked = dataclasses.replace(PROTOCOLS[name], bounds=("mt",))
    assert marked.fingerprint() == PROTOCOLS[name].fingerprint()
    monkeypatch.setitem(PROTOCOLS, name, marked)
    (main,), _, _ = lits_tables(uri, root)
    md = tbl.render_md(main)
    assert "**" not in rows_of(md)["MT"] and "**" not in rows_of(md)["UNet-F"]
    assert "reference rows (UNet-F, MT) are not ranked and never bold" in md \
        or "reference rows (MT, UNet-F) are not ranked and never bold" in md
    assert all(r["reference_row"] == (r["method"] in ("unet-f", "mt")) for r in main.records)


def test_missing_per_case_csv_is_named_in_a_warning_and_the_footnote(lits_store):
    root, uri = lits_store
    (main,), (paired,), warned = lits_tables(uri, root)
    name = "UNet-F 2 labeled seed 3 split 0"
    assert len(warned) == 1 and name in warned[0] and "1 run(s)" in warned[0]
    assert any(name in line and "missing for 1 run(s)" in line for line in main.footnote)
    assert any(name in line for line in paired.footnote)
    # n shows what entered: UNet-F vs UNet-L paired on the 3 runs with per-case results
    df = pd.DataFrame(paired.records)
    assert set(df.loc[df["method"] == "unet-f", "n_runs"]) == {3}
    assert "(n=4)" in rows_of(tbl.render_md(main))["UNet-F"]  # the shown mean: all 4 runs (MLflow)
