"""Real, tiny ``ssl-bench run`` jobs for the scale tests (sweeps, Slurm, tracking server): a toy
dataset in the nnU-Net layout (7 training + 2 test volumes of 3 x 16 x 16) and options that make
a job last seconds, so that several real processes can run, be killed and resume on 2 cores."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ct_fakes import make_nnunet

# GCL: three stages (global 10, local 10, finetune 20 of 40 iterations); a checkpoint and a log
# line every step, so a kill lands mid-stage and the resume starts there
TINY = ["--set", "image_size=16", "--set", "labeled_bs=2", "--set", "unlabeled_bs=2", "--set", "val_every=10",
        "--set", "checkpoint_every=1", "--set", "log_every=1"]
ITERATIONS = 40


def toy_dataset(root: Path) -> Path:
    """The toy nnU-Net dataset folder, its slice cache built (a job then only reads it)."""
    from typer.testing import CliRunner

    from ssl_bench.cli import app

    folder = make_nnunet(root, [f"case_{i}" for i in range(7)], test_cases=["t_0", "t_1"])
    res = CliRunner().invoke(app, ["data", "prepare", "nnunet", str(folder), "--size", "16"])
    assert res.exit_code == 0, res.output
    return folder


def run_options(data: Path, method: str = "gcl", seed: int = 0, iterations: int = ITERATIONS) -> list[str]:
    return ["--method", method, "--dataset", "nnunet", "--data-root", str(data), "--labeled", "2",
            "--seed", str(seed), "--iterations", str(iterations), *TINY]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ssl_bench.cli", *args]


def job_env(tracking_uri: str | None = None) -> dict[str, str]:
    """One thread per job; the store is ``tracking_uri`` (None: the default under the results root)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def wait_for(predicate, what: str, timeout_s: float = 600, proc=None, poll_s: float = 0.02):
    """Poll until ``predicate()`` is truthy; fail naming ``what`` (and ``proc``'s output if it died)."""
    deadline = time.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}:\n{out}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def run_dirs(results_root: Path) -> list[Path]:
    from ssl_bench.run_index import find_run_dirs

    return find_run_dirs(results_root)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
