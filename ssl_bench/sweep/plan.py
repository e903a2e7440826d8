"""The plan before the work: the grid of jobs, what is already finished, an estimate of the
device-hours left, and the order to start them in (longest first, so that the pool drains evenly).

A job is one ``ssl-bench run`` command line: what it does is identical under every executor.
The plan resolves each job through the options and ``prepare`` of ``ssl-bench run``
(``runargs.parse_run_args`` and ``runargs.prepare_run``, below the CLI), so it knows the run dir
the job will use without assuming a layout, and finds there whether the run is finished (``metrics.json``) or how far it got (``log.jsonl``).
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ssl_bench.sweep.estimate import Estimate, StepTimes


@dataclass
class Job:
    """One ``ssl-bench run``: a method, dataset, labeled setting, seeds and any extra run options
    (``--protocol field``, ``--set method.variant=...``, ``--iterations N``)."""

    method: str
    dataset: str
    setting: tuple[str, str]  # ("--labeled", "3") or ("--ratio", "0.05")
    seed: int
    split_seed: int
    extra: list[str] = field(default_factory=list)

    def run_args(self) -> list[str]:
        """The options of ``ssl-bench run`` that define the run."""
        return ["--method", self.method, "--dataset", self.dataset, *self.setting, "--seed", str(self.seed),
                "--split-seed", str(self.split_seed), *self.extra]

    def argv(self, runtime: Sequence[str] = ("--no-progress",)) -> list[str]:
        """The command line; ``runtime`` adds where to run it (roots, tracking URI), not what."""
        return [sys.executable, "-m", "ssl_bench.cli", "run", *self.run_args(), *runtime]

    @property
    def name(self) -> str:
        """Unique per job: jobs that differ only in their extra options differ in the hash."""
        base = f"{self.method} {self.dataset} {' '.join(self.setting)} seed{self.seed} split{self.split_seed}"
        if not self.extra:
            return base
        return f"{base} #{hashlib.sha1(json.dumps(self.extra).encode()).hexdigest()[:6]}"

    @property
    def file_stem(self) -> str:
        """The name as a file name (logs)."""
        return re.sub(r"[^A-Za-z0-9_.=#-]+", "_", self.name.replace("--", "")).strip("_")


def expand(methods, dataset, labeled, ratios, seeds, split_seeds, extra) -> list[Job]:
    """The grid: every method x labeled setting x seed x split seed, each with ``extra``."""
    settings = [("--labeled", str(n)) for n in labeled] + [("--ratio", str(r)) for r in ratios]
    return [Job(m, dataset, s, seed, ss, list(extra))
            for m, s, seed, ss in itertools.product(methods, settings, seeds, split_seeds)]


def runtime_args(results_root: Path, data_root: Path | None = None, tracking_uri: str | None = None) -> list[str]:
    """What every job of a sweep is given besides its own options: where to read and write."""
    args = ["--no-progress", "--results-root", str(results_root)]
    if data_root is not None:
        args += ["--data-root", str(Path(data_root).expanduser().resolve())]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    return args


# -- resolving a job like `ssl-bench run` does ---------------------------------------------------
def resolve(job: Job, runtime: Sequence[str] = ()):
    """The ``engine.PreparedRun`` of a job's command line (validated, nothing written)."""
    from ssl_bench.runargs import parse_run_args, prepare_run

    args = [*job.run_args(), *runtime]
    try:
        params = parse_run_args(args)
    except ValueError as exc:  # a usage error, worded as the command line words it
        raise ValueError(f"job {job.name}: {exc} (in: ssl-bench run {' '.join(args)})") from None
    wanted = inspect.signature(prepare_run).parameters
    return prepare_run(**{k: params[k] for k in wanted})


# -- the plan -------------------------------------------------------------------------------------
@dataclass
class PlannedJob:
    job: Job
    run_dir: Path
    iterations: int  # the run's total gradient steps
    done_iterations: int  # reached by an earlier attempt (its log), all of them when finished
    finished: bool
    estimate: Estimate | None  # seconds per iteration on the sweep's device, and where it came from
    method: str  # the method of the resolved run

    @property
    def remaining_s(self) -> float | None:
        if self.finished:
            return 0.0
        if self.estimate is None:
            return None
        return (self.iterations - self.done_iterations) * self.estimate.seconds_per_iteration


