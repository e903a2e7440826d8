"""Sweeps: many ``ssl-bench run`` jobs, planned once, run on this machine or on a Slurm cluster.

    plan(jobs, results_root) -> Plan        what is finished, device-hours left, launch order
    launch(jobs, executor="local"|"slurm", results_root=..., ...) -> {job name: exit code}

A job is one ``ssl-bench run`` command line (``Job``; ``expand`` makes a grid of them); an
executor only decides *where* it runs (``local``: a pool of GPU or CPU slots; ``slurm``: an
array job through submitit), so a job that works locally works on the cluster. Every job is
idempotent: a finished run is skipped, an interrupted one resumes from its last checkpoint, so
re-running a sweep finishes it. Before any job starts, the MLflow store is created and migrated
once (``mlflow_store.ensure_store``; a tracking server must answer). ``<results root>/sweeps/<id>/``
holds the manifest that ``ssl-bench sweep status`` reads, and the logs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ssl_bench.sweep.local import SweepInterrupted, make_slots
from ssl_bench.sweep.manifest import Manifest
from ssl_bench.sweep.plan import Job, Plan, expand, plan, runtime_args
from ssl_bench.sweep.slurm import SlurmOptions

__all__ = ["Job", "Plan", "SlurmOptions", "SweepInterrupted", "expand", "launch", "plan", "runtime_args"]


def launch(jobs: Sequence[Job], *, executor: str = "local", results_root: str | Path | None = None,
           data_root: str | Path | None = None, tracking_uri: str | None = None, gpus: str | None = None,
           jobs_per_gpu: int = 1, cpu_jobs: int = 0, slurm: SlurmOptions | None = None, dry_run: bool = False,
           console=None, bench_dirs: Sequence[Path] | None = None) -> dict[str, int | None]:
    """Plan ``jobs``, print the plan, then run the unfinished ones longest first.

    ``executor="local"``: slots from ``gpus`` ("0,1"; "none"; default every visible GPU) and
    ``jobs_per_gpu``, else ``cpu_jobs`` CPU slots (default one per core); blocks until every
    job ended and returns their exit codes (Ctrl-C stops them all: ``SweepInterrupted``).
    ``executor="slurm"``: submits one array job (``slurm`` options) and returns at once, with
    ``None`` for each submitted job. Finished jobs are skipped and reported as 0.
    ``dry_run``: print the plan only (returns {}).
    """
    from ssl_bench import mlflow_store

    def say(text: str) -> None:
        if console is None:
            print(text, flush=True)
        else:
            console.print(text, soft_wrap=True, highlight=False, markup=False)

    root = mlflow_store.results_root(results_root)
    runtime = runtime_args(root, Path(data_root) if data_root else None, tracking_uri)
    if executor == "local":
        slots, device = make_slots(gpus, jobs_per_gpu, cpu_jobs)
    elif executor == "slurm":
        slurm = slurm or SlurmOptions()
        device = "cuda" if slurm.gpus_per_job else "cpu"
    else:
        raise ValueError(f"--executor {executor!r}: use local or slurm")
    the_plan = plan(jobs, root, runtime=runtime, device=device, bench_dirs=bench_dirs)
    say(the_plan.describe())
    if dry_run:
        return {}
    # one store initialisation, under its lock, before any job logs (a server must answer now)
    uri = mlflow_store.default_tracking_uri(root, tracking_uri)
    try:
        mlflow_store.make_client(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise ValueError(f"the MLflow store {uri} does not answer ({type(exc).__name__}: {str(exc)[:200]}); "
                         "start the server or fix --tracking-uri") from exc
    manifest = Manifest.create(root, executor, the_plan.jobs, device, runtime)
    todo = [p.job.name for p in the_plan.todo]
    codes: dict[str, int | None] = {p.job.name: 0 for p in the_plan.finished}
    if not todo:
        say("nothing to run: every job has finished")
    elif executor == "local":
        say(f"{len(todo)} job(s) on {len(slots)} slot(s) ({', '.join(s.name for s in slots)}); "
            f"logs in {manifest.folder / 'logs'}")
        from ssl_bench.sweep.local import run_local

        codes.update(run_local(manifest, todo, slots, console))
    else:
        from ssl_bench.sweep.slurm import submit

        codes.update(submit(manifest, todo, slurm, console))
        say(f"`ssl-bench sweep status --results-root {root} --sweep {manifest.data['id']}` shows their states")
    return codes
