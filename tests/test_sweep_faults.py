"""Faults survived: a job killed with SIGKILL in the middle of a stage of a multi-stage method
(GCL), then the sweep re-run, gives the test metrics of an uninterrupted run (CPU, deterministic)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from scale_jobs import ITERATIONS, cli, job_env, metrics, run_dirs, run_options, toy_dataset, wait_for
from ssl_bench.sweep.status import last_step


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy"))


def _manifest_entry(root):
    paths = list((root / "sweeps").glob("*/manifest.json")) if (root / "sweeps").exists() else []
    if not paths:
        return None
    entry = json.loads(paths[0].read_text())["jobs"][0]
    return entry if entry.get("pid") else None


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_gives_the_metrics_of_an_uninterrupted_run(tmp_path, toy):
    options = run_options(toy, "gcl")
    # the reference: the same job, uninterrupted
    ref = subprocess.run(cli("run", *options, "--no-progress", "--results-root", str(tmp_path / "ref")),
                         env=job_env(), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    (ref_dir,) = run_dirs(tmp_path / "ref")

    root = tmp_path / "sweep"
    sweep = cli("sweep", "--methods", "gcl", "--dataset", "nnunet", "--data-root", str(toy), "--labeled", "2",
                "--seeds", "0", "--iterations", str(ITERATIONS), *options[options.index("--set"):],
                "--gpus", "none", "--jobs", "1", "--results-root", str(root))
    first = subprocess.Popen(sweep, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    entry = wait_for(lambda: _manifest_entry(root), "the job to start", proc=first)
    run_dir = Path(entry["run_dir"])
    # GCL: global steps 1-10, local 11-20, finetune 21-40; kill inside the local stage
    wait_for(lambda: last_step(run_dir) >= 13, "step 13 (stage local)", proc=first)
    os.kill(entry["pid"], signal.SIGKILL)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 1 and "1 of 1 jobs failed" in out, out
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["state"]
    assert state["stage"] == 1 and 0 < state["step"] < 10, state  # mid-stage: the resume starts there
    assert not (run_dir / "metrics.json").exists()

    status = subprocess.run(cli("sweep", "status", "--results-root", str(root)), env=job_env(),
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 1 and "failed" in status.stdout and "exit -9" in status.stdout, status.stdout

    again = subprocess.run(sweep, env=job_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 job(s): 0 already finished (skipped), 1 to run (1 resume from a checkpoint)" in again.stdout
    log = Path(entry["log"]).read_text()
    assert "resuming" in log and "stage local" in log
    assert metrics(run_dir)["flat"] == metrics(ref_dir)["flat"]
    assert metrics(run_dir)["stages"] == {"global": 10, "local": 10, "finetune": 20}

    third = subprocess.run(sweep, env=job_env(), capture_output=True, text=True, timeout=900)
    assert third.returncode == 0 and "1 already finished (skipped), 0 to run" in third.stdout
