"""Which exceptions mean bad input (a one-line message and exit 2 at the command line) rather
than a bug (a traceback). The core raises them; ``ssl_bench.cli`` and the core modules that
collect several results (``report``) catch them through this one list."""
from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (reported in one line), not a bug (shown with a traceback)."""
    from ssl_bench.config import ConfigError
    from ssl_bench.datasets.base import DataError
    from ssl_bench.registry import RegistryError

    return (ConfigError, DataError, RegistryError, ValueError, FileNotFoundError)
