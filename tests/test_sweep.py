"""Sweeps: jobs and their names, the plan (finished jobs, estimates, longest first), local slots
(never oversubscribed, one device per job), Ctrl-C, job states, the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssl_bench.cli import app
from ssl_bench.runconfig import RunSpec
from ssl_bench.sweep import Job, expand, plan
from ssl_bench.sweep.estimate import StepTimes
from ssl_bench.sweep.local import cpu_slots, gpu_slots, make_slots, run_local, visible_gpus
from ssl_bench.sweep.manifest import Manifest
from ssl_bench.sweep.status import job_status, last_line, last_step

runner = CliRunner()
SMALL = ["--set", "labeled_bs=2", "--set", "unlabeled_bs=2", "--set", "image_size=24"]


# -- jobs ------------------------------------------------------------------------------------------
def test_job_names_are_unique_when_jobs_differ_only_in_their_extra_options():
    a = Job("mt", "acdc", ("--labeled", "3"), 0, 0, ["--protocol", "field"])
    b = Job("mt", "acdc", ("--labeled", "3"), 0, 0, ["--protocol", "field", "--set", "method.variant=ssl4mis"])
    plain = Job("mt", "acdc", ("--labeled", "3"), 0, 0)
    assert plain.name == "mt acdc --labeled 3 seed0 split0"
    assert a.name != b.name and a.name.startswith(plain.name + " #") and len(a.name) == len(plain.name) + 8
    assert a.file_stem != b.file_stem and "/" not in b.file_stem and " " not in b.file_stem
    assert Job("mt", "acdc", ("--labeled", "3"), 0, 0, ["--protocol", "field"]).name == a.name  # stable
    assert a.argv()[-3:] == ["--protocol", "field", "--no-progress"]
    assert a.argv(["--results-root", "/r"])[3:] == ["run", "--method", "mt", "--dataset", "acdc", "--labeled", "3",
                                                    "--seed", "0", "--split-seed", "0", "--protocol", "field",
                                                    "--results-root", "/r"]
    grid = expand(["mt", "cps"], "acdc", [3, 7], [0.1], [0, 1], [0], ["--set", "lr=0.02"])
    assert len(grid) == 2 * 3 * 2 and len({j.name for j in grid}) == 12


# -- the plan --------------------------------------------------------------------------------------
def _jobs(methods=("unet-l", "mt"), seeds=(0,), iterations=4, extra=()):
    return expand(list(methods), "tiny-test", [2], [], list(seeds), [0], ["--iterations", str(iterations), *SMALL, *extra])


def _write_steps_json(folder: Path, seconds: dict[str, float], size=24, device="cpu", lb=2, ulb=2):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"steps_{device}_{size}px.json").write_text(json.dumps({
        "device": device, "image_size": size, "labeled_bs": lb, "unlabeled_bs": ulb,
        "methods": [{"method": m, "seconds_per_step": s, "stages": {}} for m, s in seconds.items()]}))


def test_plan_orders_longest_first_and_skips_finished_runs(tmp_path):
    from ssl_bench import engine

    bench = tmp_path / "bench"
    _write_steps_json(bench, {"unet-l": 0.5, "mt": 1.0, "cct": 3.0})
    root = tmp_path / "results"
    jobs = _jobs(("unet-l", "mt", "cct"), seeds=(0, 1), iterations=4)
    p = plan(jobs, root, bench_dirs=[bench])
    assert [pj.job.method for pj in p.jobs] == ["cct", "cct", "mt", "mt", "unet-l", "unet-l"]
    assert [pj.remaining_s for pj in p.jobs] == [12.0, 12.0, 4.0, 4.0, 2.0, 2.0]
    assert p.device_hours == pytest.approx(36.0 / 3600)
    assert str(bench / "steps_cpu_24px.json") in p.jobs[0].estimate.source

    # finish one job the way `ssl-bench run` would: the plan finds its run dir and skips it
    done = next(pj for pj in p.jobs if pj.job.method == "mt")
    spec = RunSpec(method="mt", dataset="tiny-test", labeled=2, seed=done.job.seed,
                   overrides={"iterations": "4", "labeled_bs": "2", "unlabeled_bs": "2", "image_size": "24"})
    prepared = engine.prepare(spec, tmp_path / "data", root)
    assert prepared.run_dir == done.run_dir
    engine.fit(prepared, progress=False)
    again = plan(jobs, root, bench_dirs=[bench])
    assert [pj.job.name for pj in again.finished] == [done.job.name]
    assert len(again.todo) == 5 and again.jobs[-1].finished
    text = again.describe()
    assert "6 job(s): 1 already finished (skipped), 5 to run" in text
    # the finished run measured its own cost: the remaining mt job is now estimated from it
    # (unet-l's benchmarked step saw its 2 labeled slices only: a source line of its own)
    assert f"  cct: {bench / 'steps_cpu_24px.json'} (24 px, 2+2 slices, cpu)" in text
    assert f"  unet-l: {bench / 'steps_cpu_24px.json'} (24 px, 2 labeled slices, cpu)" in text
    assert f"  mt: median of 1 finished run(s) under {root}" in text


def test_plan_refuses_two_jobs_of_one_run():
    jobs = [Job("mt", "tiny-test", ("--labeled", "2"), 0, 0, ["--iterations", "4"]),
            Job("mt", "tiny-test", ("--labeled", "2"), 0, 0, ["--iterations", "4", "--set", "lr=0.01"])]
    with pytest.raises(ValueError, match="are the same run"):
        plan(jobs, "results", bench_dirs=[])
    with pytest.raises(ValueError, match="appears twice"):
        plan([jobs[0], jobs[0]], "results", bench_dirs=[])
    with pytest.raises(ValueError, match="No such option: --bogus"):
        plan([Job("mt", "tiny-test", ("--labeled", "2"), 0, 0, ["--bogus"])], "results", bench_dirs=[])


def _resolved(tmp_path, method, size=24, lb=2, ulb=2, amp="false"):
    from ssl_bench.sweep.plan import resolve

    job = Job(method, "tiny-test", ("--labeled", "2"), 0, 0,
              ["--iterations", "8", "--set", f"image_size={size}", "--set", f"labeled_bs={lb}",
               "--set", f"unlabeled_bs={ulb}", "--set", f"amp={amp}"])
    return resolve(job, ["--results-root", str(tmp_path / "results")])


def test_estimates_prefer_finished_runs_then_the_bench_csv_then_steps_json_and_scale_by_pixels(tmp_path):
    bench = tmp_path / "bench"
    _write_steps_json(bench, {"gcl": 9.0}, size=48, lb=2, ulb=2)
    run = _resolved(tmp_path, "gcl", size=24)
    times = StepTimes(tmp_path / "results", [bench])
    est = times.estimate(run, "cpu")
    assert est.seconds_per_iteration == pytest.approx(9.0 / 4)  # a quarter of the pixels per batch
    assert "scaled x0.25 to 24 px, 2+2 slices" in est.source and "steps_cpu_48px.json" in est.source

    # the CSV (per stage, weighted by GCL's 0.25 / 0.25 / 0.5 of the iterations) comes first;
    # rows with AMP, channels_last or compile do not describe a plain fp32 run
    header = "device,method,stage,image_size,labeled_bs,unlabeled_bs,amp,channels_last,compile,median_step_s,peak_mem_mb,ratio_to_unet_l\n"
    rows = ["cpu,gcl,global,24,2,2,false,false,false,1.0,10,1", "cpu,gcl,local,24,2,2,false,false,false,2.0,10,1",
            "cpu,gcl,finetune,24,2,2,false,false,false,4.0,10,1", "cpu,gcl,global,24,2,2,true,false,false,0.1,10,1",
            "cpu,gcl,local,24,2,2,true,false,false,0.1,10,1", "cpu,gcl,finetune,24,2,2,true,false,false,0.1,10,1",
            "NVIDIA H200,gcl,all,24,2,2,false,false,false,0.01,10,1"]
    (bench / "steps.csv").write_text(header + "\n".join(rows) + "\n")
    (bench / "other.csv").write_text("a,b\n1,2\n")  # another benchmark's table is ignored
    times = StepTimes(tmp_path / "results", [bench])
    assert times.estimate(run, "cpu").seconds_per_iteration == pytest.approx(0.25 * 1 + 0.25 * 2 + 0.5 * 4)
    assert times.estimate(_resolved(tmp_path, "gcl", amp="true"), "cpu").seconds_per_iteration == pytest.approx(0.1)
    gpu = times.estimate(run, "cuda")
    assert gpu.seconds_per_iteration == pytest.approx(0.01) and "NVIDIA H200" in gpu.source

    # a finished run's own cost comes before any benchmark
    run_dir = tmp_path / "results" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "tags.json").write_text(json.dumps({"method": "gcl"}))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "finished", "cost": {
        "device": "cpu", "image_size": 24, "labeled_bs": 2, "unlabeled_bs": 2, "seconds_per_iteration": 0.7}}))
    times = StepTimes(tmp_path / "results", [bench])
    assert times.estimate(run, "cpu").seconds_per_iteration == pytest.approx(0.7)
    # no GPU measurement among the runs: the CSV's GPU row, not the CPU run
    assert times.estimate(run, "cuda").seconds_per_iteration == pytest.approx(0.01)
    # nothing measured on a GPU at all: a CPU figure, said to be one
    only_cpu = StepTimes(tmp_path / "nothing", [tmp_path / "empty"])
    assert only_cpu.estimate(run, "cuda") is None
    _write_steps_json(tmp_path / "cpu-only", {"gcl": 2.0})
    est = StepTimes(tmp_path / "nothing", [tmp_path / "cpu-only"]).estimate(run, "cuda")
    assert est.seconds_per_iteration == 2.0 and "measured on cpu, not on the sweep's kind of device" in est.source


def test_benchmark_estimates_are_scaled_by_how_much_slower_the_finished_runs_went(tmp_path):
    """The step benchmark leaves out validation, checkpoints, data and the machine's other load;
    finished runs measured all of it. A method with no finished run of its own is estimated from
    the CSV times the median ratio measured / benchmarked over the finished runs' methods."""
    bench = tmp_path / "bench"
    bench.mkdir()
    header = "device,method,stage,image_size,labeled_bs,unlabeled_bs,amp,channels_last,compile,median_step_s\n"
    rows = ["cpu,unet-l,train,24,2,2,false,false,false,0.5", "cpu,mt,train,24,2,2,false,false,false,1.0",
            "cpu,uamt,train,24,2,2,false,false,false,2.0", "cpu,gcl,global,24,2,2,false,false,false,1.0",
            "cpu,gcl,local,24,2,2,false,false,false,1.0", "cpu,gcl,finetune,24,2,2,false,false,false,1.0",
            "NVIDIA H200,uamt,train,24,2,2,false,false,false,0.1"]
    (bench / "steps.csv").write_text(header + "\n".join(rows) + "\n")

    def finished(name, method, size, seconds, device="cpu"):
        d = tmp_path / "results" / name
        d.mkdir(parents=True)
        (d / "tags.json").write_text(json.dumps({"method": method}))
        (d / "metrics.json").write_text(json.dumps({"status": "finished", "cost": {
            "device": device, "image_size": size, "labeled_bs": 2, "unlabeled_bs": 2, "seconds_per_iteration": seconds}}))

    run = _resolved(tmp_path, "uamt", size=24)
    assert StepTimes(tmp_path / "results", [bench]).estimate(run, "cpu").seconds_per_iteration == pytest.approx(2.0)
    finished("a", "unet-l", 24, 1.5)  # 3 x its benchmarked 0.5
    finished("b", "mt", 48, 8.0)  # 4 x the pixels: benchmarked 4.0, so 2 x
    finished("c", "gcl", 24, 30.0)  # three stages in the CSV: takes no part
    finished("d", "mt", 24, 50.0, device="cuda:0 (NVIDIA H200)")  # another kind of device: no part on cpu
    times = StepTimes(tmp_path / "results", [bench])
    assert times.calibration(run, "cpu") == (pytest.approx(2.5), ["mt", "unet-l"])
    est = times.estimate(run, "cpu")
    assert est.seconds_per_iteration == pytest.approx(2.0 * 2.5)
    assert "x2.50: the finished runs under" in est.source and "(mt, unet-l) took 2.50 x their benchmarked step" in est.source
    # a method with a finished run of its own is estimated from it, unscaled
    assert times.estimate(_resolved(tmp_path, "mt", size=48), "cpu").seconds_per_iteration == pytest.approx(8.0)
    # on a GPU: mt's GPU run has no GPU benchmark row to compare with, so uamt's GPU row stands as measured
    gpu = times.estimate(run, "cuda")
    assert gpu.seconds_per_iteration == pytest.approx(0.1) and "took" not in gpu.source


