"""Run many ``ssl-bench run`` jobs through a small pool of local slots.

Each job is a subprocess with its own ``CUDA_VISIBLE_DEVICES`` slot on a GPU machine, or one
CPU thread on a CPU-only machine (two 1-thread jobs on 2 cores beat one 2-thread job by far).
Jobs are idempotent (a finished run is skipped), so re-running a sweep resumes it. Jobs start
longest first (``order``) so that the pool drains evenly.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    method: str
    dataset: str
    setting: tuple[str, str]  # ("--labeled", "3") or ("--ratio", "0.05")
    seed: int
    split_seed: int
    extra: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "ssl_bench.cli", "run", "--method", self.method, "--dataset", self.dataset,
                *self.setting, "--seed", str(self.seed), "--split-seed", str(self.split_seed), "--no-progress",
                *self.extra]

    @property
    def name(self) -> str:
        return f"{self.method} {self.dataset} {' '.join(self.setting)} seed{self.seed} split{self.split_seed}"


def expand(methods, dataset, labeled, ratios, seeds, split_seeds, extra) -> list[Job]:
    settings = [("--labeled", str(n)) for n in labeled] + [("--ratio", str(r)) for r in ratios]
    return [Job(m, dataset, s, seed, ss, list(extra))
            for m, s, seed, ss in itertools.product(methods, settings, seeds, split_seeds)]


def run_pool(jobs: list[Job], slots: list[dict[str, str]], log_dir: Path, console=None) -> dict[str, int]:
    """Run ``jobs`` with one subprocess per slot (a slot = extra environment variables)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: list[tuple[subprocess.Popen, Job, dict, float, object]] = []
    free = list(slots)
    codes: dict[str, int] = {}
    say = console.print if console is not None else print
    while pending or running:
        while pending and free:
            job, slot = pending.pop(0), free.pop(0)
            log = open(log_dir / (job.name.replace(" ", "_").replace("--", "") + ".log"), "w")
            proc = subprocess.Popen(job.argv(), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **slot})
            running.append((proc, job, slot, time.time(), log))
            say(f"started  {job.name}")
        time.sleep(1.0)
        for item in list(running):
            proc, job, slot, t0, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            free.append(slot)
            codes[job.name] = proc.returncode
            state = "finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log.name})"
            say(f"{state:8} {job.name} in {time.time() - t0:.0f} s")
    return codes


def cpu_or_gpu_slots(jobs: int = 0) -> tuple[list[dict[str, str]], list[str]]:
    """One slot per GPU (its own ``CUDA_VISIBLE_DEVICES``), else one single-thread slot per core;
    returns (slots, extra ``ssl-bench run`` args every job needs)."""
    import torch

    n_gpu = torch.cuda.device_count()
    n_slots = jobs or n_gpu or (os.cpu_count() or 1)
    if n_gpu:
        return [{"CUDA_VISIBLE_DEVICES": str(i % n_gpu)} for i in range(n_slots)], []
    return [{"OMP_NUM_THREADS": "1"} for _ in range(n_slots)], ["--set", "threads=1"]


def launch(jobs: list[Job], *, results_root: Path, jobs_in_parallel: int = 0, console=None) -> dict[str, int]:
    """Run ``jobs`` on this machine's slots; returns each job's exit code by name."""
    slots, extra = cpu_or_gpu_slots(jobs_in_parallel)
    for job in jobs:
        job.extra = [*job.extra, *extra]
    return run_pool(jobs, slots, Path(results_root) / "sweep-logs", console)
