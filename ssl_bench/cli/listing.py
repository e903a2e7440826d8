"""``ssl-bench methods`` and ``ssl-bench datasets``: what is registered (plugins included)."""
from __future__ import annotations

import typer
from rich.table import Table

from ssl_bench.cli.common import console


def methods(pattern: str = typer.Argument("*", help="glob on the name")):
    """List registered methods (built-in and plugins)."""
    from ssl_bench.registry import METHODS

    t = Table(title="methods")
    for c in ("name", "description", "paper"):
        t.add_column(c)
    for e in METHODS.entries(pattern):
        t.add_row(e.name, e.description, e.paper)
    console.print(t)


def datasets(pattern: str = typer.Argument("*", help="glob on the name")):
    """List registered datasets (built-in and plugins)."""
    from ssl_bench.registry import DATASETS

    t = Table(title="datasets")
    for c in ("name", "description", "classes", "paper"):
        t.add_column(c)
    for e in DATASETS.entries(pattern):
        t.add_row(e.name, e.description, ", ".join(getattr(e.obj, "class_names", [])[1:]), e.paper)
    console.print(t)