def test_a_supervised_only_step_counts_the_images_it_saw(tmp_path):
    """The step benchmark's UNet-L row sees its labeled images only; a protocol's UNet-L run with
    ``supervised_whole_batch`` fills the whole batch with labeled ones. The estimate and the
    calibration count each as it ran: 2 images benchmarked, 4 trained on (not 4 against 4)."""
    bench = tmp_path / "bench"
    bench.mkdir()
    header = "device,method,stage,image_size,labeled_bs,unlabeled_bs,amp,channels_last,compile,median_step_s\n"
    rows = ["cpu,unet-l,train,24,2,2,false,false,false,0.5", "cpu,uamt,train,24,2,2,false,false,false,2.0"]
    (bench / "steps.csv").write_text(header + "\n".join(rows) + "\n")
    times = StepTimes(tmp_path / "results", [bench])
    plain = _resolved(tmp_path, "unet-l", size=24)
    assert times.estimate(plain, "cpu").seconds_per_iteration == pytest.approx(0.5)
    whole = _resolved(tmp_path, "unet-l", size=24)
    whole.train_cfg.supervised_whole_batch = True
    est = times.estimate(whole, "cpu")
    assert est.seconds_per_iteration == pytest.approx(1.0)  # 4 labeled images against the row's 2
    assert "(24 px, 2 labeled slices, cpu), scaled x2 to 24 px, 4 labeled slices" in est.source

    d = tmp_path / "results" / "a"
    d.mkdir(parents=True)
    (d / "tags.json").write_text(json.dumps({"method": "unet-l"}))
    (d / "config.json").write_text(json.dumps({"train": {"supervised_whole_batch": True}}))
    (d / "metrics.json").write_text(json.dumps({"status": "finished", "cost": {
        "device": "cpu", "image_size": 24, "labeled_bs": 2, "unlabeled_bs": 2, "seconds_per_iteration": 1.5}}))
    times = StepTimes(tmp_path / "results", [bench])
    # 1.5 s for 4 images against a benchmarked 0.5 s for 2: 1.5 x, not 3 x
    assert times.calibration(_resolved(tmp_path, "uamt"), "cpu") == (pytest.approx(1.5), ["unet-l"])
    assert times.estimate(_resolved(tmp_path, "uamt"), "cpu").seconds_per_iteration == pytest.approx(3.0)
    # its own finished run is read as 4 labeled images: a plain UNet-L job (2 images) takes half
    assert times.estimate(plain, "cpu").seconds_per_iteration == pytest.approx(0.75)


