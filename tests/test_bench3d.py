"""``ssl-bench bench steps --patch``: 3D step times (V-Net on patches), their CSV rows beside the 2D
ones, and the planner's 3D estimates (``sweep/estimate.py``, ``reproduce.estimate_from_config``).

The tiny patch is 32 x 32 x 16 (x, y, z), not smaller: V-Net halves every side four times (each a
multiple of 16), and at 16^3 with one patch its bottleneck holds one value per channel, which batch
norm refuses in training mode."""
import csv
from types import SimpleNamespace

import pytest

from ssl_bench.bench import steps

TINY = steps.Setting(labeled_bs=1, unlabeled_bs=1, patch=(32, 32, 16))
HEADER_2D_ONLY = ",".join(steps.COLUMNS_2D_ONLY)
ROW_2D = "cpu,mt,train,64,6,6,False,False,False,0.5,100.0,1.2"


def test_3d_setting_draws_patches_and_times_unet_l_and_mt():
    bench = steps.StepBench("mt", TINY)
    batch_x = bench.lb.sample(1, bench.g)[0]
    assert tuple(batch_x.shape) == (1, 1, 16, 32, 32)  # (B, C, z, y, x) crops of a PatchPool
    assert bench.ctx.backbone == "vnet" and bench.ctx.image_size == (16, 32, 32)
    rows = steps.time_methods(["unet-l", "mt"], TINY, steps=2, warmup=0)
    assert [(r["method"], r["stage"]) for r in rows] == [("unet-l", "train"), ("mt", "train")]
    for r in rows:
        assert (r["patch"], r["image_size"], r["labeled_bs"], r["unlabeled_bs"]) == ("32x32x16", "", 1, 1)
        assert r["median_step_s"] > 0 and r["median_cpu_s"] > 0
        assert r["ratio_to_unet_l"] == pytest.approx(r["median_step_s"] / r["reference_median_s"])


def test_3d_input_errors_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match="cct cannot run on a 3D dataset.*Drop --patch to time cct on 2D slices"):
        steps.check_3d(["mt", "cct"], TINY)
    with pytest.raises(ValueError, match="divisible by 16"):
        steps.check_3d(["mt"], steps.Setting(patch=(24, 24, 16)))
    with pytest.raises(ValueError, match="x = y"):
        steps.check_3d(["mt"], steps.Setting(patch=(64, 32, 32)))


def test_a_csv_without_the_patch_column_loads_and_keeps_its_rows(tmp_path):
    path = tmp_path / "cpu.csv"
    path.write_text(f"{HEADER_2D_ONLY}\n{ROW_2D}\n")
    row_3d = {"device": "cpu", "method": "mt", "stage": "train", **TINY.columns(), "median_step_s": 2.0,
              "peak_mem_mb": None, "ratio_to_unet_l": 1.5}
    steps.merge_csv(path, [row_3d])
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == steps.COLUMNS
        rows = list(reader)
    assert [(r["image_size"], r["patch"], r["median_step_s"]) for r in rows] == [
        ("64", "", "0.5"), ("", "32x32x16", "2")]
    assert "patch 32 x 32 x 16 (x, y, z), V-Net, 1 + 1 patches" in steps.markdown(rows, [])


# -- the planner -----------------------------------------------------------------------------------
def _run(method="mt", image_size=64, lb=2, ulb=2):
    """What the planner reads of a prepared run; a 3D run's image_size is its (z, y, x) patch."""
    return SimpleNamespace(spec=SimpleNamespace(method=method), image_size=image_size,
                           train_cfg=SimpleNamespace(labeled_bs=lb, unlabeled_bs=ulb, amp=False,
                                                     supervised_whole_batch=False))


def _times(tmp_path, lines: list[str], header: str = ",".join(steps.COLUMNS)):
    from ssl_bench.sweep.estimate import StepTimes

    bench = tmp_path / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "cpu.csv").write_text(header + "\n" + "\n".join(lines) + "\n")
    return StepTimes(tmp_path / "results", [bench])


def test_the_planner_takes_3d_rows_for_3d_runs_and_2d_rows_for_2d_runs(tmp_path):
    times = _times(tmp_path, ["cpu,mt,all,64,,2,2,False,False,False,1.0,,1",
                              "cpu,mt,all,,64x64x32,2,2,False,False,False,3.0,,1"])
    est = times.estimate(_run(image_size=(32, 64, 64)), "cpu")
    assert est.seconds_per_iteration == 3.0 and "patch 64x64x32, 2+2 patches" in est.source
    est = times.estimate(_run(image_size=64), "cpu")
    assert est.seconds_per_iteration == 1.0 and "64 px, 2+2 slices" in est.source
    # twice the voxels per batch: twice the time, and the message says from which row
    est = times.estimate(_run(image_size=(32, 64, 64), lb=4, ulb=4), "cpu")
    assert est.seconds_per_iteration == pytest.approx(6.0)
    assert "(patch 64x64x32, 2+2 patches, cpu), scaled x2 to patch 64x64x32, 4+4 patches" in est.source

    only_2d = _times(tmp_path / "a", ["cpu,mt,all,64,,2,2,False,False,False,1.0,,1"])
    assert only_2d.estimate(_run(image_size=(32, 64, 64)), "cpu") is None  # never a 2D row for a 3D run
    only_2d_old = _times(tmp_path / "b", [ROW_2D.replace(",train,", ",all,")], header=HEADER_2D_ONLY)
    assert only_2d_old.estimate(_run(image_size=64), "cpu").seconds_per_iteration == pytest.approx(0.5 * 4 / 12)
    assert only_2d_old.estimate(_run(image_size=(32, 64, 64)), "cpu") is None
    only_3d = _times(tmp_path / "c", ["cpu,mt,all,,64x64x32,2,2,False,False,False,3.0,,1"])
    assert only_3d.estimate(_run(image_size=64), "cpu") is None  # never a 3D row for a 2D run


