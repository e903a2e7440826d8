"""Figures drawn from the run dirs and MLflow (matplotlib, Agg backend, PNG and PDF).

One module per figure: ``qualitative`` (Figs. 3/4 of You et al., IPMI 2023: predictions of
chosen test slices), ``curves`` (validation Dice against iteration), ``ratio`` (test Dice
against the labeled setting), ``imbalance`` (class frequency per dataset, Fig. 1), ``seeds``
(every run's Dice: the spread over seeds). Each returns a ``FigureResult`` (files, pixel size,
the names in its legend, notes on how its data were chosen). ``ssl-bench figure KIND`` draws
one, ``ssl-bench report`` all of them.
"""
from __future__ import annotations

from .common import FigureResult, log_figures  # noqa: F401
from .curves import curves  # noqa: F401
from .imbalance import imbalance  # noqa: F401
from .qualitative import qualitative  # noqa: F401
from .ratio import ratio  # noqa: F401
from .seeds import seeds  # noqa: F401

KINDS = ("qualitative", "curves", "ratio", "imbalance", "seeds")