# -- local slots -----------------------------------------------------------------------------------
def test_slots(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = gpu_slots(["3", "7"], jobs_per_gpu=2, cpu_count=8)
    assert [s.name for s in slots] == ["gpu 3 #1", "gpu 7 #1", "gpu 3 #2", "gpu 7 #2"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "7", "3", "7"]
    assert {s.env["OMP_NUM_THREADS"] for s in slots} == {"2"}
    assert [s.env["SSL_BENCH_GPU_SLOT"] for s in slots] == [s.name for s in slots]
    assert [s.env for s in cpu_slots(2)] == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
                                              "MKL_NUM_THREADS": "1"}] * 2
    assert make_slots("0,1", 1)[1] == "cuda" and make_slots("none", cpu_jobs=3)[0] == cpu_slots(3)
    with pytest.raises(ValueError, match="--jobs-per-gpu"):
        make_slots("0", cpu_jobs=2)
    with pytest.raises(ValueError, match="--gpus"):
        make_slots(",")


# each fake job records the device it saw and when it ran, then sleeps a little
RECORD = textwrap.dedent("""
    import json, os, sys, time
    t0 = time.time()
    time.sleep(0.4)
    with open(sys.argv[1], "w") as f:
        json.dump({"device": os.environ["CUDA_VISIBLE_DEVICES"], "start": t0, "end": time.time()}, f)
""")


