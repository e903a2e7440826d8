"""What every command module of the CLI shares: the consoles, one-line failures, user errors, and
the options several commands take (defined once, so their names and help agree)."""
from __future__ import annotations

import typer
from rich.console import Console

from ssl_bench.errors import user_errors  # noqa: F401  (re-exported: the core's list of bad-input errors)

console = Console()
err_console = Console(stderr=True)

RESULTS_ROOT = typer.Option(None, "--results-root", help="results folder (default $SSL_BENCH_RESULTS or ./results/runs)")
TRACKING_URI = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: SQLite under the results root)")
# choosing the runs a figure or a report shows (ssl_bench.cli.selection)
METHODS = typer.Option(None, "--method", help="only these methods (repeatable)")
PROTOCOL = typer.Option(None, "--protocol", help="only runs of this protocol (needed when the runs hold several)")
CHECKPOINT = typer.Option("reported", "--checkpoint", help="reported (each protocol's), best or last")
CHECKPOINTS = ("reported", "best", "last")


def fail(message: str, code: int = 2) -> None:
    """One red line naming the problem and the fix, then exit ``code`` (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
