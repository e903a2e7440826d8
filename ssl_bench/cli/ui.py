"""``ssl-bench ui``: the MLflow UI on the results store."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from ssl_bench.cli.common import console


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
