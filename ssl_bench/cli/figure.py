"""``ssl-bench figure KIND``: one figure (PNG and PDF) from the recorded runs.

    ssl-bench figure curves --dataset acdc-phantom
    ssl-bench figure qualitative --dataset acdc-phantom --setting "3 labeled" --data-root data
    ssl-bench figure imbalance --dataset acdc-phantom --dataset lits-phantom
    ssl-bench figure seeds --dataset acdc-phantom --run-id <MLflow run id>   # also logged there
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ssl_bench.cli.common import (CHECKPOINT, CHECKPOINTS, METHODS, PROTOCOL, RESULTS_ROOT, TRACKING_URI, console,
                                  fail, user_errors)


class Kind(str, Enum):
    qualitative = "qualitative"
    curves = "curves"
    ratio = "ratio"
    imbalance = "imbalance"
    seeds = "seeds"


def figure(
    kind: Kind = typer.Argument(..., help="qualitative, curves, ratio, imbalance or seeds"),
    dataset: List[str] = typer.Option([], "--dataset", help="dataset of the runs (imbalance: repeatable, one panel each)"),
    method: Optional[List[str]] = METHODS,
    setting: Optional[str] = typer.Option(None, "--setting", help='only this labeled setting, e.g. "3 labeled" (qualitative: default the first)'),
    protocol: Optional[str] = PROTOCOL,
    checkpoint: str = CHECKPOINT,
    out_dir: Path = typer.Option(Path("results/figures"), "--out-dir", help="where <kind>_<dataset>.png/.pdf go"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="also log the files to this MLflow run (artifacts figures/)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="data folder (qualitative, imbalance; default $SSL_BENCH_DATA or ./data)"),
    results_root: Optional[Path] = RESULTS_ROOT,
    tracking_uri: Optional[str] = TRACKING_URI,
) -> None:
    """Draw one figure from the recorded runs (PNG and PDF)."""
    from ssl_bench import engine, figures, mlflow_store
    from ssl_bench.cli.selection import selected_runs

    if checkpoint not in CHECKPOINTS:
        fail(f"--checkpoint {checkpoint!r}: use {', '.join(CHECKPOINTS[:-1])} or {CHECKPOINTS[-1]}")
    try:
        if kind is Kind.imbalance:
            if not dataset:
                fail("imbalance needs at least one --dataset (repeatable)")
            uri = mlflow_store.default_tracking_uri(mlflow_store.results_root(results_root), tracking_uri)
            result = figures.imbalance(dataset, engine.data_root(data_root), out_dir,
                                       name=f"imbalance_{'+'.join(dataset)}")
        else:
            if len(dataset) > 1:
                fail(f"{kind.value} draws the runs of one dataset; give one --dataset")
            root, uri, runs = selected_runs(results_root, tracking_uri, dataset[0] if dataset else None,
                                            method, setting, protocol)
            name = f"{kind.value}_{runs['dataset'].iloc[0]}_{runs['protocol_tag'].iloc[0]}"
            if kind is Kind.qualitative:
                result = figures.qualitative(runs, engine.data_root(data_root), out_dir, checkpoint, setting, root, name)
            elif kind is Kind.curves:
                result = figures.curves(runs, out_dir, root, name)
            elif kind is Kind.ratio:
                result = figures.ratio(runs, out_dir, checkpoint, name)
            else:
                result = figures.seeds(runs, out_dir, checkpoint, name)
    except user_errors() as exc:
        fail(str(exc))
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {', '.join(map(str, result.paths))} ({result.size_px[0]}x{result.size_px[1]} px)")
    if run_id:
        figures.log_figures(result, run_id, uri)
        console.print(f"logged to MLflow run {run_id} (artifacts figures/)")
