"""Built-in datasets (installed as ``ssl_bench.datasets``). Importing registers them."""
from .base import Case, CaseRef, DataError, Dataset, Split  # noqa: F401
