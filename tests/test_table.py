"""`ssl-bench table`: mean ± std over seeds, published block, ablation tables, CLI.

The runs of this store have no per-case results, so no cell is bold (bold needs a significance
test, ``test_table_stats.py``) and every footnote says why."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from ssl_bench import table as tbl
from ssl_bench.cli.table import table_command
from ssl_bench.tracking import RunTracker

# Known per-seed values (Dice as fractions, ASD in voxels), 2 methods x 2 seeds, "3 labeled".
#   mean:  MT 0.80/0.82 -> 81.0±1.4,  ACTION 0.86/0.88 -> 87.0±1.4 (best DSC)
#          MT 2.0/3.0   -> 2.50±0.71, ACTION 1.0/1.2   -> 1.10±0.14 (best ASD)
#   RV:    MT 0.70/0.72 -> 71.0±1.4 (best), ACTION 0.60/0.62 -> 61.0±1.4
#          MT 5.0/5.0   -> 5.00±0.00, ACTION 4.0/6.0 -> 5.00±1.41 (a tie: no comparison)
VALUES = {
    "mt": [{"mean": (0.80, 2.0), "RV": (0.70, 5.0)}, {"mean": (0.82, 3.0), "RV": (0.72, 5.0)}],
    "action": [{"mean": (0.86, 1.0), "RV": (0.60, 4.0)}, {"mean": (0.88, 1.2), "RV": (0.62, 6.0)}],
}


def add_run(root: Path, uri: str, method: str, seed: int, values: dict, dataset: str = "acdc",
            status: str = "finished", **tags) -> RunTracker:
    name = f"{method}-{tags.get('ablation', 'none')}-{tags.get('augment', '')}-{dataset}-{seed}"
    t = RunTracker(root / name, uri, f"ssl-bench/{dataset}", name,
                   {"method": method, "dataset": dataset, "setting": "3 labeled", "seed": seed,
                    "split_seed": 0, "git_commit": "abc", "protocol": "field", "protocol_version": "1",
                    **tags}, {"seed": seed})
    t.start()
    metrics = {}
    for cls, (dice, asd) in values.items():
        metrics.update({f"test/best/dice/{cls}": dice, f"test/best/asd_vox/{cls}": asd,
                        f"test/last/dice/{cls}": dice - 0.1, f"test/last/asd_vox/{cls}": asd + 1,
                        f"test/best/n/{cls}": 4})
    t.log_final(metrics)
    if status != "running":
        t.set_status(status)
    return t


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template_db) -> str:
    root = tmp_path_factory.mktemp("results")
    shutil.copyfile(mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for method, seeds in VALUES.items():
        for seed, values in enumerate(seeds):
            add_run(root, uri, method, seed, values)
    # never in the main table: a failed run, a running run, ablations and augmentation variants
    add_run(root, uri, "mt", 7, {"mean": (0.10, 50.0)}, status="failed")
    add_run(root, uri, "mt", 8, {"mean": (0.10, 50.0)}, status="running")
    add_run(root, uri, "action", 0, {"mean": (0.70, 3.0)}, ablation="no-rsi")
    add_run(root, uri, "action", 1, {"mean": (0.72, 3.0)}, ablation="no-rsi")
    add_run(root, uri, "action", 0, {"mean": (0.50, 9.0)}, ablation="none", augment="weak-weak")
    # a dataset without published figures
    add_run(root, uri, "mt", 0, {"mean": (0.5, 1.0)}, dataset="toy")
    # another protocol on the same dataset (its own table, never beside published rows), and a
    # run from before protocols existed (no tag: counted as paper v1)
    add_run(root, uri, "mt", 0, {"mean": (0.60, 2.0)}, dataset="proto", protocol="equal")
    add_run(root, uri, "mt", 1, {"mean": (0.62, 2.0)}, dataset="proto", protocol="field")
    add_run(root, uri, "mt", 2, {"mean": (0.64, 2.0)}, dataset="proto", protocol="")
    return uri


def runs(uri: str, **filters) -> pd.DataFrame:
    return tbl.select_runs(tbl.load_runs(uri), **filters)


def test_load_runs_reads_tags_metrics_and_status(store):
    df = tbl.load_runs(store)
    assert set(df["status"]) == {"finished"}
    assert len(df) == 4 + 3 + 1 + 3  # acdc, ablations, toy, proto
    assert len(tbl.load_runs(store, "all")) == 13
    assert set(tbl.load_runs(store, "failed")["seed"]) == {"7"}
    assert set(runs(store, dataset="acdc", methods=["mt"])["seed"]) == {"0", "1"}


def test_markdown_has_mean_std_n_and_no_untested_bold(store):
    tables = tbl.main_tables(runs(store, dataset="acdc"), "best")
    assert len(tables) == 1
    md = tbl.render(tables, "md")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    header = md.splitlines()[2]
    assert header.startswith("| Method | 3 labeled: Average | 3 labeled: RV |")
    mt, action = rows["MT"], rows["ACTION"]
    # Average column: ACTION best in both DSC and ASD, but without per-case results untested: no bold
    # (the footnote names the runs without them)
    assert "| 81.0±1.4 / 2.50±0.71 (n=2) |" in mt
    assert "| 87.0±1.4 / 1.10±0.14 (n=2) |" in action
    # RV column: MT best DSC; ASD tied at display precision (no comparison)
    assert "| 71.0±1.4 / 5.00±0.00 (n=2) |" in mt
    assert "| 61.0±1.4 / 5.00±1.41 (n=2) |" in action
    assert "**" not in "\n".join(rows.values())
    # the family holds the tests actually run: none
    assert ("Holm-corrected over the 0 test(s) run for this table, alpha = 0.05; tested only with >= 3 paired "
            "runs; 3 best mean(s) not tested (no bold): no per-case results.") in md
    assert ("Per-case results (test_<checkpoint>_per_case.csv) missing for 4 run(s), left out of every test and "
            "interval: MT 3 labeled seed 0 split 0, MT 3 labeled seed 1 split 0, ACTION 3 labeled seed 0 split 0, "
            "ACTION 3 labeled seed 1 split 0.") in md
    assert "Std covers initialisation seeds; n = number of runs (seed x split seed)." in md
    assert list(rows)[1:3] == ["MT", "ACTION"]  # paper order (MT before ACTION)
    assert "(paper)" not in md and tbl.PUBLISHED_LABEL not in md
    assert "Protocol: field-v1; budget: 30k iterations" in md
    assert "Checkpoint: best" in md and "DSC in %, ASD in voxels" in md
    # the failed (0.10) and ablation (0.70) runs are not averaged in
    assert "0.10" not in md and "71.0±1.4 / 3.00" not in md


def test_last_checkpoint_uses_last_metrics(store):
    md = tbl.render(tbl.main_tables(runs(store, dataset="acdc"), "last"), "md")
    assert "71.0±1.4 / 3.50±0.71 (n=2)" in md  # mean dice - 10 points, ASD + 1
    assert "Checkpoint: last" in md


def test_csv_is_tidy_numbers(store):
    out = tbl.render(tbl.main_tables(runs(store, dataset="acdc"), "best"), "csv")
    df = pd.read_csv(io.StringIO(out))
    mt = df[(df["method"] == "mt") & (df["class"] == "mean")].iloc[0]
    assert mt["dsc_mean_percent"] == pytest.approx(81.0)
    assert mt["dsc_std_percent"] == pytest.approx(2 ** 0.5)
    assert mt["asd_mean_voxel"] == pytest.approx(2.5)
    assert mt["n"] == 2 and not mt["dsc_best"]
    assert not df["dsc_best"].any() and not df["asd_best"].any()  # untested: no per-case results
    assert set(df["block"]) == {"measured"} and set(df["checkpoint"]) == {"best"}


def test_latex_escaping(store):
    tex = tbl.render(tbl.main_tables(runs(store, dataset="acdc"), "best", with_published=True), "latex")
    assert r"87.0$\pm$1.4 / 1.10$\pm$0.14 (n=2)" in tex
    assert r"81.0$\pm$1.4 / 2.50$\pm$0.71 (n=2)" in tex
    assert r"\multicolumn{2}{c}{3 labeled}" in tex and r"DSC in \%" in tex
    assert r"\textit{published (You et al., IPMI 2023, real ACDC/LiTS)}" in tex


def test_published_block_is_separate_and_labelled(store):
    tables = tbl.main_tables(runs(store, dataset="acdc"), "best", with_published=True)
    md = tbl.render(tables, "md")
    lines = md.splitlines()
    label = next(i for i, line in enumerate(lines) if tbl.PUBLISHED_LABEL in line)
    action_paper = next(i for i, line in enumerate(lines) if line.startswith("| ACTION (paper) |"))
    assert label < action_paper
    assert lines.index(next(line for line in lines if line.startswith("| ACTION |"))) < label
    # the paper's ACTION (87.5 / 1.12) beats our 87.0 / 1.10 on DSC but takes no bold
    assert lines[action_paper] == "| ACTION (paper) | 87.5 / 1.12 | 85.4 / 0.915 |"
    assert "**" not in "\n".join(lines[label:action_paper + 1])
    assert "| 87.0±1.4 / 1.10±0.14 (n=2) |" in md
    assert sum(line.startswith("| ") and "(paper)" in line for line in lines) == 14  # all 14 paper methods
    assert "not measured here" in md
    df = pd.read_csv(io.StringIO(tbl.render(tables, "csv")))
    assert not df[df["block"] == "published"]["dsc_best"].any()
    # --method limits the published rows to the selected methods
    only_mt = tbl.render(tbl.main_tables(runs(store, dataset="acdc", methods=["mt"]), "best", True, ["mt"]), "md")
    assert "| MT (paper) |" in only_mt and "ACTION (paper)" not in only_mt


def test_dataset_without_reference_says_so(store):
    md = tbl.render(tbl.main_tables(runs(store, dataset="toy"), "best", with_published=True), "md")
    assert "No published figures for dataset 'toy'" in md and "(paper)" not in md


def test_select_runs_keeps_the_last_run_per_seed_and_normalises_augment():
    df = pd.DataFrame([
        {"method": "action", "dataset": "acdc", "setting": "3 labeled", "seed": "1", "split_seed": "0",
         "ablation": "none", "augment": "", "end_time": 1, "test/best/dice/mean": 0.1},
        {"method": "action", "dataset": "acdc", "setting": "3 labeled", "seed": "1", "split_seed": "0",
         "ablation": "none", "augment": "strong-weak", "end_time": 2, "test/best/dice/mean": 0.9},
        {"method": "action", "dataset": "acdc", "setting": "3 labeled", "seed": "1", "split_seed": "0",
         "ablation": "none", "augment": "weak-weak", "end_time": 3, "test/best/dice/mean": 0.5},
        {"method": "mt", "dataset": "acdc", "setting": "3 labeled", "seed": "1", "split_seed": "1",
         "ablation": "none", "augment": "", "end_time": 1, "test/best/dice/mean": 0.3},
    ])
    kept = tbl.select_runs(df)
    assert sorted(kept["test/best/dice/mean"]) == [0.3, 0.5, 0.9]
    assert sorted(kept[kept["method"] == "action"]["augment"]) == ["strong-weak", "weak-weak"]


def test_method_order_and_display_names():
    names = ["bcp", "action", "mt", "unet-l", "unet-f", "zzz"]
    ordered = [tbl.display_name(m) for m in sorted(names, key=lambda m: tbl.method_order(tbl.display_name(m)))]
    assert ordered == ["UNet-F", "UNet-L", "MT", "ACTION", "BCP", "zzz"]
    assert sorted(["10% labeled", "7 labeled", "5% labeled", "3 labeled"], key=tbl.setting_order) == [
        "3 labeled", "7 labeled", "5% labeled", "10% labeled"]


def test_ablation_tables(store):
    tables = tbl.ablation_tables(runs(store, dataset="acdc"), "best")
    assert len(tables) == 2
    md3, md4 = tbl.render_md(tables[0]), tbl.render_md(tables[1])
    rows3 = {line.split("|")[1].strip(): line for line in md3.splitlines() if line.startswith("| ")}
    assert "| 71.0±1.4 / 3.00±0.00 (n=2) | 82.7 / 6.66 |" in rows3["w/o random sampled images (RSI)"]
    # the full ACTION row: tag none, default augmentation (no augment tag = strong-weak)
    assert "| 87.0±1.4 / 1.10±0.14 (n=2) | 87.5 / 1.12 |" in rows3["ACTION (full)"]
    assert "| — | 60.6 / 6.64 |" in rows3["Vanilla (BYOL only)"]  # no runs: published only
    rows4 = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in md4.splitlines() if line.startswith("| ")}
    assert "| 50.0 / 9.00 (n=1) | 84.6 / 1.78 |" in rows4[("weak", "weak")]
    assert "| 87.0±1.4 / 1.10±0.14 (n=2) | 87.5 / 1.12 |" in rows4[("strong", "weak")]
    assert "| — | 86.5 / 1.89 |" in rows4[("strong", "strong")]
    assert "Protocol: field-v1; budget" in md3 and "Protocol: field-v1; budget" in md4
    # runs of the phantom-free "toy" dataset have no action runs -> no ablation tables
    assert tbl.ablation_tables(runs(store, dataset="toy"), "best") == []


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command("table")(table_command)

    @app.callback()
    def main() -> None:  # keeps "table" a subcommand, as in the real CLI
        pass

    return app


def test_cli_formats_output_and_filters(store, tmp_path):
    runner = CliRunner()
    app = cli_app()
    res = runner.invoke(app, ["table", "--tracking-uri", store, "--dataset", "acdc", "--format", "md"])
    assert res.exit_code == 0, res.output
    assert "| 87.0±1.4 / 1.10±0.14 (n=2) |" in res.output
    out = tmp_path / "t" / "table.csv"
    res = runner.invoke(app, ["table", "--tracking-uri", store, "--format", "csv", "--output", str(out),
                              "--method", "mt", "--method", "action", "--dataset", "acdc"])
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(out)["method"]) == {"mt", "action"}
    res = runner.invoke(app, ["table", "--tracking-uri", store, "--dataset", "acdc", "--ablation"])
    assert res.exit_code == 0, res.output
    assert "Table 3 layout" in res.output and "Table 4 layout" in res.output  # rich, 80 columns
    res = runner.invoke(app, ["table", "--tracking-uri", store, "--dataset", "acdc", "--ablation", "--format", "md"])
    assert "| w/o random sampled images (RSI) | 3a | no-rsi | 71.0±1.4 / 3.00±0.00 (n=2) |" in res.output
    res = runner.invoke(app, ["table", "--tracking-uri", store, "--dataset", "acdc", "--checkpoint", "nope"])
    assert res.exit_code != 0


def test_cli_no_runs_is_one_line_and_exit_1(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    app = cli_app()
    res = runner.invoke(app, ["table", "--tracking-uri", store, "--dataset", "nope"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [res.output.strip()]
    assert "no finished runs matching dataset=nope" in res.output
    res = runner.invoke(app, ["table", "--results-root", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no MLflow store" in res.output
    assert not (tmp_path / "empty" / "mlflow.db").exists()  # reading never creates a store
    res = runner.invoke(app, ["table", "--tracking-uri", store, "--dataset", "toy", "--ablation"])
    assert res.exit_code == 1 and "of method action" in res.output


def test_protocols_get_their_own_tables_and_published_rows_only_beside_field(store):
    warnings = []
    d = runs(store, dataset="proto")
    assert set(d["protocol_tag"]) == {"equal-v1", "field-v1", "-v1"} or "paper-v1" in set(d["protocol_tag"])
    tables = tbl.main_tables(d, "reported", with_published=True, warn=warnings.append)
    assert [t.protocol for t in tables] == sorted(t.protocol for t in tables)
    by = {t.protocol: t for t in tables}
    assert set(by) == {"equal-v1", "field-v1", "paper-v1"}  # the untagged run counts as paper v1
    for ptag, t in by.items():
        assert f"protocol {ptag}" in t.title and t.footnote[0].startswith(f"Protocol: {ptag}")
        assert len(t.blocks[0].rows) == 1  # one MT row (n = 1) per protocol, never pooled
    # 'proto' has no reference_name: field gets the "no published figures" note, the others a warning
    assert any("no reference_name" in n for n in by["field-v1"].notes)
    published = [w for w in warnings if "published rows" in w]
    assert len(published) == 2 and all("--protocol field" in w for w in published)
    # and each protocol's run without per-case results is named (issue 17: missing inputs are loud)
    lost = [w for w in warnings if "no per-case results for 1 run(s)" in w]
    assert len(lost) == 3 and len(warnings) == 5 and all("MT 3 labeled seed " in w for w in lost)
    assert any("not shown beside protocol equal-v1" in n for n in by["equal-v1"].notes)
    # a protocol filter keeps one table
    only = tbl.main_tables(runs(store, dataset="proto", protocol="equal"), "best")
    assert [t.protocol for t in only] == ["equal-v1"]


def test_published_rows_need_field_runs(store):
    warnings = []
    acdc_paper = runs(store, dataset="acdc").assign(protocol="paper", protocol_tag="paper-v1")
    t = tbl.main_tables(acdc_paper, "best", with_published=True, warn=warnings.append)[0]
    assert [b.label for b in t.blocks] == [None] and warnings
    t = tbl.main_tables(runs(store, dataset="acdc"), "best", with_published=True)[0]
    assert [b.label for b in t.blocks] == [None, tbl.PUBLISHED_LABEL]


def test_variants_of_one_method_get_their_own_rows():
    base = {"dataset": "acdc", "setting": "3 labeled", "split_seed": "0", "protocol": "field",
            "protocol_version": "1", "test/best/dice/mean": 0.5, "test/last/dice/mean": 0.4}
    df = pd.DataFrame([
        {**base, "method": "action", "variant": "released", "seed": "0", "end_time": 1, "run_id": "a"},
        {**base, "method": "action", "variant": "released", "seed": "1", "end_time": 2, "run_id": "b"},
        {**base, "method": "action", "variant": "paper", "seed": "0", "end_time": 3, "test/best/dice/mean": 0.7,
         "run_id": "c"},
        {**base, "method": "mt", "variant": "ssl4mis", "seed": "0", "end_time": 4, "run_id": "d"},
    ])
    kept = tbl.select_runs(df)
    assert sorted(kept["method"]) == ["action:paper", "action:released", "action:released", "mt"]
    t = tbl.main_tables(kept, "best")[0]
    labels = [label for label, _ in t.blocks[0].rows]
    assert labels == ["MT", "ACTION (paper)", "ACTION (released)"]
    assert t.blocks[0].rows[1][1][0][0][0] == "70.0" and t.blocks[0].rows[2][1][0][0][0] == "50.0±0.0"
    abl = tbl.ablation_tables(kept, "best")
    assert len(abl) == 4 and "ACTION (paper)" in abl[0].title


def test_footnote_restates_what_the_runs_trained_with(tmp_path, mlflow_template_db):
    """The protocol line gives the paper-scale recipe; runs at a CPU budget say what they ran."""
    shutil.copyfile(mlflow_template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train = {"iterations": 1500, "labeled_bs": 6, "unlabeled_bs": 6, "image_size": 64,
             "supervised_whole_batch": False, "budget_scale": 1.0}
    for method, seed, extra in [("mt", 0, {}), ("mt", 1, {}), ("action", 0, {"budget_scale": 3.0, "labeled_bs": 4,
                                                                                "unlabeled_bs": 4}),
                                ("unet-l", 0, {"supervised_whole_batch": True})]:
        t = RunTracker(tmp_path / f"{method}{seed}", uri, "ssl-bench/acdc", f"{method}{seed}",
                       {"method": method, "dataset": "acdc", "setting": "3 labeled", "seed": seed, "split_seed": 0,
                        "protocol": "field", "protocol_version": "1"}, {"train": {**train, **extra}})
        t.start()
        t.log_final({"test/best/dice/mean": 0.5, "test/best/asd_vox/mean": 2.0,
                     "test/last/dice/mean": 0.5, "test/last/asd_vox/mean": 2.0})
        t.set_status("finished")
    df = tbl.select_runs(tbl.load_runs(uri))
    assert df.loc[df["method"] == "action", "as_run.budget_scale"].iloc[0] == "3.0"
    [table] = tbl.main_tables(df)
    assert ("As run (gradient steps x slices per step, 64 px): UNet-L 1500 x 12 labeled, MT 1500 x (6 + 6), "
            "ACTION 4500 x (4 + 4).") in table.footnote
    assert tbl.as_run_line(df.drop(columns=["as_run.image_size"])) is None  # runs that did not log it


def test_3d_runs_read_v_net_and_their_patch():
    """On a 3D dataset the supervised rows are the V-Net's (the LA tables' V-Net-L/F), and the
    as-run line gives the training patch (3D runs log image_size 0), not "0 px"."""
    from ssl_bench.table.runs import display_name, method_order

    assert (display_name("unet-l", "la"), display_name("unet-f", "la-small")) == ("V-Net-L", "V-Net-F")
    assert (display_name("unet-l", "acdc"), display_name("unet-l"), display_name("mt", "la")) == ("UNet-L", "UNet-L", "MT")
    assert method_order("V-Net-L") == method_order("UNet-L") < method_order("MT")
    row = {"dataset": "la-small", "as_run.iterations": "450", "as_run.labeled_bs": "2", "as_run.unlabeled_bs": "2",
           "as_run.image_size": "0", "as_run.budget_scale": "1.0"}
    df = pd.DataFrame([{**row, "method": "unet-l", "as_run.supervised_whole_batch": "True", "as_run.patch_size": "[]"},
                       {**row, "method": "mt", "as_run.supervised_whole_batch": "False",
                        "as_run.patch_size": "[64, 64, 32]"}])
    assert tbl.as_run_line(df) == ("As run (gradient steps x patches per step, patches of 64 x 64 x 32 voxels "
                                   "(x, y, z)): V-Net-L 450 x 4 labeled, MT 450 x (2 + 2).")
    df.loc[1, "as_run.patch_size"] = "[96, 96, 48]"  # the default (la-small: 64 x 64 x 32) beside another patch
    assert "patches (x, y, z): 64 x 64 x 32 / 96 x 96 x 48" in tbl.as_run_line(df)
