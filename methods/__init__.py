"""Built-in methods (installed as ``ssl_bench.methods``). Importing registers them.

Each built-in is imported explicitly here; third-party methods register through the
``ssl_bench.methods`` entry-point group instead (no edit of this package needed).
"""
from .base import Batch, Method, MethodContext, Stage, StepOutput  # noqa: F401

from . import supervised  # noqa: F401,E402
from . import mt  # noqa: F401,E402
from . import action  # noqa: F401,E402
from . import cps  # noqa: F401,E402
from . import gcl  # noqa: F401,E402
from . import scs  # noqa: F401,E402
from . import bcp  # noqa: F401,E402
from . import em  # noqa: F401,E402
from . import cct  # noqa: F401,E402
from . import dan  # noqa: F401,E402
from . import urpc  # noqa: F401,E402
from . import dct  # noqa: F401,E402
from . import ict  # noqa: F401,E402
from . import uamt  # noqa: F401,E402
from . import abd  # noqa: F401,E402
from . import admt  # noqa: F401,E402
from . import unimatch  # noqa: F401,E402
from . import mcnet  # noqa: F401,E402
from . import ssnet  # noqa: F401,E402
