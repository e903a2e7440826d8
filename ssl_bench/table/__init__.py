"""Results tables in the layout of the ACTION paper (You et al., IPMI 2023).

* Tables 1/2 (``main_tables``): one table per dataset; methods as rows in the paper's order, and
  for each labeled setting a column group "Average, then each class". A cell is
  ``DSC / ASD (n=...)``, each as mean ± sample std over runs (seeds, split seeds); the best of a
  column is bold only where it is significantly better than the runner-up on paired per-case
  results (``significance``, ``ssl_bench.stats``); ``ci`` adds 95 % bootstrap intervals.
  ``with_published`` adds the paper's figures for the dataset's ``reference_name`` in a separate,
  labelled block whose rows end in "(paper)"; they never take part in the bold marks.
* Tables 3/4 (``ablation_tables``): runs of method ``action`` grouped by the tag
  ``ssl_bench.ablation`` (Table 3) and, among full-ACTION runs, by ``ssl_bench.augment``
  (Table 4, "student-teacher" augmentation), each beside the paper's value.
* Cost (``cost_tables``): what the runs of each method cost (time, device-hours, peak memory).

* Paired differences against a reference method (``paired_tables``, ``--compare-to``).

Runs come from MLflow (``load_runs``), their per-case results from their run dirs (``cases``);
a run is one (seed, split seed). When a (method, setting, seed, split
seed) was run twice, the run that ended last counts. Renderers: ``rich`` (terminal), ``md``,
``latex`` (booktabs) and ``csv`` (tidy: one line per row and column, numbers unformatted, units
in the column names; the footnote is left out of CSV).
"""
from __future__ import annotations

from .ablation import ablation_tables  # noqa: F401
from .compare import comparison_tables  # noqa: F401
from .cost import cost_tables  # noqa: F401
from .main import main_tables, method_checkpoints  # noqa: F401
from .model import (ASD_DIGITS, DICE_DIGITS, Block, Seg, Stat, Table, as_run_line, checkpoint_line,  # noqa: F401
                    fmt_ci, fmt_stat, footnote, measured_cell, protocol_line, published_cell)
from .render import render, render_csv, render_html, render_latex, render_md, render_text, rich_tables  # noqa: F401
from .runs import *  # noqa: F401,F403
from .runs import TAG_DEFAULTS, normalise_columns  # noqa: F401
from .main import DEFAULT_REFERENCE  # noqa: F401
from .paired import paired_tables  # noqa: F401