def test_reproduce_la_estimate_is_iterations_times_the_measured_median(tmp_path, monkeypatch):
    """la-small (the smoke budget) with la-field: MT 450 iterations at 2 + 2 patches of 64 x 64 x 32;
    its stage ``train`` row of 2.5 s gives 450 x 2.5 s per run, by hand."""
    from ssl_bench import reproduce as rep
    from ssl_bench.sweep import estimate

    times_dir = tmp_path / "bench"
    times_dir.mkdir()
    (times_dir / "cpu.csv").write_text(",".join(steps.COLUMNS) + "\n"
                                       "cpu,mt,train,,64x64x32,2,2,False,False,False,2.5,,1.2\n"
                                       "cpu,mt,train,64,,2,2,False,False,False,99.0,,1.2\n")
    monkeypatch.setattr(estimate, "default_bench_dirs", lambda: [times_dir])
    req = rep.GridRequest(rep.get_grid("la"), protocol=None, budget="smoke", seeds=[0], methods=["mt", "uamt"])
    rows = rep.estimate_from_config(req.jobs_and_specs(), tmp_path / "results", "cpu")
    mt = [(it, e) for job, it, e in rows if job.method == "mt"]
    assert len(mt) == 2 and all(it == 450 for it, _ in mt)  # --labeled 8 and 16, seed 0
    assert all(it * e.seconds_per_iteration == pytest.approx(450 * 2.5) for it, e in mt)
    assert all("patch 64x64x32, 2+2 patches" in e.source and "scaled" not in e.source for _, e in mt)
    assert all(e is None for job, _, e in rows if job.method == "uamt")  # not measured


@pytest.mark.slow
def test_bench_steps_cli_with_patch_writes_3d_rows_beside_2d_ones(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from ssl_bench.cli.bench import bench_app

    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    (tmp_path / "cpu.csv").write_text(f"{HEADER_2D_ONLY}\n{ROW_2D}\n")  # a committed 2D-only file
    res = CliRunner().invoke(app, ["bench", "steps", "--patch", "32,32,16", "--method", "unet-l", "--labeled-bs", "1",
                                   "--unlabeled-bs", "1", "--steps", "1", "--warmup", "0", "--threads", "1",
                                   "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["image_size"], r["patch"]) for r in rows] == [("mt", "64", ""), ("unet-l", "", "32x32x16")]
    assert float(rows[1]["peak_mem_mb"]) > 0  # the memory worker takes the patch too
    run = json.loads((tmp_path / "cpu.json").read_text())["runs"][-1]
    assert run["setting"].startswith("patch 32x32x16 (x,y,z) 1+1") and run["median_cpu_s"]["unet-l/train"] > 0
    md = (tmp_path / "cpu.md").read_text()
    assert "## patch 32 x 32 x 16 (x, y, z), V-Net, 1 + 1 patches" in md and "## 64 x 64, 6 + 6 slices" in md
    bad = CliRunner().invoke(app, ["bench", "steps", "--patch", "32,32", "--out-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "give x,y,z" in bad.output


def test_a_sweep_on_la_small_plans_from_the_3d_row(tmp_path):
    """``sweep --dataset la-small``: the prepared 3D run (image_size = its (z, y, x) patch) takes the
    3D row, never the 2D row of the same method."""
    from la_fakes import make_la

    from ssl_bench.sweep import Job
    from ssl_bench.sweep.plan import plan

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "cpu.csv").write_text(",".join(steps.COLUMNS) + "\n"
                                   "cpu,mt,train,64,,2,2,False,False,False,99.0,,1.2\n"
                                   "cpu,mt,train,,64x64x32,2,2,False,False,False,2.5,,1.2\n")
    root = make_la(tmp_path / "d")
    job = Job("mt", "la-small", ("--labeled", "4"), 0, 0, ["--protocol", "la-field"])
    p = plan([job], tmp_path / "results", runtime=["--results-root", str(tmp_path / "results"),
                                                   "--data-root", str(root)], bench_dirs=[bench])
    assert p.device_hours == pytest.approx(450 * 2.5 / 3600)
    assert "mt: " + str(bench / "cpu.csv") + " (patch 64x64x32, 2+2 patches, cpu)" in p.describe()
