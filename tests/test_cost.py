"""Cost per run: stage wall times across resumes, device-hours, memory peaks, in metrics.json
and MLflow."""
import json
import mmap
import time

import pytest
import torch
from mlflow import MlflowClient

from ssl_bench import cost, engine, mlflow_store, run_index, tracking
from ssl_bench.runconfig import RunSpec


def test_meter_adds_stage_times_over_resumes_and_keeps_the_highest_peaks():
    saved = {"stage_seconds": {"pretrain": 10.0, "finetune": 2.0}, "peak_gpu_allocated_mb": None,
             "peak_gpu_reserved_mb": None, "peak_host_rss_mb": 1e9}
    meter = cost.CostMeter(torch.device("cpu"), saved)
    meter.start_stage("finetune")  # a resumed run continues its last stage
    time.sleep(0.05)
    snap = meter.snapshot()
    assert 2.05 <= snap["stage_seconds"]["finetune"] < 3.0 and snap["stage_seconds"]["pretrain"] == 10.0
    total = meter.end_stage()
    assert total == meter.stage_seconds["finetune"] >= snap["stage_seconds"]["finetune"]
    assert snap["peak_host_rss_mb"] == 1e9  # an earlier attempt's peak is kept
    assert snap["peak_gpu_allocated_mb"] is None  # no CUDA: no GPU peak, never a 0

    fresh = cost.CostMeter(torch.device("cpu"))
    assert 10 < fresh.peaks()["peak_host_rss_mb"] < 1e6  # this process, in MiB
    summary = meter.summary(iterations=40, image_size=64, labeled_bs=6, unlabeled_bs=6, test_seconds=3.6)
    assert summary["train_seconds"] == pytest.approx(10.0 + total)
    assert summary["seconds_per_iteration"] == pytest.approx((10.0 + total) / 40)
    assert summary["device_hours"] == pytest.approx((10.0 + total + 3.6) / 3600)
    assert summary["device"] == "cpu"
    flat = run_index.final_metrics({"flat": {"test/best/dice/mean": 0.5}, "cost": summary})
    assert flat["test/best/dice/mean"] == 0.5
    assert flat["cost/stage_seconds/pretrain"] == 10.0 and flat["cost/image_size"] == 64.0
    assert "cost/peak_gpu_allocated_mb" not in flat and "cost/device" not in flat


def test_a_run_records_its_cost_in_metrics_json_and_mlflow(tmp_path):
    spec = RunSpec(method="gcl", dataset="tiny-test", labeled=2, overrides={
        "iterations": "8", "labeled_bs": "2", "unlabeled_bs": "2", "val_every": "4", "image_size": "16"})
    run = engine.prepare(spec, tmp_path / "data", tmp_path / "results")
    res = engine.fit(run, progress=False)
    c = json.loads((res.run_dir / "metrics.json").read_text())["cost"]
    assert list(c["stage_seconds"]) == list(res.metrics["stages"])  # every stage of GCL, in order
    assert all(v > 0 for v in c["stage_seconds"].values())
    assert c["train_seconds"] == pytest.approx(sum(c["stage_seconds"].values()))
    assert c["seconds_per_iteration"] == pytest.approx(c["train_seconds"] / 8)
    assert c["device_hours"] == pytest.approx((c["train_seconds"] + c["test_seconds"]) / 3600)
    assert (c["image_size"], c["labeled_bs"], c["unlabeled_bs"], c["iterations"]) == (16, 2, 2, 8)
    assert c["device"] == "cpu" and c["peak_gpu_allocated_mb"] is None and c["peak_host_rss_mb"] > 10
    assert json.loads((res.run_dir / "tags.json").read_text())["device"] == "cpu"

    run_id = (res.run_dir / "mlflow_run_id").read_text().strip()
    logged = MlflowClient(mlflow_store.default_tracking_uri(tmp_path / "results")).get_run(run_id)
    assert logged.data.metrics["cost/device_hours"] == pytest.approx(c["device_hours"])
    assert logged.data.metrics["cost/stage_seconds/finetune"] == pytest.approx(c["stage_seconds"]["finetune"])
    assert logged.data.tags["ssl_bench.device"] == "cpu"


def _run_with_cost(root, uri, name, seed, device_hours, rss, gpu=None):
    t = tracking.RunTracker(root / name, uri, "ssl-bench/tiny-test", name,
                            {"method": "mt", "dataset": "tiny-test", "setting": "2 labeled", "seed": seed,
                             "split_seed": 0, "device": "cuda:0 (H200)" if gpu else "cpu"}, {}).start()
    metrics = {"status": "finished", "flat": {"test/best/dice/mean": 0.5}}
    if device_hours is not None:  # else a run from before costs were recorded
        train = device_hours * 3600 - 36
        metrics["cost"] = {"device_hours": device_hours, "train_seconds": train, "test_seconds": 36.0,
                           "seconds_per_iteration": train / 1000, "image_size": 256, "labeled_bs": 12,
                           "unlabeled_bs": 12, "peak_host_rss_mb": rss, "peak_gpu_allocated_mb": gpu,
                           "stage_seconds": {"train": train}}
    tracking._write_json(t.run_dir / "metrics.json", metrics)
    t.log_final(run_index.final_metrics(metrics))
    t.set_status("finished")


