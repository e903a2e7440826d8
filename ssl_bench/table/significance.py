"""Which measured cells are bold, their confidence intervals, and what each std covers.

Bold (``mark_grid``): in each column and for each metric, among the rows that compete (reference
rows, ``is_bound``, never do: they are printed and compared against, never bold), the row with
the best shown mean (highest DSC, lowest ASD) is compared with the runner-up by
``ssl_bench.stats.compare``: the paired difference of the cell statistic on the same runs and
patients, tested with a variance that holds both the spread over seeds and over patients. A
comparison with fewer than ``min_runs`` paired runs is not tested, and the cell says so. The
p-values of every comparison that was tested form one Holm family; a main table and its paired
table share it (``Family``), so the same comparison gets the same adjusted p in both. The best is
bold only where its adjusted p < ``ALPHA`` and the difference favours it.

Spread (``spread_line``): a run is one (seed, split seed); the ± of a cell is the sample std over
its runs, which covers initialisation seeds, labeled sets (split seeds of a split that draws the
labeled patients, i.e. any split but the field's fixed list), or both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import pandas as pd

from ssl_bench.stats import ALPHA, MIN_RUNS, Comparison, bold, cell_of, compare, estimate, holm

from .model import ASD_DIGITS, DICE_DIGITS, Stat
from .runs import base_method, display_name

#: per-case column -> (display digits, higher is better)
METRICS = {"dice": (DICE_DIGITS, True), "asd_vox": (ASD_DIGITS, False)}
#: per-case value -> table unit (DSC in %)
SCALE = {"dice": 100.0, "asd_vox": 1.0}
#: reference rows of every protocol: the fully supervised upper bound
UPPER_BOUNDS = ("unet-f",)


def is_bound(method: str, protocol_tag: str | None = None) -> bool:
    """A reference row (never bold): UNet-F, or a method the protocol lists in ``bounds``
    (e.g. a lower bound)."""
    if base_method(method) in UPPER_BOUNDS:
        return True
    if not protocol_tag:
        return False
    from ssl_bench.protocols import PROTOCOLS

    proto = PROTOCOLS.get(str(protocol_tag).rpartition("-v")[0] or str(protocol_tag))
    bounds = getattr(proto, "bounds", ()) or ()
    return method in bounds or base_method(method) in bounds


def comparison(a: pd.DataFrame, b: pd.DataFrame, metric: str, min_runs: int = MIN_RUNS) -> Comparison | None:
    """``a - b`` from the per-case rows of two cells (None: a side has none)."""
    if not len(a) or not len(b):
        return None
    return compare(cell_of(a, metric), cell_of(b, metric), min_runs)


# ----------------------------------------------------------------------------- the family


@dataclass
class Test:
    """One comparison ``a - b`` (rows of one table) in one column and metric."""

    column: int
    metric: str
    a: str
    b: str
    result: Comparison | None  # None: a side has no per-case results
    p_holm: float = math.nan

    @property
    def tested(self) -> bool:
        return self.result is not None and self.result.tested and math.isfinite(self.result.p)


@dataclass
class Family:
    """Every comparison of a (dataset, protocol) table and of its paired table; Holm over those
    that were tested (their number is ``size``)."""

    tests: dict[tuple, Test] = field(default_factory=dict)
    min_runs: int = MIN_RUNS

    @staticmethod
    def key(column: int, metric: str, a: str, b: str) -> tuple:
        return (column, metric, *sorted((a, b)))

    def add(self, column: int, metric: str, a: str, b: str, cells: Callable[[str], pd.DataFrame]) -> None:
        k = self.key(column, metric, a, b)
        if k not in self.tests:
            x, y = k[2], k[3]
            self.tests[k] = Test(column, metric, x, y, comparison(cells(x), cells(y), metric, self.min_runs))

    def correct(self) -> "Family":
        tests = list(self.tests.values())
        for t, p in zip(tests, holm([t.result.p if t.tested else math.nan for t in tests])):
            t.p_holm = p
        return self

    @property
    def size(self) -> int:
        return sum(t.tested for t in self.tests.values())

    def get(self, column: int, metric: str, a: str, b: str) -> tuple[Comparison | None, float, Test]:
        """``a - b`` (oriented), its Holm p and the test."""
        t = self.tests[self.key(column, metric, a, b)]
        r = t.result
        if r is not None and t.a != a:
            r = r.flipped()
        return r, t.p_holm, t


@dataclass
class RunnerUp:
    """The best competing row of one column and metric against the runner-up."""

    column: int
    metric: str
    best: int
    runner_up: int
    test: Test
    names: tuple = ("", "")  # the family keys of best and runner-up

    @property
    def result(self) -> Comparison | None:
        """best - runner-up."""
        r = self.test.result
        return None if r is None else (r if self.test.a == self.names[0] else r.flipped())

    @property
    def p_holm(self) -> float:
        return self.test.p_holm

    @property
    def significant(self) -> bool:
        return bold(self.result, self.p_holm, METRICS[self.metric][1])

    @property
    def why_untested(self) -> str:
        r = self.result
        if r is None:
            return "no per-case results"
        return r.why_not


def runner_up_pairs(stats: Sequence[Stat | None], column: int, metric: str, competes: Sequence[bool]
                    ) -> tuple[int, int] | None:
    """(best, runner-up) row indices among the competing rows; None: fewer than two, or a tie
    at display precision."""
    digits, highest = METRICS[metric]
    ranked = sorted((i for i, s in enumerate(stats) if s is not None and competes[i]),
                    key=lambda i: stats[i].mean, reverse=highest)
    if len(ranked) < 2:
        return None
    best, second = ranked[:2]
    if round(stats[best].mean, digits) == round(stats[second].mean, digits):
        return None
    return best, second


def mark_grid(grid: list[list[tuple[Stat | None, Stat | None]]], cells: list[list[pd.DataFrame]],
              names: Sequence[str] | None = None, competes: Sequence[bool] | None = None,
              family: Family | None = None, min_runs: int = MIN_RUNS
              ) -> tuple[dict[str, list[list[bool]]], list[RunnerUp]]:
    """Bold flags (metric -> [column][row]) for a [row][column] grid of (DSC, ASD) stats and the
    per-case rows of each cell, and the runner-up comparisons. ``names`` are the rows' keys in
    ``family`` (built and corrected here when not given); ``competes`` which rows may be bold."""
    n_rows, n_cols = len(grid), len(grid[0]) if grid else 0
    names = list(names) if names is not None else [str(i) for i in range(n_rows)]
    competes = list(competes) if competes is not None else [True] * n_rows
    own = family is None
    family = family or Family(min_runs=min_runs)
    pairs = []
    for j in range(n_cols):
        for k, metric in enumerate(METRICS):
            pair = runner_up_pairs([grid[i][j][k] for i in range(n_rows)], j, metric, competes)
            if pair is None:
                continue
            if own:
                family.add(j, metric, names[pair[0]], names[pair[1]],
                           lambda m, j=j: cells[names.index(m)][j])
            pairs.append((j, metric, *pair))
    if own:
        family.correct()
    tests = []
    for j, metric, best, second in pairs:
        _, _, t = family.get(j, metric, names[best], names[second])
        tests.append(RunnerUp(j, metric, best, second, t, (names[best], names[second])))
    flags = {m: [[False] * n_rows for _ in range(n_cols)] for m in METRICS}
    for t in tests:
        flags[t.metric][t.column][t.best] = t.significant
    return flags, tests


# ----------------------------------------------------------------------------- footnotes


def statistics_lines(runs: pd.DataFrame, tests: list[RunnerUp], missing_runs: int | Sequence[str], ci: bool,
                     by: Sequence[str] = ("method", "setting"), family: Family | None = None,
                     bounds: Sequence[str] = (), unscored: Sequence[tuple] = (),
                     paired_with: str | None = None) -> list[str]:
    """The footnote lines of a measured table: spread, bold rule, intervals, what is missing."""
    missing = [] if isinstance(missing_runs, int) else list(missing_runs)
    n_missing = missing_runs if isinstance(missing_runs, int) else len(missing)
    return [spread_line(runs, by), bold_line(tests, n_missing, family, bounds, paired_with),
            *([ci_line(n_missing)] if ci else []), *missing_lines(missing, unscored)]


def _span(values: Iterable[int]) -> str:
    values = list(values)
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


TEST_TEXT = ("paired difference of the cell statistic (same seeds, split seeds and patients), t-test whose "
             "variance holds both the spread over seeds and over patients (two-way crossed random effects)")


def family_text(family_size: int, paired_with: str | None) -> str:
    where = f"this table and its paired table against {paired_with}" if paired_with else "this table"
    return f"Holm-corrected over the {family_size} test(s) run for {where}"


def bold_line(tests: list[RunnerUp], missing_runs: int, family: Family | None = None,
              bounds: Sequence[str] = (), paired_with: str | None = None) -> str:
    """The footnote line that says how bold was decided."""
    size = family.size if family is not None else sum(t.test.tested for t in tests)
    min_runs = family.min_runs if family is not None else MIN_RUNS
    rule = ("Bold: a column's best mean (highest DSC, lowest ASD), only where it is significantly better than "
            f"the runner-up: {TEST_TEXT}; {family_text(size, paired_with)}, alpha = {ALPHA}; tested only with "
            f">= {min_runs} paired runs")
    if bounds:
        rule += f"; reference rows ({', '.join(bounds)}) are not ranked and never bold"
    done = [t.result for t in tests if t.test.tested]
    if done:
        rule += (f"; n = runs x patients per comparison: {_span(r.n_runs for r in done)} x "
                 f"{_span(r.n_patients for r in done)}")
    untested = [t for t in tests if not t.test.tested]
    if untested:
        whys = sorted({t.why_untested + ("" if t.result is None else ", said in the cell") for t in untested})
        rule += f"; {len(untested)} best mean(s) not tested (no bold): {'; '.join(whys)}"
    if not tests:
        rule += " (nothing to compare: fewer than two competing rows per column, or ties as shown)"
    return rule + "."


def ci_of(cell: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """The 95 % interval of a cell (seeds and patients), in table units."""
    if not len(cell):
        return None
    e = estimate(cell_of(cell, metric))
    if e is None or not (math.isfinite(e.ci[0]) and math.isfinite(e.ci[1])):
        return None
    return e.ci[0] * SCALE[metric], e.ci[1] * SCALE[metric]


def ci_line(missing_runs: int) -> str:
    line = ("[lo, hi]: 95 % confidence interval of the cell's mean, t interval whose variance holds the spread "
            "over seeds and over patients (a cell of one run: patients only); it uses the statistic shown "
            "(Average: mean over classes of the class means), from the per-case results")
    if missing_runs:
        line += f"; none where per-case results are missing ({missing_runs} run(s))"
    return line + "."


def missing_lines(missing: Sequence[str], unscored: Sequence[tuple]) -> list[str]:
    lines = []
    if missing:
        lines.append(f"Per-case results (test_<checkpoint>_per_case.csv) missing for {len(missing)} run(s), left "
                     f"out of every test and interval: {', '.join(missing)}.")
    if unscored:
        shown = ", ".join(f"{case} ({cls}, {run})" for run, case, cls in unscored[:10])
        more = f" and {len(unscored) - 10} more" if len(unscored) > 10 else ""
        lines.append(f"Cases that could not be scored (no value, not both-empty): {shown}{more}.")
    return lines


def spread_kind(runs: pd.DataFrame) -> str:
    """What the spread over these runs covers."""
    seeds = runs["seed"].nunique() > 1
    split = runs["split"] if "split" in runs else pd.Series([""] * len(runs), index=runs.index)
    drawn = runs[split.fillna("").astype(str) != "field"]
    splits = drawn["split_seed"].nunique() > 1
    if seeds and splits:
        return "initialisation seeds and labeled sets (split seeds)"
    if splits:
        return "labeled sets (split seeds)"
    return "initialisation seeds"


def spread_line(runs: pd.DataFrame, by: Sequence[str] = ("method", "setting")) -> str:
    """The footnote line saying what each std covers (one clause per kind)."""
    kinds: dict[str, list[str]] = {}
    for key, r in runs.groupby(list(by), sort=True):
        if len(r) < 2:
            continue  # one run: no std to describe
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join([display_name(key[0]), *map(str, key[1:])]) if by[0] == "method" else " ".join(map(str, key))
        kinds.setdefault(spread_kind(r), []).append(label)
    if not kinds:
        return "No std: one run per cell; n = number of runs (seed x split seed)."
    if len(kinds) == 1:
        return f"Std covers {next(iter(kinds))}; n = number of runs (seed x split seed)."
    parts = [f"{kind} for {', '.join(labels)}" for kind, labels in kinds.items()]
    return "Std covers " + "; ".join(parts) + "; n = number of runs (seed x split seed)."
