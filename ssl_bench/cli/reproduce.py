"""``ssl-bench reproduce table1|table2|table3|table4|sota``: the grid behind a table of the paper, run
through the sweep runner, then the measured table beside the published one (``ssl_bench.reproduce``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ssl_bench.cli.common import RESULTS_ROOT, console, fail, user_errors
from ssl_bench.cli.sweep import (ARRAY_PARALLELISM, CPUS_PER_JOB, EXECUTOR, GPUS, GPUS_PER_JOB, JOBS, JOBS_PER_GPU,
                                 MAX_REQUEUES, MEM_GB, PARTITION, SLURM_ARG, TIME_LIMIT, TRACKING_URI, Executor,
                                 executor_kwargs)


def reproduce(
    table: str = typer.Argument(..., help="table1 (ACDC), table2 (LiTS), table3 (ablations), table4 (augmentations), sota (ABD, AD-MT, UniMatch, BCP, ACTION on ACDC) or la (Left Atrium, 3D)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="the recipe (default: the one behind the published rows: field, la-field for la)"),
    budget: str = typer.Option("full", "--budget", help="full: real data at the protocol's budget; cpu: real data at the CPU budget (64 px, base 1000 iterations, 1 thread a run); smoke: the phantoms at their CPU preset"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated initialisation seeds"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated subset of the table's methods"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="base budget (default: the protocol's, or the phantom preset with --budget smoke)"),
    set_: list[str] = typer.Option([], "--set", help="passed to every run (key=value)"),
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
    tracking_uri: Optional[str] = TRACKING_URI,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the grid, the number of runs and the estimate; run nothing"),
    fmt: str = typer.Option("rich", "--format", help="rich, md or csv for the final comparison"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the comparison to this file"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="data folder (default $SSL_BENCH_DATA or ./data)"),
    results_root: Optional[Path] = RESULTS_ROOT,
) -> None:
    """Run the exact grid behind one of the paper's tables (resumable), then compare with the paper."""
    from ssl_bench import engine, mlflow_store
    from ssl_bench import reproduce as rep
    from ssl_bench.protocols import get_protocol
    from ssl_bench.registry import get_dataset_class

    rr = mlflow_store.results_root(results_root)
    try:
        grid = rep.get_grid(table)
        proto = get_protocol(protocol or grid.protocol)
        # the roots are not part of a job: the sweep launcher gives them to every job
        req = rep.GridRequest(grid, protocol, budget, [int(s) for s in seeds.split(",") if s.strip()],
                              [m.strip() for m in methods.split(",")] if methods else None, iterations,
                              list(set_))
        job_list = req.jobs()
        where = executor_kwargs(executor, gpus, jobs_per_gpu, jobs, partition, time_limit, gpus_per_job,
                                cpus_per_job, mem_gb, array_parallelism, max_requeues, slurm_arg, tracking_uri)
        if fmt not in ("rich", "md", "csv"):
            raise ValueError(f"--format {fmt!r}: use rich, md or csv")
    except user_errors() as exc:
        fail(str(exc))
    variants = f" x {len(grid.variants)} variants" if len(grid.variants) > 1 else ""
    console.print(f"[bold]{grid.title}[/] under protocol [bold]{proto.tag}[/] on {req.dataset} "
                  f"({budget} budget): {len({j.method for j in job_list})} method(s){variants} x "
                  f"{len(grid.settings)} setting(s) x {len(req.seeds)} seed(s) = {len(job_list)} runs")
    if not proto.published:
        console.print(f"[yellow]note:[/] the published figures came from protocol field; under {proto.tag} "
                      "the comparison is for orientation only")
    for name, why in grid.missing:
        console.print(f"[yellow]not in this grid:[/] {name}: {why}")
    if dry_run:
        _print_grid(job_list)
        _print_estimate(req, rr)
        if grid.name == "la":
            _print_la_published()
        return
    try:
        get_dataset_class(req.dataset)(engine.data_root(data_root))  # phantoms are generated once, here
    except user_errors() as exc:
        fail(str(exc))
    uri = mlflow_store.default_tracking_uri(rr, tracking_uri)
    from ssl_bench.sweep import SweepInterrupted, launch

    try:
        codes = launch(job_list, results_root=rr, data_root=data_root, console=console, **where)
    except SweepInterrupted as exc:
        fail(f"interrupted: {exc}", code=130)
    except user_errors() as exc:
        fail(str(exc))
    except RuntimeError as exc:  # sbatch refused the array
        fail(str(exc), code=1)
    if None in codes.values():  # submitted to Slurm: the comparison comes once the array has run
        console.print("submitted; when the jobs have finished, run the same command again to print the comparison "
                      "(finished runs are skipped), or follow them with `ssl-bench sweep status`")
        return
    failed = [k for k, v in codes.items() if v != 0]
    _print_comparison(req, uri, rr, fmt, output)
    if grid.name == "la":
        _print_la_published()
    if failed:
        fail(f"{len(failed)} of {len(codes)} runs failed: {', '.join(failed)}", code=1)


