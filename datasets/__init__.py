"""Built-in datasets (installed as ``ssl_bench.datasets``). Importing registers them."""
from .base import Case, CaseRef, DataError, Dataset, Split  # noqa: F401
from . import acdc, phantom  # noqa: F401,E402  (registers "acdc", "acdc-phantom")
from . import lits, nnunet, phantom_lits  # noqa: F401,E402  (registers "lits", "nnunet", "lits-phantom")
from . import la  # noqa: F401,E402  (registers "la", "la-small": the 3D Left Atrium track)
