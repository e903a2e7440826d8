"""``ssl-bench table``: the paper's tables from the runs recorded in MLflow.

``table_command`` is a plain typer command function; the main CLI mounts it with
``app.command("table")(table_command)``.
"""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ssl_bench.cli.common import RESULTS_ROOT, TRACKING_URI


class Checkpoint(str, Enum):
    reported = "reported"
    best = "best"
    last = "last"


class Format(str, Enum):
    rich = "rich"
    md = "md"
    csv = "csv"
    latex = "latex"


class Status(str, Enum):
    finished = "finished"
    failed = "failed"
    running = "running"
    all = "all"


def table_command(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="only this dataset (default: one table per dataset)"),
    method: Optional[List[str]] = typer.Option(None, "--method", help="only these methods (repeatable)"),
    setting: Optional[str] = typer.Option(None, "--setting", help='only this labeled setting, e.g. "3 labeled"'),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="only runs of this protocol (name, or name-vN); default: one table per protocol"),
    checkpoint: Checkpoint = typer.Option(Checkpoint.reported, "--checkpoint", help="test results of the best-on-val or the last weights; reported: the one each run's protocol reports"),
    fmt: Format = typer.Option(Format.rich, "--format", help="rich (terminal), md, csv (tidy) or latex"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write to this file (atomically) instead of the terminal"),
    with_published: bool = typer.Option(False, "--with-published", help="add the paper's published rows (separate, labelled block)"),
    ablation: bool = typer.Option(False, "--ablation", help="Tables 3 and 4: ACTION ablations and augmentations"),
    cost: bool = typer.Option(False, "--cost", help="what the runs cost per method: time, device-hours, peak memory"),
    ci: bool = typer.Option(False, "--ci", help="add 95% bootstrap confidence intervals (seeds x test cases) to every cell"),
    compare_to: Optional[str] = typer.Option(None, "--compare-to", help="paired per-case differences of every method against this one (default: unet-l where present; 'none': no comparison)"),
    min_runs: int = typer.Option(3, "--min-runs", min=1, help="paired runs (seed x split seed) a comparison needs before it is tested and can be bold"),
    status: Status = typer.Option(Status.finished, "--status", help="which runs to read (MLflow run status)"),
    reindex: bool = typer.Option(True, "--reindex/--no-reindex", help="first index the run dirs MLflow lacks (else only count them)"),
    results_root: Optional[Path] = RESULTS_ROOT,
    tracking_uri: Optional[str] = TRACKING_URI,
) -> None:
    """Print the results table (Tables 1/2 layout; Tables 3/4 with --ablation)."""
    from ssl_bench import table as tbl
    from ssl_bench import mlflow_store, run_index

    root = mlflow_store.results_root(results_root)
    uri = mlflow_store.default_tracking_uri(root, tracking_uri)
    db = mlflow_store.sqlite_path(uri)
    if db is not None and not db.exists() and not run_index.find_run_dirs(root):
        _fail(f"no MLflow store at {db}: no run has been recorded there yet "
              "(run `ssl-bench run` first, or pass --results-root / --tracking-uri)")
    try:
        _reconcile_index(root, uri, reindex, status.value)
        runs = tbl.load_runs(uri, status.value)
    except Exception as exc:
        _fail(f"cannot read runs from MLflow at {uri}: {type(exc).__name__}: {exc}")
    what = _describe(status.value, dataset, method, setting, protocol)
    if runs.empty:
        _fail(f"no {what} in {uri}")
    runs = tbl.select_runs(runs, dataset, method, setting, protocol)
    if compare_to and compare_to.lower() != "none" and compare_to not in set(runs["method"]):
        _fail(f"--compare-to {compare_to}: no {what} of that method; use one of "
              f"{', '.join(sorted(set(runs['method'])))}, or none")
    if cost:
        tables = tbl.cost_tables(runs)
        if not tables:
            _fail(f"no {what} with a cost record in {uri} (runs record their cost since ssl-bench measures it)")
    elif ablation:
        tables = tbl.ablation_tables(runs, checkpoint.value, ci, root, min_runs=min_runs)
        if not tables:
            _fail(f"no {what} of method {tbl.ABLATION_METHOD} in {uri}; --ablation reads ACTION runs "
                  "tagged ssl_bench.ablation / ssl_bench.augment")
    else:
        warn = lambda msg: typer.echo(f"warning: {msg}", err=True)  # noqa: E731
        tables = tbl.main_tables(runs, checkpoint.value, with_published, method, warn=warn, ci=ci,
                                 results_root=root, compare_to=compare_to, min_runs=min_runs)
        if not tables:
            _fail(f"no {what} with test/{checkpoint.value}/dice metrics in {uri}")
        if (compare_to or "").lower() != "none":
            tables += tbl.paired_tables(runs, checkpoint.value, compare_to, root, warn, min_runs)

    if output is not None:
        from ssl_bench.datasets.base import atomic_write_text

        atomic_write_text(output, tbl.render(tables, fmt.value))
        typer.echo(f"wrote {output}", err=True)
    elif fmt is Format.rich:
        from rich.console import Console

        console = Console()
        for t in tables:
            for part in tbl.rich_tables(t):
                console.print(part)
            console.print()
    else:
        sys.stdout.write(tbl.render(tables, fmt.value))


def _reconcile_index(root: Path, uri: str, reindex: bool, status: str) -> None:
    """The run dirs are the record and MLflow their index: never print a table that silently
    misses runs on disk. Index the run dirs the store lacks, or say how many are left out."""
    from ssl_bench import mlflow_store, run_index

    if reindex:
        check, created = run_index.sync_index(root, uri)
        if created:
            typer.echo(f"indexed {len(created)} run dir(s) of {root} that MLflow lacked", err=True)
        missing = []
    else:
        check = run_index.check_index(root, mlflow_store.make_client(uri))
        missing = check.missing
    running = check.running if status in ("running", "all") else []
    left_out = len(missing) + len(running) + len(check.unreadable)
    if left_out:
        typer.echo(f"left out {left_out} run dir(s) of {root} that MLflow lacks or holds only in part "
                   f"({len(missing)} finished or "
                   f"failed, {len(running)} still running, {len(check.unreadable)} with an unreadable "
                   "tags.json); `ssl-bench results rebuild` indexes them", err=True)


def _describe(status: str, dataset, methods, setting, protocol=None) -> str:
    what = "runs" if status == "all" else f"{status} runs"
    filters = [f"dataset={dataset}"] if dataset else []
    filters += [f"protocol={protocol}"] if protocol else []
    filters += [f"method={','.join(methods)}"] if methods else []
    filters += [f"setting={setting!r}"] if setting else []
    return what + (f" matching {' '.join(filters)}" if filters else "")


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)
