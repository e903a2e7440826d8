"""``ssl-bench sweep``: many runs, on this machine's GPU/CPU slots or on Slurm; ``sweep status``."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ssl_bench.cli.common import console, fail, user_errors

sweep_app = typer.Typer(help="Run a grid of runs (resumable), or show the states of a sweep's jobs.")


class Executor(str, Enum):
    local = "local"
    slurm = "slurm"


# Where jobs run: options shared by `sweep` and `reproduce` (one definition, two commands).
EXECUTOR = typer.Option(Executor.local, "--executor", help="local: this machine's slots; slurm: an array job through submitit")
GPUS = typer.Option(None, "--gpus", help="local: GPU ids, e.g. 0,1 (default: every visible GPU; none: CPU slots)")
JOBS_PER_GPU = typer.Option(1, "--jobs-per-gpu", help="local: jobs sharing each GPU")
JOBS = typer.Option(0, "--jobs", "-j", help="local without GPUs: CPU slots, one thread each (default: one per core)")
PARTITION = typer.Option(None, "--partition", help="slurm: partition")
TIME_LIMIT = typer.Option("24:00:00", "--time", help="slurm: time limit per job (minutes, HH:MM:SS or D-HH:MM:SS)")
GPUS_PER_JOB = typer.Option(1, "--gpus-per-job", help="slurm: GPUs per job (0: CPU jobs)")
CPUS_PER_JOB = typer.Option(None, "--cpus-per-job", help="slurm: CPUs per job")
MEM_GB = typer.Option(None, "--mem-gb", help="slurm: memory per job in GB")
ARRAY_PARALLELISM = typer.Option(256, "--array-parallelism", help="slurm: jobs of the array running at once")
MAX_REQUEUES = typer.Option(3, "--max-requeues", help="slurm: requeues after a timeout (each resumes from the last checkpoint)")
SLURM_ARG = typer.Option([], "--slurm-arg", help="slurm: any sbatch option, key=value (repeatable), e.g. qos=high")
TRACKING_URI = typer.Option(None, "--tracking-uri", help="MLflow tracking URI for every run, e.g. http://host:5000 (default: SQLite under the results root)")


def executor_kwargs(executor, gpus, jobs_per_gpu, jobs, partition, time_limit, gpus_per_job, cpus_per_job, mem_gb,
                    array_parallelism, max_requeues, slurm_arg, tracking_uri) -> dict:
    """The keyword arguments of ``ssl_bench.sweep.launch`` that say where jobs run (--time checked now)."""
    from ssl_bench.sweep import SlurmOptions
    from ssl_bench.sweep.slurm import parse_slurm_args

    slurm = SlurmOptions(partition=partition, time=time_limit, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                         mem_gb=mem_gb, array_parallelism=array_parallelism, max_requeues=max_requeues,
                         extra=parse_slurm_args(slurm_arg))
    slurm.minutes  # noqa: B018  (raises on a malformed --time)
    return dict(executor=executor.value, tracking_uri=tracking_uri, gpus=gpus, jobs_per_gpu=jobs_per_gpu,
                cpu_jobs=jobs, slurm=slurm)


@sweep_app.callback(invoke_without_command=True)
def sweep(
    ctx: typer.Context,
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods, or 'all'"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    labeled: list[int] = typer.Option([], "--labeled", help="labeled patients (repeatable)"),
    ratio: list[float] = typer.Option([], "--ratio", help="labeled fraction (repeatable)"),
    seeds: str = typer.Option("0", "--seeds", help="comma-separated initialisation seeds"),
    split_seeds: str = typer.Option("0", "--split-seeds", help="comma-separated split seeds"),
    split: str = typer.Option("default", "--split", help="split protocol of every run: default (the dataset's), "
                              "field, random (with --split-seeds: one labeled set per seed)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="training protocol of every run (see `ssl-bench protocols`)"),
    set_: list[str] = typer.Option([], "--set", help="passed to every run"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n"),
    executor: Executor = EXECUTOR,
    gpus: Optional[str] = GPUS,
    jobs_per_gpu: int = JOBS_PER_GPU,
    jobs: int = JOBS,
    partition: Optional[str] = PARTITION,
    time_limit: str = TIME_LIMIT,
    gpus_per_job: int = GPUS_PER_JOB,
    cpus_per_job: Optional[int] = CPUS_PER_JOB,
    mem_gb: Optional[float] = MEM_GB,
    array_parallelism: int = ARRAY_PARALLELISM,
    max_requeues: int = MAX_REQUEUES,
    slurm_arg: list[str] = SLURM_ARG,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (jobs, finished, device-hours) and stop"),
    results_root: Optional[Path] = typer.Option(None, "--results-root"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    tracking_uri: Optional[str] = TRACKING_URI,
):
    """Run every (method, setting, seed) through local GPU/CPU slots or Slurm, longest first (resumable)."""
    if ctx.invoked_subcommand is not None:
        return
    from ssl_bench.registry import get_dataset_class, get_method_class, list_methods
    from ssl_bench.sweep import SweepInterrupted, expand, launch

    try:
        if not methods or not dataset:
            raise ValueError("give --methods and --dataset (or a subcommand: `ssl-bench sweep status`)")
        names = list_methods() if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
        for n in names:
            get_method_class(n)
        get_dataset_class(dataset)
        if not labeled and not ratio:
            raise ValueError("give at least one --labeled N or --ratio r")
        seed_list = [int(s) for s in seeds.split(",")]
        split_list = [int(s) for s in split_seeds.split(",")]
        extra = [a for s in set_ for a in ("--set", s)]
        extra += ["--iterations", str(iterations)] if iterations else []
        extra += ["--protocol", protocol] if protocol else []
        extra += ["--split", split] if split != "default" else []
        where = executor_kwargs(executor, gpus, jobs_per_gpu, jobs, partition, time_limit, gpus_per_job,
                                cpus_per_job, mem_gb, array_parallelism, max_requeues, slurm_arg, tracking_uri)
        job_list = expand(names, dataset, labeled, ratio, seed_list, split_list, extra)
        codes = launch(job_list, results_root=results_root, data_root=data_root, dry_run=dry_run, console=console,
                       **where)
    except SweepInterrupted as exc:
        fail(f"interrupted: {exc}", code=130)
    except user_errors() as exc:
        fail(str(exc))
    except RuntimeError as exc:  # sbatch refused the array
        fail(str(exc), code=1)
    failed = [k for k, v in codes.items() if v not in (0, None)]
    if failed:
        fail(f"{len(failed)} of {len(codes)} jobs failed (`ssl-bench sweep status` shows why): {', '.join(failed)}",
             code=1)


@sweep_app.command("status")
def status(
    results_root: Optional[Path] = typer.Option(None, "--results-root"),
    sweep_id: Optional[str] = typer.Option(None, "--sweep", help="sweep id (default: the latest under the results root)"),
):
    """The state of every job of a sweep (any executor, any machine that sees the results root)."""
    from ssl_bench import mlflow_store
    from ssl_bench.sweep.manifest import Manifest
    from ssl_bench.sweep.status import job_statuses, render

    try:
        manifest = Manifest.find(mlflow_store.results_root(results_root), sweep_id)
    except FileNotFoundError as exc:
        fail(str(exc))
    statuses = job_statuses(manifest)
    console.print(render(statuses, f"sweep {manifest.data['id']} ({manifest.data['executor']}, {manifest.folder})"))
    if any(s.state == "failed" for s in statuses):
        raise typer.Exit(1)
