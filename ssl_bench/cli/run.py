"""``ssl-bench run``: train and test one method on one dataset and labeled setting."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ssl_bench.cli.common import RESULTS_ROOT, TRACKING_URI, console, fail, user_errors
from ssl_bench.runargs import prepare_run


def run(
    method: str = typer.Option(..., "--method", "-m", help="registered method (see `ssl-bench methods`)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="registered dataset (see `ssl-bench datasets`)"),
    labeled: Optional[int] = typer.Option(None, "--labeled", help="number of labeled training patients"),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="fraction of labeled training cases, in (0, 1]"),
    split: str = typer.Option("default", "--split", help="split protocol: default (the dataset's), field, random"),
    split_seed: int = typer.Option(0, "--split-seed", help="seed of the split and labeled subset"),
    seed: int = typer.Option(0, "--seed", help="seed of the initialisation and sampling"),
    protocol: str = typer.Option("paper", "--protocol", help="training protocol: paper, field or equal (see `ssl-bench protocols`)"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="base budget: total gradient steps (all stages; a protocol may scale it per method)"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="unet (default) or smp:<Arch>:<encoder>"),
    set_: list[str] = typer.Option([], "--set", help="override a config value: key=value or method.key=value"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="data folder (default $SSL_BENCH_DATA or ./data)"),
    results_root: Optional[Path] = RESULTS_ROOT,
    tracking_uri: Optional[str] = TRACKING_URI,
    force: bool = typer.Option(False, "--force", help="start over even if the run dir holds a finished or partial run"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
):
    """Train and test one method on one dataset and labeled setting (resumes an interrupted run)."""
    from ssl_bench import engine

    try:
        prepared = prepare_run(method, dataset, labeled, ratio, split, split_seed, seed, protocol, iterations,
                               backbone, set_, data_root, results_root)
    except user_errors() as exc:
        fail(str(exc))
    spec = prepared.spec
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    threads = engine.run_threads(prepared.train_cfg)
    console.print(f"[bold]{method}[/] on [bold]{dataset}[/] ({spec.setting}, seed {seed}, split seed {split_seed}): "
                  f"protocol {protocol}, {prepared.train_cfg.total_iterations} iterations at {prepared.image_size}px, "
                  f"{threads} CPU thread(s){'' if prepared.train_cfg.threads else ' (free cores; --set threads=N to choose)'}"
                  f" -> {prepared.run_dir}")
    try:
        result = engine.fit(prepared, tracking_uri=uri, progress=progress, force=force, console=console)
    except engine.TrainingDiverged as exc:
        fail(str(exc), code=1)
    except user_errors() as exc:
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