def _manifest(tmp_path, jobs: dict[str, list[str]]) -> Manifest:
    folder = tmp_path / "sweeps" / "test"
    data = {"id": "test", "executor": "local", "jobs": [
        {"name": n, "argv": argv, "run_dir": str(tmp_path / "runs" / n), "iterations": 10,
         "log": str(folder / "logs" / f"{n}.log")} for n, argv in jobs.items()]}
    return Manifest(folder / "manifest.json", data)


def test_gpu_ids_map_through_an_inherited_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots, device = make_slots("0,1", 1)
    assert device == "cuda" and [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "5"]
    assert [s.name for s in slots] == ["gpu 0 (CUDA_VISIBLE_DEVICES=3)", "gpu 1 (CUDA_VISIBLE_DEVICES=5)"]
    out = tmp_path / "out"
    out.mkdir()
    manifest = _manifest(tmp_path, {n: [sys.executable, "-c", RECORD, str(out / f"{n}.json")] for n in ("a", "b")})
    assert run_local(manifest, ["a", "b"], slots, poll_s=0.05) == {"a": 0, "b": 0}
    assert sorted(json.loads((out / f"{n}.json").read_text())["device"] for n in ("a", "b")) == ["3", "5"]
    # UUIDs pass through by position; an id past the inherited list, or a list that hides every GPU, is refused
    assert visible_gpus(["1"], "GPU-aa, GPU-bb") == ["GPU-bb"]
    with pytest.raises(ValueError, match=r"GPU id 2 is not among the 2 GPU\(s\) this shell sees \(CUDA_VISIBLE_DEVICES='3,5'"):
        make_slots("0,2", 1)
    with pytest.raises(ValueError, match="hides every GPU"):
        visible_gpus(["0"], "")


