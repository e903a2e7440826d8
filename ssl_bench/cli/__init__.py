"""The ``ssl-bench`` command line: one module per command group, mounted here.

    ssl-bench run --method action --dataset lits --ratio 0.05
    ssl-bench table --dataset acdc-phantom --with-published
    ssl-bench methods | datasets | protocols | data prepare/info | bench [steps|eval|reference-mt|anco|card]
    ssl-bench sweep [status] | reproduce tableN | results rebuild | ui
    ssl-bench figure curves --dataset acdc-phantom; ssl-bench report --dataset acdc-phantom

Every bad input (unknown method or dataset, ratio out of range, missing data, unknown --set key)
ends with one line naming the problem and the fix, a non-zero exit, and nothing written.
"""
from __future__ import annotations

import os

# OpenMP threads that wait sleep instead of spinning on cores other jobs need (read by libgomp
# when torch loads, so set before any command imports it; README "Speed")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from ssl_bench.cli import (bench, data, figure, listing, protocols, report, reproduce, results, run, sweep,
                           table, ui)
from ssl_bench.cli.common import console, fail, user_errors  # noqa: F401  (re-exported)

app = typer.Typer(help="ssl-bench: reproducible benchmark of semi-supervised medical image segmentation.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

app.command("run")(run.run)
app.command("table")(table.table_command)
app.command("methods")(listing.methods)
app.command("datasets")(listing.datasets)
app.command("protocols")(protocols.protocols)
app.command("reproduce")(reproduce.reproduce)
app.command("ui")(ui.ui)
app.command("figure")(figure.figure)
app.command("report")(report.report)
app.add_typer(data.data_app, name="data", help="prepare and inspect datasets")
app.add_typer(bench.bench_app, name="bench", help="speed and memory benchmarks (written to results/)")
app.add_typer(results.results_app, name="results", help="the MLflow index over the run dirs (rebuild)")
app.add_typer(sweep.sweep_app, name="sweep", help="many runs on local GPU/CPU slots or Slurm (resumable); sweep status")