def _print_la_published() -> None:
    """The published LA rows (results/reference/la_published.csv) with the selection each used."""
    from rich.table import Table

    from ssl_bench.reproduce import LA_PUBLISHED
    from ssl_bench.table.runs import read_reference

    ref = read_reference(LA_PUBLISHED)
    t = Table(title="published LA rows (Dice % / Jaccard % / 95HD / ASD, voxels; as printed by their sources)")
    for c in ("method", "setting", "Dice", "Jaccard", "95HD", "ASD", "checkpoint", "source"):
        t.add_column(c, overflow="fold")
    for _, r in ref.iterrows():
        t.add_row(r["method"], r["setting"], r["dice_percent"], r["jaccard_percent"] or "-", r["hd95_voxel"] or "-",
                  r["asd_voxel"] or "-", r["selection"], r["source"])
    console.print(t)
    console.print("Rows selected 'best on test' picked their checkpoint on the 20 test scans (TraCoCo measured "
                  "+0.57 Dice from that alone); compare them with la-field runs, never with la-clean ones.")


def _print_grid(job_list) -> None:
    from rich.table import Table

    t = Table(title="runs (each an idempotent `ssl-bench run`)")
    for c in ("method", "dataset", "setting", "seed", "extra --set"):
        t.add_column(c, overflow="fold")
    for j in job_list:
        sets = [j.extra[i + 1] for i, a in enumerate(j.extra) if a == "--set"]
        t.add_row(j.method, j.dataset, " ".join(j.setting), str(j.seed), ", ".join(sets) or "-")
    console.print(t)


def _print_estimate(req, results_root: Path) -> None:
    """Device-hours of the grid from measured step times (resolved configs; no data needed)."""
    import torch

    from ssl_bench import reproduce as rep

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = rep.estimate_from_config(req.jobs_and_specs(), results_root, device)
    known = [(it, e) for _, it, e in rows if e is not None]
    hours = sum(it * e.seconds_per_iteration for it, e in known) / 3600
    iterations = sum(it for _, it, _ in rows)
    console.print(f"{iterations:,} iterations in all; estimated [bold]{hours:,.1f} {device} device-hours[/] for "
                  f"{len(known)} of {len(rows)} runs (training only, from measured step times; finished runs "
                  "are not subtracted here: a real run skips them)")
    for source in sorted({e.source for _, _, e in rows if e is not None}):
        methods = sorted({j.method for j, _, e in rows if e is not None and e.source == source})
        console.print(f"  {', '.join(methods)}: {source}", highlight=False)
    unknown = sorted({j.method for j, _, e in rows if e is None})
    if unknown:
        console.print(f"  no measured step time for {', '.join(unknown)} (`ssl-bench bench` measures them; 3D runs: "
                      "`ssl-bench bench steps --patch x,y,z`)")


def _print_comparison(req, uri: str, results_root: Path, fmt: str, output: Path | None) -> None:
    from ssl_bench import table as tbl
    from ssl_bench import run_index

    run_index.sync_index(results_root, uri)  # the run dirs are the record: index any the store lacks
    runs = tbl.select_runs(tbl.load_runs(uri), req.dataset, list(dict.fromkeys(j.method for j in req.jobs())),
                           protocol=req.protocol)
    if runs.empty:
        console.print("no finished run to compare yet")
        return
    tables = (tbl.comparison_tables(runs) if req.grid.kind == "main" else
              [t for t in tbl.ablation_tables(runs) if (req.grid.name == "table3") == t.title.startswith("Table 3")])
    if output is not None:
        from ssl_bench.datasets.base import atomic_write_text

        atomic_write_text(output, tbl.render(tables, "md" if fmt == "rich" else fmt))
        console.print(f"wrote {output}")
    if fmt == "rich":
        for t in tables:
            for part in tbl.rich_tables(t):
                console.print(part)
    else:
        console.print(tbl.render(tables, fmt), markup=False, highlight=False)