def test_a_job_on_a_gpu_slot_that_sees_no_gpu_fails_naming_the_slot_and_the_variable(tmp_path, monkeypatch):
    """Run through the sweep's own launcher: the job exits non-zero before writing its run dir, and
    ``--set device=cuda`` without CUDA is an error too (never a CPU run)."""
    import torch

    from ssl_bench.engine import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SSL_BENCH_GPU_SLOT", "gpu 1 (CUDA_VISIBLE_DEVICES=5)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(ValueError, match=r"sweep slot 'gpu 1 \(CUDA_VISIBLE_DEVICES=5\)' \(CUDA_VISIBLE_DEVICES='5'\): "
                                         "this job sees no GPU"):
        pick_device("auto")
    with pytest.raises(ValueError, match="device=cuda: CUDA is not available on sweep slot"):
        pick_device("cuda")
    monkeypatch.delenv("SSL_BENCH_GPU_SLOT")
    assert pick_device("auto").type == "cpu"  # outside a GPU slot, auto may mean the CPU
    with pytest.raises(ValueError, match="device=cuda: CUDA is not available on this machine"):
        pick_device("cuda")
    monkeypatch.undo()

    # a real `ssl-bench run` on a slot whose GPU does not exist (an id no machine has)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    from scale_jobs import cli, run_options, toy_dataset

    results = tmp_path / "results"
    argv = cli("run", *run_options(toy_dataset(tmp_path / "toy"), "mt", iterations=2), "--no-progress",
               "--results-root", str(results))
    manifest = _manifest(tmp_path, {"j": argv})
    codes = run_local(manifest, ["j"], gpu_slots(["999"]), poll_s=0.1)
    log = Path(manifest.job("j")["log"]).read_text()
    assert codes["j"] != 0 and "sweep slot 'gpu 999'" in log and "CUDA_VISIBLE_DEVICES='999'" in log, log
    assert not any(results.rglob("config.json"))


