"""Statistics in `ssl-bench table` from per-case CSVs written into real run dirs.

Store (dataset tiny-test: classes ring and core; 10 test cases; 3 seeds; protocol field):
    unet-l   dice = BASE[case] + 0.01 * seed          asd = 2.0 + 0.1 * case + 0.1 * seed
    mt       unet-l + 0.05 dice, - 0.5 asd            (both classes)
    action   = mt on ring; mt + 0.03 dice, - 0.2 asd on core
Every paired difference is a constant, so every Wilcoxon p is the exact 2 / 2^10 (10 cases all
one way) or 1 (identical). Protocol equal: unet-l and mt, one seed, 6 cases, mt better on every
case: raw p = 2 / 2^6 = 0.03125 per column, which Holm (3 columns) lifts to 0.094: no bold.
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
    assert "Holm-corrected over the 4 comparison(s) of this table, alpha = 0.05; 3 paired run(s)" in md
    assert "and 10 test case(s) per comparison." in md
    assert "Std covers initialisation seeds; n = number of runs" in md
    tex = tbl.render(tbl.main_tables(tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="field"),
                                     "best"), "latex")
    assert r"\textbf{76.5$\pm$1.0}" in tex


def test_holm_removes_marks_that_one_test_alone_would_give(store):
    _, uri = store
    md = main_md(uri, "equal")
    assert "**" not in "\n".join(rows_of(md).values())  # raw p = 0.03125 per column, 3 columns
    assert "Holm-corrected over the 3 comparison(s)" in md and "1 paired run(s)" in md and "6 test case(s)" in md
    from ssl_bench.stats import holm

    assert holm([2 / 64] * 3) == pytest.approx([0.09375] * 3)  # each above 0.05


def test_confidence_intervals_in_cells_and_csv(store):
    _, uri = store
    runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="field")
    tables = tbl.main_tables(runs, "best", ci=True)
    md = tbl.render(tables, "md")
    # UNet-L ring: values BASE + 0.01 seed, seed means 69.0/70.0/71.0; the interval lies inside the case range
    ring = rows_of(md)["UNet-L"].split("|")[3]
    assert ring.strip().startswith("70.0±1.0 [") and "95 % bootstrap confidence interval" in md
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
    # 12 p-values: 10 of 2/2^10 (constant shifts), 2 of 1 (ACTION = MT on ring); Holm: 12 * 2/2^10
    assert sorted(df["p"].round(8)) == [round(P10, 8)] * 10 + [1.0, 1.0]
    small = df[df["p"] < 1]
    assert small["p_holm"].to_numpy() == pytest.approx(12 * P10)
    assert (df.loc[df["p"] == 1, "p_holm"] == 1.0).all()
    unet = df[(df["method"] == "unet-l") & (df["class"] == "ring") & (df["metric"] == "dice")].iloc[0]
    assert unet["delta_mean"] == pytest.approx(-5.0) and unet["delta_ci_low"] == pytest.approx(-5.0)
    assert unet["n_runs"] == 3 and unet["n_cases"] == 10
    same = df[(df["method"] == "action") & (df["class"] == "ring") & (df["metric"] == "dice")].iloc[0]
    assert same["delta_mean"] == 0.0 and same["p_holm"] == 1.0
    md = tbl.render_md(t)
    assert "**-5.0 [-5.0, -5.0] p=0.023 (n=3x10)**" in md  # significant after Holm: bold
    assert "+0.0 [+0.0, +0.0] p=1 (n=3x10)" in md and "**+0.0" not in md
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
    assert not cases.missing and len(cases.frame) == 2 * 6 * 3  # ring, core and mean rows
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