@dataclass
class Plan:
    """Jobs in launch order (unfinished ones longest first), and what is known about each."""

    jobs: list[PlannedJob]
    device: str  # "cpu" or "cuda": what the estimates are for

    @property
    def todo(self) -> list[PlannedJob]:
        return [p for p in self.jobs if not p.finished]

    @property
    def finished(self) -> list[PlannedJob]:
        return [p for p in self.jobs if p.finished]

    @property
    def device_hours(self) -> float:
        """Estimated device-hours left (jobs without an estimate not counted)."""
        return sum(p.remaining_s or 0.0 for p in self.todo) / 3600

    def describe(self) -> str:
        todo, unknown = self.todo, [p for p in self.todo if p.remaining_s is None]
        lines = [f"{len(self.jobs)} job(s): {len(self.finished)} already finished (skipped), {len(todo)} to run"
                 + (f" ({sum(p.done_iterations > 0 for p in todo)} resume from a checkpoint)" if todo else "")]
        if todo:
            known = len(todo) - len(unknown)
            lines.append(f"estimated {self.device_hours:.3g} {self.device} device-hours for {known} of them "
                         "(training only, from measured step times)")
            for source in sorted({p.estimate.source for p in todo if p.estimate is not None}):
                methods = sorted({p.method for p in todo if p.estimate is not None and p.estimate.source == source})
                lines.append(f"  {', '.join(methods)}: {source}")
            if unknown:
                lines.append(f"  no measured step time for {', '.join(sorted({p.method for p in unknown}))}: "
                             "started first, not counted (`ssl-bench bench steps` measures them; 3D runs: with `--patch x,y,z`)")
        return "\n".join(lines)


def plan(jobs: Sequence[Job], results_root: str | Path, *, runtime: Sequence[str] | None = None,
         device: str = "cpu", bench_dirs: Sequence[Path] | None = None) -> Plan:
    """Resolve every job (``runtime``: the roots and URI the jobs will get, default
    ``runtime_args(results_root)``), skip the finished ones, estimate the rest on ``device``
    ("cpu" or "cuda") from the measurements of ``bench_dirs`` (default: ``results/bench``) and
    order them longest first (jobs without an estimate first: they may be the longest). Two
    jobs of one run dir are an error."""
    from ssl_bench.sweep.estimate import default_bench_dirs

    runtime = runtime_args(Path(results_root)) if runtime is None else runtime

    names: set[str] = set()
    for job in jobs:
        if job.name in names:
            raise ValueError(f"job {job.name!r} appears twice in the sweep; drop the duplicate")
        names.add(job.name)
    times = StepTimes(Path(results_root), default_bench_dirs() if bench_dirs is None else bench_dirs)
    planned, seen = [], {}
    for job in jobs:
        run = resolve(job, runtime)
        if run.run_dir in seen:
            raise ValueError(f"jobs {seen[run.run_dir]!r} and {job.name!r} are the same run ({run.run_dir}); "
                             "drop one of them")
        seen[run.run_dir] = job.name
        cfg = run.train_cfg
        finished, done = progress(run.run_dir, cfg.total_iterations)
        estimate = None if finished else times.estimate(run, device)
        planned.append(PlannedJob(job, run.run_dir, cfg.total_iterations, done, finished, estimate, run.spec.method))
    todo = sorted((p for p in planned if not p.finished),
                  key=lambda p: (p.remaining_s is not None, -(p.remaining_s or 0.0)))
    return Plan(todo + [p for p in planned if p.finished], device)


def progress(run_dir: Path, iterations: int) -> tuple[bool, int]:
    """(finished, iterations done) of a run dir: a finished ``metrics.json``, else the last step
    of ``log.jsonl`` (a resumed run restarts from its last checkpoint, at most that far)."""
    from ssl_bench.sweep.status import finished_metrics, last_step

    if finished_metrics(run_dir) is not None:
        return True, iterations
    return False, min(last_step(run_dir), iterations) if (run_dir / "checkpoints" / "latest.pt").exists() else 0