def test_local_slots_are_never_oversubscribed_and_each_job_sees_only_its_device(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    names = [f"job{i}" for i in range(10)]
    manifest = _manifest(tmp_path, {n: [sys.executable, "-c", RECORD, str(out / f"{n}.json")] for n in names})
    codes = run_local(manifest, names, gpu_slots(["3", "7"], jobs_per_gpu=2), poll_s=0.05)
    assert codes == {n: 0 for n in names}
    records = {n: json.loads((out / f"{n}.json").read_text()) for n in names}
    for n in names:  # the device the job saw is the one of the slot it was given
        assert records[n]["device"] == manifest.job(n)["slot"].split()[1]
    for device in ("3", "7"):
        spans = [(r["start"], r["end"]) for r in records.values() if r["device"] == device]
        for t, _ in spans:  # at no start are more than 2 jobs (the GPU's slots) running on it
            assert sum(s <= t < e for s, e in spans) <= 2
    assert {r["device"] for r in records.values()} == {"3", "7"}
    saved = json.loads(manifest.path.read_text())
    assert all(j["exit_code"] == 0 and j["pid"] > 0 for j in saved["jobs"])


SWEEP_UNDER_SIGINT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from ssl_bench.sweep.local import SweepInterrupted, cpu_slots, run_local
    from ssl_bench.sweep.manifest import Manifest
    manifest = Manifest.load(Path(sys.argv[1]))
    try:
        run_local(manifest, [j["name"] for j in manifest.jobs], cpu_slots(2), poll_s=0.05, grace_s=5)
    except SweepInterrupted as exc:
        print("interrupted:", exc)
        sys.exit(130)
""")

# a job that, like `ssl-bench run`, turns SIGINT into a clean exit, after telling it did
SLOW_JOB = textwrap.dedent("""
    import sys, time
    open(sys.argv[1], "w").write("started")
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        open(sys.argv[1], "w").write("interrupted")
        sys.exit(1)
""")


def test_ctrl_c_stops_every_child_and_records_it(tmp_path):
    names = ["a", "b", "c"]
    manifest = _manifest(tmp_path, {n: [sys.executable, "-c", SLOW_JOB, str(tmp_path / f"{n}.state")] for n in names})
    manifest.write()
    # started as a script's background job is (`sweep &`): SIGINT ignored, inherited by the sweep;
    # Ctrl-C must still stop it, and its jobs must not inherit the ignore
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP_UNDER_SIGINT, str(manifest.path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 120
    while not ((tmp_path / "a.state").exists() and (tmp_path / "b.state").exists()):
        assert time.time() < deadline and sweep.poll() is None, sweep.communicate()[0]
        time.sleep(0.05)
    sweep.send_signal(signal.SIGINT)
    out = sweep.communicate(timeout=60)[0]
    assert sweep.returncode == 130 and "stopped 2 running job(s)" in out, out
    saved = Manifest.load(manifest.path)
    for n in ("a", "b"):
        entry = saved.job(n)
        assert (tmp_path / f"{n}.state").read_text() == "interrupted"  # each child got SIGINT
        assert entry["interrupted"] and entry["exit_code"] == 1
        with pytest.raises(ProcessLookupError):
            os.kill(entry["pid"], 0)
        assert job_status(entry).state == "stopped"
    assert not (tmp_path / "c.state").exists() and "pid" not in saved.job("c")  # never started
    assert job_status(saved.job("c")).state == "queued"


# -- job states ------------------------------------------------------------------------------------
def test_job_states_from_run_dirs_and_logs(tmp_path):
    run_dir = tmp_path / "run"
    entry = {"name": "j", "run_dir": str(run_dir), "iterations": 40, "log": str(tmp_path / "j.log")}
    assert (job_status(entry).state, job_status(entry).progress) == ("queued", "")
    (run_dir).mkdir()
    (run_dir / "tags.json").write_text(json.dumps({"status": "running"}))
    (run_dir / "log.jsonl").write_text('{"step": 5, "metrics": {}}\n{"step": 10, "metrics": {}}\n{"step": 1')
    assert last_step(run_dir) == 10  # a partial last line is skipped
    s = job_status({**entry, "slurm_job_id": "4242_3"})  # e.g. a Slurm task: known from its run only
    assert (s.state, s.progress) == ("running", "10/40 (25%)") and s.detail.startswith("4242_3 logged")
    Path(entry["log"]).write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n\n")
    assert last_line(entry["log"]) == "RuntimeError: CUDA out of memory"
    s = job_status({**entry, "exit_code": 1})
    assert s.state == "failed" and s.detail == "exit 1: RuntimeError: CUDA out of memory"
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    s = job_status({**entry, "pid": gone.pid, "host": socket.gethostname()})
    assert s.state == "stopped" and "re-run the sweep" in s.detail
    s = job_status({**entry, "pid": os.getpid(), "host": socket.gethostname(), "slot": "gpu 1"})
    assert s.state == "running" and s.detail.startswith("gpu 1, logged")
    (run_dir / "tags.json").write_text(json.dumps({"status": "failed", "status_message": "TrainingDiverged: nan"}))
    Path(entry["log"]).unlink()
    assert (job_status(entry).state, job_status(entry).detail) == ("failed", "TrainingDiverged: nan")
    (run_dir / "metrics.json").write_text(json.dumps({"status": "finished", "cost": {"device_hours": 0.25}}))
    s = job_status({**entry, "exit_code": 0})
    assert (s.state, s.progress, s.detail) == ("finished", "40/40", "0.250 device-h")


# -- the command line ------------------------------------------------------------------------------
def test_sweep_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    res = runner.invoke(app, ["sweep", "--methods", "unet-l,mt", "--dataset", "tiny-test", "--labeled", "2",
                              "--seeds", "0,1", "--iterations", "30", "--dry-run", *SMALL,
                              "--results-root", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    assert "4 job(s): 0 already finished (skipped), 4 to run" in res.output
    # estimated from the checkout's step benchmark (results/bench/), scaled to 24 px
    assert "  mt: " in res.output and "results/bench/" in res.output and "scaled x" in res.output
    assert "  unet-l: " in res.output and "labeled slices" in res.output
    assert not (tmp_path / "results" / "sweeps").exists()


def test_sweep_split_reaches_every_job(tmp_path, monkeypatch):
    """--split random with --split-seeds: each job draws its own labeled set (and the default
    split adds nothing to the command line)."""
    import ssl_bench.sweep as sweep_pkg

    seen = {}
    monkeypatch.setattr(sweep_pkg, "launch", lambda jobs, **kw: seen.setdefault("jobs", jobs) and {})
    res = runner.invoke(app, ["sweep", "--methods", "unet-l", "--dataset", "tiny-test", "--labeled", "2",
                              "--split", "random", "--split-seeds", "1,2", "--results-root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert [(j.split_seed, j.run_args()[-2:]) for j in seen["jobs"]] == [(1, ["--split", "random"]),
                                                                         (2, ["--split", "random"])]
    seen.clear()
    runner.invoke(app, ["sweep", "--methods", "unet-l", "--dataset", "tiny-test", "--labeled", "2",
                        "--results-root", str(tmp_path)])
    assert "--split" not in seen["jobs"][0].run_args()


@pytest.mark.parametrize("args, message", [
    (["--dataset", "tiny-test", "--labeled", "2"], "give --methods and --dataset"),
    (["--methods", "nope", "--dataset", "tiny-test", "--labeled", "2"], "unknown method 'nope'"),
    (["--methods", "mt", "--dataset", "tiny-test"], "give at least one --labeled N or --ratio r"),
    (["--methods", "mt", "--dataset", "tiny-test", "--labeled", "2", "--time", "soon"], "--time 'soon'"),
    (["--methods", "mt", "--dataset", "tiny-test", "--labeled", "2", "--executor", "slurm", "--slurm-arg", "=x"],
     "--slurm-arg '=x'"),
    (["--methods", "mt", "--dataset", "tiny-test", "--labeled", "2", "--gpus", "0", "--jobs", "2"], "--jobs-per-gpu"),
])
def test_bad_sweep_arguments(tmp_path, args, message):
    res = runner.invoke(app, ["sweep", *args, "--results-root", str(tmp_path / "r")])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_sweep_status_names_a_missing_sweep(tmp_path):
    res = runner.invoke(app, ["sweep", "status", "--results-root", str(tmp_path)])
    assert res.exit_code == 2 and "no sweep under" in res.output
    res = runner.invoke(app, ["sweep", "status", "--results-root", str(tmp_path), "--sweep", "abc"])
    assert res.exit_code == 2 and "no sweep 'abc'" in res.output


def test_sweep_id_tells_protocol_versions_apart(tmp_path):
    """The same command under field v1 and v2 plans the same job names but other run dirs: each
    gets its own sweep folder; the same plan again reuses its folder (relative run dirs, so the
    id does not depend on where the results root is)."""
    from ssl_bench.sweep.manifest import sweep_id_of
    from ssl_bench.sweep.plan import Job, PlannedJob

    job = Job("mt", "acdc", ("--labeled", "3"), 0, 0, ["--protocol", "field"])

    def plan(root, version):
        return [PlannedJob(job, root / "acdc" / "3lab" / f"field-v{version}" / "mt" / "seed0-split0-abc", 1000, 0,
                           False, None, "mt")]

    v1, v2 = sweep_id_of(tmp_path, plan(tmp_path, 1)), sweep_id_of(tmp_path, plan(tmp_path, 2))
    assert v1 != v2
    assert sweep_id_of(tmp_path / "elsewhere", plan(tmp_path / "elsewhere", 2)) == v2
