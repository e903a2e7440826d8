"""What every command module of the CLI shares: the consoles, one-line failures, user errors."""
from __future__ import annotations

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """One red line naming the problem and the fix, then exit ``code`` (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (reported in one line), not a bug (shown with a traceback)."""
    from ssl_bench.config import ConfigError
    from ssl_bench.datasets.base import DataError
    from ssl_bench.registry import RegistryError

    return (ConfigError, DataError, RegistryError, ValueError, FileNotFoundError)
