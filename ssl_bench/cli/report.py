"""``ssl-bench report``: one self-contained HTML page (tables with statistics, figures, every
run's config and environment, links to the MLflow runs) for a dataset and protocol, e.g. the
runs of a ``reproduce`` grid:

    ssl-bench report --dataset acdc-phantom --protocol paper -o report.html
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ssl_bench.cli.common import CHECKPOINT, CHECKPOINTS, METHODS, PROTOCOL, RESULTS_ROOT, TRACKING_URI, console, fail


def report(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset of the runs (needed when the store holds several)"),
    method: Optional[List[str]] = METHODS,
    setting: Optional[str] = typer.Option(None, "--setting", help='only this labeled setting, e.g. "3 labeled"'),
    protocol: Optional[str] = PROTOCOL,
    checkpoint: str = CHECKPOINT,
    compare_to: Optional[str] = typer.Option(None, "--compare-to", help="reference of the paired differences (default: unet-l where present)"),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="the HTML file to write (atomically)"),
    mlflow_url: str = typer.Option("http://127.0.0.1:5000", "--mlflow-url", help="where the MLflow UI runs (ssl-bench ui --port 5000), for the run links"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="data folder, for the qualitative and imbalance figures (default $SSL_BENCH_DATA or ./data)"),
    results_root: Optional[Path] = RESULTS_ROOT,
    tracking_uri: Optional[str] = TRACKING_URI,
) -> None:
    """Write one self-contained HTML report (tables, figures, configs, MLflow links)."""
    from ssl_bench import engine
    from ssl_bench.cli.selection import selected_runs
    from ssl_bench.report import build_report

    if checkpoint not in CHECKPOINTS:
        fail(f"--checkpoint {checkpoint!r}: use {', '.join(CHECKPOINTS[:-1])} or {CHECKPOINTS[-1]}")
    root, uri, runs = selected_runs(results_root, tracking_uri, dataset, method, setting, protocol)
    if compare_to and compare_to not in set(runs["method"]):
        fail(f"--compare-to {compare_to}: no run of that method here; use one of {', '.join(sorted(set(runs['method'])))}")
    result = build_report(runs, root, uri, engine.data_root(data_root), output, checkpoint, compare_to, mlflow_url)
    for m in result.missing:
        typer.echo(f"warning: figure not drawn: {m}", err=True)
    console.print(f"wrote {output}: {result.tables} table(s), figures {', '.join(result.figures) or 'none'}")
