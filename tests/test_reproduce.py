"""ssl-bench reproduce: the grids behind Tables 1-4, the dry run, a smoke slice end to end, and the
measured / published / Δ comparison."""
import pandas as pd
import pytest
from typer.testing import CliRunner

from ssl_bench import reproduce as rep
from ssl_bench import table as tbl
from ssl_bench.cli import app

WIDE = {"COLUMNS": "200"}


def test_table1_dry_run_is_14_methods_x_2_settings_x_3_seeds_under_field(tmp_path):
    res = CliRunner().invoke(app, ["reproduce", "table1", "--dry-run", "--results-root", str(tmp_path / "r")],
                             env=WIDE)
    assert res.exit_code == 0, res.output
    assert "protocol field-v2 on acdc" in res.output
    assert "14 method(s) x 2 setting(s) x 3 seed(s) = 84 runs" in res.output
    # the estimate: 13 baselines x 30k + ACTION 90k per (setting, seed), from measured step times
    assert "2,880,000 iterations in all" in res.output and "device-hours for 84 of 84 runs" in res.output
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_grids_match_the_papers_tables():
    jobs = rep.GridRequest(rep.get_grid("table1")).jobs()
    assert len(jobs) == 84 and {j.dataset for j in jobs} == {"acdc"}
    assert [m for m in dict.fromkeys(j.method for j in jobs)] == rep.PAPER_METHODS
    assert all(j.extra[:2] == ["--protocol", "field"] for j in jobs)
    t2 = rep.GridRequest(rep.get_grid("table2"), budget="smoke", seeds=[0]).jobs()
    assert {j.dataset for j in t2} == {"lits-phantom"} and {j.setting for j in t2} == {("--ratio", "0.05"), ("--ratio", "0.1")}
    t3 = rep.GridRequest(rep.get_grid("table3"), seeds=[0]).jobs()
    sets3 = {tuple(a for i, a in enumerate(j.extra) if j.extra[i - 1] == "--set") for j in t3}
    assert len(t3) == 9 and ("method.ablation=no-stage2",) in sets3 and () in sets3
    t4 = rep.GridRequest(rep.get_grid("table4"), seeds=[0]).jobs()
    assert len(t4) == 4 and all(j.method == "action" and j.setting == ("--labeled", "3") for j in t4)


def test_cpu_budget_is_real_data_with_the_cpu_bundle_and_the_user_set_wins():
    jobs = rep.GridRequest(rep.get_grid("table1"), budget="cpu", seeds=[0], methods=["mt"]).jobs()
    assert {j.dataset for j in jobs} == {"acdc"} and len(jobs) == 2
    sets = [a for i, a in enumerate(jobs[0].extra) if jobs[0].extra[i - 1] == "--set"]
    assert sets == list(rep.CPU_BUDGET_SETS)
    assert jobs[0].extra[jobs[0].extra.index("--iterations") + 1] == str(rep.CPU_BUDGET_ITERATIONS)
    mine = rep.GridRequest(rep.get_grid("table1"), budget="cpu", seeds=[0], methods=["mt"], iterations=800,
                           extra_sets=["image_size=96"]).jobs()[0].extra
    sets = [a for i, a in enumerate(mine) if mine[i - 1] == "--set"]
    assert sets[-1] == "image_size=96" and mine[mine.index("--iterations") + 1] == "800"


@pytest.mark.parametrize("args, message", [
    (["table9"], "unknown table 'table9'"),
    (["table1", "--methods", "unet-l,nope"], "table1 has no method nope"),
    (["table1", "--budget", "huge"], "--budget 'huge'"),
    (["table1", "--protocol", "nope"], "unknown protocol 'nope'"),
])
def test_bad_requests_are_one_line_errors(args, message, tmp_path):
    res = CliRunner().invoke(app, ["reproduce", *args, "--dry-run", "--results-root", str(tmp_path)], env=WIDE)
    assert res.exit_code == 2 and message in res.output


def test_comparison_cells_are_measured_published_and_delta():
    runs = pd.DataFrame([
        {"method": "unet-l", "dataset": "acdc", "setting": "3 labeled", "seed": str(s), "split_seed": "0",
         "protocol": "field", "protocol_version": "1", "end_time": s,
         "test/best/dice/mean": v, "test/best/asd_vox/mean": a}
        for s, (v, a) in enumerate([(0.50, 12.0), (0.54, 14.0)])])
    dsc, asd = tbl.comparison_tables(tbl.select_runs(runs))
    # published UNet-L, 3 labeled, mean: 51.7 / 13.1; measured 52.0±2.8 / 13.00±1.41
    assert dsc.blocks[0].rows[0][0] == "UNet-L, 3 labeled"
    assert dsc.blocks[0].rows[0][1][0][0][0] == "52.0±2.8 (n=2) / 51.7 / +0.3"
    assert asd.blocks[0].rows[0][1][0][0][0] == "13.00±1.41 (n=2) / 13.1 / -0.10"
    rec = [r for r in dsc.records if r["class"] == "mean"][0]
    assert rec["delta"] == pytest.approx(52.0 - 51.7) and rec["n"] == 2


@pytest.mark.slow
def test_smoke_slice_runs_end_to_end_and_compares(tmp_path):
    """What CI runs of the smoke budget: one method of Table 1 on the phantom, both settings."""
    res = CliRunner().invoke(app, [
        "reproduce", "table1", "--budget", "smoke", "--methods", "unet-l", "--seeds", "0", "--iterations", "4",
        "--set", "image_size=32", "--set", "val_every=2", "--jobs", "2", "--format", "md",
        "--data-root", str(tmp_path / "data"), "--results-root", str(tmp_path / "results"),
        "--output", str(tmp_path / "cmp.md")], env=WIDE)
    assert res.exit_code == 0, res.output
    text = (tmp_path / "cmp.md").read_text()
    assert "acdc-phantom, protocol field-v2: measured / published / Δ, DSC [%]" in text
    assert "| UNet-L, 3 labeled |" in text and "/ 51.7 /" in text and "| UNet-L, 7 labeled |" in text
    # idempotent: a second call skips the finished runs and prints the same comparison
    again = CliRunner().invoke(app, [
        "reproduce", "table1", "--budget", "smoke", "--methods", "unet-l", "--seeds", "0", "--iterations", "4",
        "--set", "image_size=32", "--set", "val_every=2", "--jobs", "2", "--format", "md",
        "--data-root", str(tmp_path / "data"), "--results-root", str(tmp_path / "results")], env=WIDE)
    assert again.exit_code == 0 and "/ 51.7 /" in again.output


def test_sota_grid_is_six_methods_x_2_settings_x_3_seeds_under_their_released_recipes(tmp_path):
    jobs = rep.GridRequest(rep.get_grid("sota")).jobs()
    assert len(jobs) == 36 and [m for m in dict.fromkeys(j.method for j in jobs)] == rep.SOTA_METHODS
    assert {j.setting for j in jobs} == {("--labeled", "3"), ("--labeled", "7")}
    res = CliRunner().invoke(app, ["reproduce", "sota", "--dry-run", "--results-root", str(tmp_path / "r")], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "6 method(s) x 2 setting(s) x 3 seed(s) = 36 runs" in res.output
    # per (setting, seed): BCP 40k + ACTION 90k + ABD 40k + AD-MT 30k + UniMatch 30k + SS-Net 30k
    assert "1,560,000 iterations in all" in res.output
