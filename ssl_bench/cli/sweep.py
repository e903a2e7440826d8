"""``ssl-bench sweep``: many runs through a pool of local slots."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ssl_bench.cli.common import console, fail, user_errors


def sweep(
    methods: str = typer.Option(..., "--methods", help="comma-separated methods, or 'all'"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    labeled: list[int] = typer.Option([], "--labeled", help="labeled patients (repeatable)"),
    ratio: list[float] = typer.Option([], "--ratio", help="labeled fraction (repeatable)"),
    seeds: str = typer.Option("0", "--seeds", help="comma-separated initialisation seeds"),
    split_seeds: str = typer.Option("0", "--split-seeds", help="comma-separated split seeds"),
    jobs: int = typer.Option(0, "--jobs", "-j", help="parallel jobs (default: one per GPU, else one per CPU core)"),
    protocol: str = typer.Option("paper", "--protocol", help="training protocol of every run (see `ssl-bench protocols`)"),
    set_: list[str] = typer.Option([], "--set", help="passed to every run"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n"),
    results_root: Optional[Path] = typer.Option(None, "--results-root"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
):
    """Run every (method, setting, seed) locally through a pool of GPU or CPU slots (resumable)."""
    from ssl_bench import engine, tracking
    from ssl_bench.registry import get_dataset_class, get_method_class, list_methods
    from ssl_bench.sweep import expand, launch

    try:
        names = list_methods() if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
        for n in names:
            get_method_class(n)
        get_dataset_class(dataset)
        if not labeled and not ratio:
            raise ValueError("give at least one --labeled N or --ratio r")
        from ssl_bench.protocols import get_protocol

        get_protocol(protocol)
        seed_list = [int(s) for s in seeds.split(",")]
        split_list = [int(s) for s in split_seeds.split(",")]
    except user_errors() as exc:
        fail(str(exc))
    extra = ["--protocol", protocol, *[a for s in set_ for a in ("--set", s)]]
    if iterations:
        extra += ["--iterations", str(iterations)]
    rr = tracking.results_root(results_root)
    extra += ["--results-root", str(rr)]
    if data_root:
        extra += ["--data-root", str(data_root)]
    # make the dataset (phantoms are generated on first use) and the MLflow store once, up front
    get_dataset_class(dataset)(engine.data_root(data_root))
    tracking.make_client(tracking.default_tracking_uri(rr)).search_experiments()
    job_list = expand(names, dataset, labeled, ratio, seed_list, split_list, extra)
    console.print(f"{len(job_list)} jobs; logs in {rr / 'sweep-logs'}")
    codes = launch(job_list, results_root=rr, jobs_in_parallel=jobs, console=console)
    failed = [k for k, v in codes.items() if v != 0]
    if failed:
        fail(f"{len(failed)} of {len(codes)} jobs failed: {', '.join(failed)}", code=1)
