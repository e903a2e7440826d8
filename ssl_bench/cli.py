"""The ``ssl-bench`` command line.

    ssl-bench run --method action --dataset lits --ratio 0.05
    ssl-bench table --dataset acdc-phantom --with-published
    ssl-bench methods | datasets | data prepare/info | bench anco | ui

Every bad input (unknown method or dataset, ratio out of range, missing data, unknown --set key)
ends with one line naming the problem and the fix, a non-zero exit, and nothing written.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="ssl-bench: reproducible benchmark of semi-supervised medical image segmentation.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def sweep(
    methods: str = typer.Option(..., "--methods", help="comma-separated methods, or 'all'"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    labeled: list[int] = typer.Option([], "--labeled", help="labeled patients (repeatable)"),
    ratio: list[float] = typer.Option([], "--ratio", help="labeled fraction (repeatable)"),
    seeds: str = typer.Option("0", "--seeds", help="comma-separated initialisation seeds"),
    split_seeds: str = typer.Option("0", "--split-seeds", help="comma-separated split seeds"),
    jobs: int = typer.Option(0, "--jobs", "-j", help="parallel jobs (default: one per GPU, else one per CPU core)"),
    set_: list[str] = typer.Option([], "--set", help="passed to every run"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n"),
    results_root: Optional[Path] = typer.Option(None, "--results-root"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
):
    """Run every (method, setting, seed) locally through a pool of GPU or CPU slots (resumable)."""
    from ssl_bench import engine, tracking
    from ssl_bench.registry import get_dataset_class, get_method_class, list_methods
    from ssl_bench.sweep import expand, run_pool

    try:
        names = list_methods() if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
        for n in names:
            get_method_class(n)
        get_dataset_class(dataset)
        if not labeled and not ratio:
            raise ValueError("give at least one --labeled N or --ratio r")
        seed_list = [int(s) for s in seeds.split(",")]
        split_list = [int(s) for s in split_seeds.split(",")]
    except _user_errors() as exc:
        fail(str(exc))
    import torch

    n_gpu = torch.cuda.device_count()
    n_slots = jobs or n_gpu or (os.cpu_count() or 1)
    if n_gpu:
        slots = [{"CUDA_VISIBLE_DEVICES": str(i % n_gpu)} for i in range(n_slots)]
        threads = []
    else:
        slots = [{"OMP_NUM_THREADS": "1"} for _ in range(n_slots)]
        threads = ["--set", "threads=1"]
    extra = [*threads, *[a for s in set_ for a in ("--set", s)]]
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
    console.print(f"{len(job_list)} jobs on {n_slots} slot(s); logs in {rr / 'sweep-logs'}")
    codes = run_pool(job_list, slots, rr / "sweep-logs", console)
    failed = [k for k, v in codes.items() if v != 0]
    if failed:
        fail(f"{len(failed)} of {len(codes)} jobs failed: {', '.join(failed)}", code=1)


def _user_errors():
    from ssl_bench.config import ConfigError
    from ssl_bench.datasets.base import DataError
    from ssl_bench.registry import RegistryError

    return (ConfigError, DataError, RegistryError, ValueError, FileNotFoundError)


@app.command()
def run(
    method: str = typer.Option(..., "--method", "-m", help="registered method (see `ssl-bench methods`)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="registered dataset (see `ssl-bench datasets`)"),
    labeled: Optional[int] = typer.Option(None, "--labeled", help="number of labeled training patients"),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="fraction of labeled training cases, in (0, 1]"),
    split: str = typer.Option("default", "--split", help="split protocol: default (the dataset's), field, random"),
    split_seed: int = typer.Option(0, "--split-seed", help="seed of the split and labeled subset"),
    seed: int = typer.Option(0, "--seed", help="seed of the initialisation and sampling"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="total gradient steps (all stages)"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="unet (default) or smp:<Arch>:<encoder>"),
    set_: list[str] = typer.Option([], "--set", help="override a config value: key=value or method.key=value"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="data folder (default $SSL_BENCH_DATA or ./data)"),
    results_root: Optional[Path] = typer.Option(None, "--results-root", help="results folder (default $SSL_BENCH_RESULTS or ./results/runs)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: SQLite under the results root)"),
    force: bool = typer.Option(False, "--force", help="start over even if the run dir holds a finished or partial run"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
):
    """Train and test one method on one dataset and labeled setting (resumes an interrupted run)."""
    from ssl_bench import engine, tracking
    from ssl_bench.config import parse_set_options
    from ssl_bench.runconfig import RunSpec

    try:
        overrides = parse_set_options(set_)
        if iterations is not None:
            overrides["iterations"] = str(iterations)
        if backbone is not None:
            overrides["backbone"] = backbone
        spec = RunSpec(method=method, dataset=dataset, labeled=labeled, ratio=ratio, split=split,
                       split_seed=split_seed, seed=seed, overrides=overrides)
        if labeled is not None and ratio is not None:
            raise ValueError("give either --labeled or --ratio, not both")
        prepared = engine.prepare(spec, engine.data_root(data_root), tracking.results_root(results_root))
    except _user_errors() as exc:
        fail(str(exc))
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    console.print(f"[bold]{method}[/] on [bold]{dataset}[/] ({spec.setting}, seed {seed}, split seed {split_seed}): "
                  f"{prepared.train_cfg.iterations} iterations at {prepared.image_size}px -> {prepared.run_dir}")
    try:
        result = engine.fit(prepared, tracking_uri=uri, progress=progress, force=force, console=console)
    except engine.TrainingDiverged as exc:
        fail(str(exc), code=1)
    except _user_errors() as exc:
        fail(str(exc))
    if result.skipped:
        console.print(f"already finished: {result.run_dir} (use --force to run again)")
    _print_summary(result.metrics)


def _print_summary(metrics: dict) -> None:
    test = metrics.get("test", {})
    if not test:
        return
    t = Table(title="test set (3D, per class; DSC %, ASD voxels)")
    t.add_column("checkpoint")
    t.add_column("class")
    for col in ("DSC", "ASD", "HD95", "n"):
        t.add_column(col, justify="right")
    for ckpt, summary in test.items():
        classes = summary.get("classes", {})
        rows = list(classes.items()) + [("mean", summary.get("mean", {}))]
        for cname, vals in rows:
            t.add_row(ckpt, cname, _fmt(vals.get("dice"), 100), _fmt(vals.get("asd_vox")),
                      _fmt(vals.get("hd95_vox")), str(vals.get("n", "")))
    console.print(t)


def _fmt(v, scale=1.0) -> str:
    try:
        return f"{float(v) * scale:.2f}"
    except (TypeError, ValueError):
        return "-"


@app.command()
def methods(pattern: str = typer.Argument("*", help="glob on the name")):
    """List registered methods (built-in and plugins)."""
    from ssl_bench.registry import METHODS

    t = Table(title="methods")
    for c in ("name", "description", "paper"):
        t.add_column(c)
    for e in METHODS.entries(pattern):
        t.add_row(e.name, e.description, e.paper)
    console.print(t)


@app.command()
def datasets(pattern: str = typer.Argument("*", help="glob on the name")):
    """List registered datasets (built-in and plugins)."""
    from ssl_bench.registry import DATASETS

    t = Table(title="datasets")
    for c in ("name", "description", "classes", "paper"):
        t.add_column(c)
    for e in DATASETS.entries(pattern):
        t.add_row(e.name, e.description, ", ".join(getattr(e.obj, "class_names", [])[1:]), e.paper)
    console.print(t)


@app.command()
def ui(
    results_root: Optional[Path] = typer.Option(None, "--results-root"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
    port: int = typer.Option(5000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
):
    """Open the MLflow UI on the results store."""
    from ssl_bench import tracking

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(
        tracking.results_root(results_root))
    console.print(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C to stop")
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                      "--host", host, "--port", str(port)]))


def bench_steps(
    method: list[str] = typer.Option([], "--method", help="methods to time (default: all)"),
    image_size: int = typer.Option(112, help="slice side in pixels"),
    labeled_bs: int = typer.Option(12, help="labeled slices per iteration"),
    unlabeled_bs: int = typer.Option(12, help="unlabeled slices per iteration"),
    steps: int = typer.Option(3, help="timed iterations per stage (after one warm-up)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    out_dir: Path = typer.Option(Path("results/bench"), help="where steps_<device>_<size>px.json/.md go"),
):
    """Seconds per training iteration of every method (each stage, budget-weighted)."""
    from ssl_bench.bench_steps import run as run_steps

    def show(r):
        console.print(f"{r['method']:>10}: {r['seconds_per_step']:.3f} s/iteration")

    try:
        run_steps(method or None, image_size, labeled_bs, unlabeled_bs, steps, 1, device, out_dir, show)
    except _user_errors() as exc:
        fail(str(exc))
    console.print(f"written to {out_dir}/steps_{device.split(':')[0]}_{image_size}px.md")


def _mount() -> None:
    from ssl_bench.cli_bench import bench_app
    from ssl_bench.cli_data import data_app
    from ssl_bench.cli_table import table_command

    app.command("table")(table_command)
    app.add_typer(data_app, name="data", help="prepare and inspect datasets")
    bench_app.command("steps")(bench_steps)
    app.add_typer(bench_app, name="bench", help="speed and memory benchmarks (written to results/)")


_mount()

if __name__ == "__main__":
    app()
