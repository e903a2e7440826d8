"""``ssl-bench results``: the MLflow index over the run dirs.

The run dirs are the record; MLflow is an index over them (``ssl_bench.tracking``).
``rebuild`` indexes every run dir the store lacks or holds only in part (marked
``mlflow_pending``); ``--fresh`` first moves a damaged SQLite store aside and indexes everything.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ssl_bench.cli.common import RESULTS_ROOT, TRACKING_URI, console, fail

results_app = typer.Typer(help="The MLflow index over the run dirs.", no_args_is_help=True)


@results_app.command("rebuild")
def rebuild(
    results_root: Optional[Path] = RESULTS_ROOT,
    tracking_uri: Optional[str] = TRACKING_URI,
    include_running: bool = typer.Option(False, "--include-running", help="also index runs still marked running (only when no job is running)"),
    fresh: bool = typer.Option(False, "--fresh", help="move the SQLite store aside (kept as mlflow.db.moved-<time>) and index every run dir anew"),
):
    """Index the run dirs that MLflow lacks (or holds only in part) from their files."""
    from ssl_bench import mlflow_store, run_index

    root = mlflow_store.results_root(results_root)
    uri = mlflow_store.default_tracking_uri(root, tracking_uri)
    if not run_index.find_run_dirs(root):
        fail(f"no run dirs under {root} (folders holding a tags.json); pass --results-root")
    if fresh:
        db = mlflow_store.sqlite_path(uri)
        if db is None:
            fail(f"--fresh moves a SQLite store aside; {uri} is not one (for a server, point "
                 "--tracking-uri at a new, empty server instead)")
        if db.exists():
            moved = db.with_name(f"{db.name}.moved-{time.strftime('%Y%m%d-%H%M%S')}")
            db.rename(moved)
            console.print(f"moved {db} to {moved}")
    check, created = run_index.sync_index(root, uri, include_running)
    console.print(f"indexed {len(created)} run dir(s) of {root} into {uri}")
    if check.running and not include_running:
        console.print(f"left out {len(check.running)} run dir(s) still marked running (a live job owns "
                      "them; --include-running indexes them when no job is running)")
    if check.unreadable:
        console.print(f"left out {len(check.unreadable)} run dir(s) with an unreadable tags.json: "
                      + ", ".join(map(str, check.unreadable[:5])))


@results_app.command("export")
def export(
    source: Path = typer.Argument(..., help="a results root holding run dirs"),
    dest: Path = typer.Argument(..., help="where the records go, e.g. results/acdc/runs (same layout)"),
):
    """Copy the record of every finished run (config, split, environment, tags, log, metrics,
    per-case results; no checkpoints) into DEST, so the result can be committed and re-tabled
    from a clean clone (`results rebuild --results-root DEST`, then `table --results-root DEST`)."""
    from ssl_bench import archive, run_index

    if not source.is_dir() or not run_index.find_run_dirs(source):
        fail(f"no run dirs under {source} (folders holding a tags.json); give the results root the runs wrote to")
    try:
        report = archive.export_runs(source, dest)
    except archive.ExportError as exc:
        fail(str(exc))
    size = report.bytes / 2**20
    console.print(f"exported {len(report.copied)} run record(s) to {dest} ({size:.2f} MiB); "
                  f"{len(report.unchanged)} already there unchanged")
    if report.unfinished:
        console.print(f"[yellow]left out {len(report.unfinished)} run dir(s) not marked finished:[/] "
                      + ", ".join(str(p.relative_to(source)) for p in report.unfinished))
    for line in report.left_out:
        console.print(f"[yellow]left out[/] {line}")