def test_table_cost_sums_device_hours_per_method_and_device(tmp_path):
    from typer.testing import CliRunner

    from ssl_bench.cli import app

    root = tmp_path / "results"
    uri = mlflow_store.default_tracking_uri(root)
    _run_with_cost(root, uri, "a", 0, 0.5, 900.0)
    _run_with_cost(root, uri, "b", 1, 1.5, 1200.0)
    _run_with_cost(root, uri, "c", 2, 2.0, 3000.0, gpu=5000.0)
    _run_with_cost(root, uri, "old", 3, None, None)
    res = CliRunner().invoke(app, ["table", "--cost", "--format", "csv", "--results-root", str(root)])
    assert res.exit_code == 0, res.output
    import csv
    import io

    rows = {r["device"]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    cpu, gpu = rows["cpu"], rows["cuda:0 (H200)"]
    assert (cpu["method"], cpu["runs"], cpu["image_size"], cpu["labeled_bs"]) == ("mt", "2", "256", "12")
    assert float(cpu["device_hours_per_run"]) == 1.0 and float(cpu["device_hours_total"]) == 2.0
    assert float(cpu["train_hours_per_run"]) == pytest.approx(1.0 - 0.01)
    assert float(cpu["peak_host_rss_mib"]) == 1200.0 and cpu["peak_gpu_allocated_mib"] == ""
    assert float(gpu["peak_gpu_allocated_mib"]) == 5000.0 and gpu["runs"] == "1"
    res = CliRunner().invoke(app, ["table", "--cost", "--format", "md", "--results-root", str(root)])
    assert "1 run(s) of tiny-test, protocol paper-v1 have no cost record" in res.stdout
    assert "| MT | cpu | 256 px / 12+12 | 2 |" in res.stdout


def test_peaks_are_reset_when_a_run_starts_mocked_cuda(monkeypatch):
    """A run reports its own peak, not one of an earlier run or bench section of the process: the
    meter resets CUDA's peak statistics of its device (mocked API: no GPU here) and the resident
    high-water mark."""
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(device))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 4 * 2**20)
    dev = torch.device("cuda", 1)
    meter = cost.CostMeter(dev)
    assert calls == [dev]
    assert meter.peaks()["peak_gpu_allocated_mb"] == 3.0 and meter.peaks()["peak_gpu_reserved_mb"] == 4.0
    cost.CostMeter(torch.device("cpu"))
    assert calls == [dev]  # no CUDA call for a CPU run

    # 64 MiB made resident, then unmapped: an anonymous map of its own, so that its pages go back to
    # the OS on close whatever the allocator does with a freed tensor (CI once saw a freed 64 MiB
    # tensor stay resident late in a long test process, and the peak could not fall)
    big = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(big), mmap.PAGESIZE):
        big[offset] = 1
    high = cost.host_rss_mb()
    big.close()
    cost.reset_peaks(torch.device("cpu"))
    assert cost.host_rss_mb() < high - 32  # the high-water mark starts again from now


def test_table_cost_of_3d_runs_names_the_patch_and_the_v_net(tmp_path):
    """A 3D run's cost records its patch as a list (no MLflow metric): the cost table reads it from
    the run's config instead of failing, and names the supervised rows as the LA tables do. Records:
    two committed real-LA runs (results/la/runs/la-clean-8lab)."""
    import csv
    import io
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from ssl_bench.cli import app

    src = Path(__file__).resolve().parents[1] / "results/la/runs/la-clean-8lab"
    root = tmp_path / "results"
    for method in ("unet-l", "action"):
        run = sorted((src / "la-small/8lab/la-clean-v1" / method).glob("seed0-*"))[0]
        shutil.copytree(run, root / run.relative_to(src))
    res = CliRunner().invoke(app, ["table", "--cost", "--format", "csv", "--results-root", str(root)])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert rows["unet-l"]["image"] == rows["action"]["image"] == "64 x 64 x 32 voxels"
    assert rows["unet-l"]["display_name"] == "V-Net-L" and rows["unet-l"]["image_size"] == ""
    assert rows["action"]["labeled_bs"] == "1" and rows["action"]["runs"] == "1"
    md = CliRunner().invoke(app, ["table", "--cost", "--format", "md", "--results-root", str(root)]).stdout
    # the batch as drawn: V-Net-L's recipe fills the whole batch with labeled patches (2+2 configured)
    assert rows["unet-l"]["batch"] == "4 labeled" and rows["unet-l"]["unlabeled_bs"] == "2"
    assert rows["action"]["batch"] == "1+1"
    assert "| V-Net-L | cpu | 64 x 64 x 32 voxels / 4 labeled | 1 |" in md
