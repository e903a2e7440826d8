"""Tables 1/2: methods x (setting, class) cells, with the paper's rows beside field runs."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .cases import CaseData, load_cases
from .departures import departures_line
from .model import Block, Stat, Table, as_run_line, empty_asd_line, footnote, measured_cell, published_cell
from .runs import (LATER_LABEL, LATER_REFERENCE, PAPER, PUBLISHED_LABEL, REPORTED, class_order, column_values,
                   display_name, is_main_variant, method_order, read_reference, reference_name, setting_order)
from .significance import METRICS, Family, ci_of, is_bound, mark_grid, statistics_lines
from ssl_bench.stats import MIN_RUNS

#: the reference of the paired table (``--compare-to``) when none is named
DEFAULT_REFERENCE = "unet-l"


def main_tables(runs: pd.DataFrame, checkpoint: str = REPORTED, with_published: bool = False,
                methods: Sequence[str] | None = None, warn=None, ci: bool = False,
                results_root: Path | None = None, compare_to: str | None = None,
                min_runs: int = MIN_RUNS) -> list[Table]:
    """One table per (dataset, protocol) (see the module docstring). ``methods`` limits the
    published rows, which are placed only beside runs of the protocol that produced them
    (``Protocol.published``); otherwise ``warn`` (a callable) is told why they are left out.
    Bold marks and ``ci`` intervals come from the runs' per-case results (``cases``; run dirs
    that moved are looked up under ``results_root``); the Holm family includes the paired
    table against ``compare_to`` (``paired_reference``), so the two never disagree."""
    from ssl_bench.protocols import protocol_by_tag

    runs = runs[runs.apply(is_main_variant, axis=1)] if len(runs) else runs
    tables = []
    for (dataset, ptag), d in sorted(runs.groupby(["dataset", "protocol_tag"]), key=lambda kv: kv[0]):
        per_method = method_checkpoints(d, checkpoint)
        cols = table_columns(d, per_method, dataset)
        if not cols:
            continue
        table = Table(
            title=f"{dataset}, protocol {ptag}: test DSC [%] / ASD [voxel] ({shown_checkpoint(checkpoint, per_method)} checkpoint)",
            row_header="Method", columns=[class_label(c) for _, c in cols], groups=column_groups(cols))
        table.protocol = ptag
        cases = load_cases(d, per_method, results_root)
        if warn is not None:
            for line in missing_warnings(d, cases):
                warn(f"{dataset}, protocol {ptag}: {line}")
        stats_lines = _measured_block(table, d, cols, per_method, dataset, cases, ci,
                                      paired_reference(d, compare_to), min_runs)
        extra = []
        if with_published:
            proto = protocol_by_tag(ptag)
            if proto is not None and proto.published:
                extra = _published_block(table, dataset, cols, methods)
                extra += _later_block(table, dataset, cols, methods or list(d["method"].unique()))
            else:
                why = (f"published rows are not shown beside protocol {ptag}: they were produced by the "
                       f"field's recipe; run with --protocol field to compare with them")
                table.notes.append(why[0].upper() + why[1:] + ".")
                if warn is not None:
                    warn(f"{dataset}: {why}")
        departed = departures_line(d, results_root)
        table.footnote = footnote(checkpoint, [empty_asd_line(d), *([departed] if departed else []), *extra],
                                  ptag, per_method, stats_lines, as_run_line(d))
        tables.append(table)
    return tables


def method_checkpoints(runs: pd.DataFrame, checkpoint: str) -> dict[str, str]:
    """The test checkpoint shown for each method: ``checkpoint``, or with ``reported`` the one
    its runs' protocol reports (tag ``report_checkpoint``; the most common if runs disagree)."""
    out = {}
    for m, r in runs.groupby("method"):
        out[m] = checkpoint if checkpoint != REPORTED else str(r["report_checkpoint"].mode().iloc[0])
    return out


def table_columns(runs: pd.DataFrame, per_method: Mapping[str, str], dataset: str) -> list[tuple[str, str]]:
    """(setting, class) columns: each setting's Average, then its classes in the dataset's order."""
    found = sorted({c.split("/")[-1] for m, ck in per_method.items()
                    for c in runs.columns if c.startswith(f"test/{ck}/dice/")
                    and runs.loc[runs["method"] == m, c].notna().any()})
    classes = ["mean", *class_order(dataset, found)] if "mean" in found else class_order(dataset, found)
    settings = sorted(runs["setting"].unique(), key=setting_order)
    return [(s, c) for s in settings for c in classes]


def column_groups(cols: list[tuple[str, str]]) -> list[tuple[str, int]]:
    settings = list(dict.fromkeys(s for s, _ in cols))
    return [(s, sum(1 for t, _ in cols if t == s)) for s in settings]


def shown_checkpoint(checkpoint: str, per_method: Mapping[str, str]) -> str:
    return checkpoint if checkpoint != REPORTED else "/".join(sorted(set(per_method.values())))


def class_label(c: str) -> str:
    return "Average" if c == "mean" else c


def paired_reference(runs: pd.DataFrame, compare_to: str | None) -> str | None:
    """The reference of the paired table: ``compare_to``, else UNet-L where it was run; None for
    ``none`` or a reference without runs here."""
    if (compare_to or "").lower() == "none":
        return None
    ref = compare_to or DEFAULT_REFERENCE
    return ref if ref in set(runs["method"]) else None


def ordered_methods(runs: pd.DataFrame) -> list[str]:
    return sorted(runs["method"].unique(), key=lambda m: method_order(display_name(m)))


def measured_grid(runs: pd.DataFrame, cols: list[tuple[str, str]], per_method: Mapping[str, str],
                  methods: Sequence[str], cases: CaseData):
    """[method][column] -> (DSC, ASD) stats from MLflow, and the cell's per-case rows."""
    grid, cells = [], []
    for m in methods:
        r = runs[runs["method"] == m]
        ckpt = per_method[m]
        row, cell_row = [], []
        for s, c in cols:
            rs = r[r["setting"] == s]
            row.append((Stat.of(column_values(rs, f"test/{ckpt}/dice/{c}"), 100.0),
                        Stat.of(column_values(rs, f"test/{ckpt}/asd_vox/{c}"))))
            cell_row.append(cases.cell(rs["run_id"], c))
        grid.append(row)
        cells.append(cell_row)
    return grid, cells


def table_family(runs: pd.DataFrame, cols, per_method, cases: CaseData, reference: str | None,
                 min_runs: int = MIN_RUNS) -> Family:
    """The Holm family of a (dataset, protocol): every best-vs-runner-up comparison of the main
    table and, with a ``reference``, every method against it (the paired table)."""
    from .significance import runner_up_pairs

    ptag = str(runs["protocol_tag"].iloc[0]) if "protocol_tag" in runs and len(runs) else None
    methods = ordered_methods(runs)
    grid, cells = measured_grid(runs, cols, per_method, methods, cases)
    competes = [not is_bound(m, ptag) for m in methods]
    family = Family(min_runs=min_runs)
    for j in range(len(cols)):
        at = lambda m, j=j: cells[methods.index(m)][j]  # noqa: E731
        for k, metric in enumerate(METRICS):
            pair = runner_up_pairs([grid[i][j][k] for i in range(len(methods))], j, metric, competes)
            if pair is not None:
                family.add(j, metric, methods[pair[0]], methods[pair[1]], at)
            if reference is not None:
                for m in methods:
                    if m != reference:
                        family.add(j, metric, m, reference, at)
    return family.correct()


def run_label(run) -> str:
    return f"{display_name(run['method'], run.get('dataset'))} {run['setting']} seed {run['seed']} split {run['split_seed']}"


def missing_runs(runs: pd.DataFrame, cases: CaseData) -> list[str]:
    lacking = set(cases.lacking(runs["run_id"]))
    return [run_label(r) for _, r in runs.iterrows() if str(r["run_id"]) in lacking]


def missing_warnings(runs: pd.DataFrame, cases: CaseData) -> list[str]:
    lost = missing_runs(runs, cases)
    return [f"no per-case results for {len(lost)} run(s), left out of the tests and intervals: "
            f"{', '.join(lost)}"] if lost else []


def _measured_block(table: Table, runs: pd.DataFrame, cols: list[tuple[str, str]],
                    per_method: Mapping[str, str], dataset: str, cases: CaseData, ci: bool,
                    reference: str | None = None, min_runs: int = MIN_RUNS) -> list[str]:
    """The measured rows; returns the footnote's statistics lines."""
    methods = ordered_methods(runs)
    grid, cells = measured_grid(runs, cols, per_method, methods, cases)
    family = table_family(runs, cols, per_method, cases, reference, min_runs)
    bounds = [m for m in methods if is_bound(m, table.protocol)]
    flags, tests = mark_grid(grid, cells, methods, [m not in bounds for m in methods], family)
    # too few paired runs: the cell says so (missing per-case results are named in the footnote)
    notes = {(t.metric, t.column, t.best): f"not tested: {t.why_untested}" for t in tests
             if not t.test.tested and t.result is not None}
    block = Block(None)
    for i, m in enumerate(methods):
        row_cells = []
        for j, (s, c) in enumerate(cols):
            dice, asd = grid[i][j]
            intervals = (ci_of(cells[i][j], "dice"), ci_of(cells[i][j], "asd_vox")) if ci else (None, None)
            bold = (flags["dice"][j][i], flags["asd_vox"][j][i])
            row_cells.append(measured_cell(dice, asd, *bold, *intervals, notes.get(("dice", j, i), ""),
                                           notes.get(("asd_vox", j, i), "")))
            rec = cell_record("measured", dataset, s, m, display_name(m, dataset), c, per_method[m], dice, asd, *bold)
            if ci:
                rec |= interval_fields(*intervals)
            table.records.append(rec | {"protocol": table.protocol, "reference_row": m in bounds})
        block.rows.append((display_name(m, dataset), row_cells))
    table.blocks.append(block)
    return statistics_lines(runs, tests, missing_runs(runs, cases), ci, family=family,
                            bounds=[display_name(m, dataset) for m in bounds], unscored=cases.unscored,
                            paired_with=display_name(reference, dataset) if reference else None)


def interval_fields(dice_ci, asd_ci) -> dict:
    nan = float("nan")
    return {"dsc_ci_low_percent": dice_ci[0] if dice_ci else nan, "dsc_ci_high_percent": dice_ci[1] if dice_ci else nan,
            "asd_ci_low_voxel": asd_ci[0] if asd_ci else nan, "asd_ci_high_voxel": asd_ci[1] if asd_ci else nan}


def cell_record(block, dataset, setting, method, display, cls, ckpt, dice: Stat | None, asd: Stat | None,
            dice_best: bool, asd_best: bool) -> dict:
    nan = float("nan")
    return {"block": block, "dataset": dataset, "setting": setting, "method": method,
            "display_name": display, "class": cls, "checkpoint": ckpt,
            "dsc_mean_percent": dice.mean if dice else nan, "dsc_std_percent": dice.std if dice else nan,
            "asd_mean_voxel": asd.mean if asd else nan, "asd_std_voxel": asd.std if asd else nan,
            "n": dice.n if dice else (asd.n if asd else 0), "n_asd": asd.n if asd else 0,
            "dsc_best": dice_best, "asd_best": asd_best}


def _published_row(table: Table, name: str, label: str, disp: str, rows: pd.DataFrame,
                   cols: list[tuple[str, str]]) -> tuple[str, list]:
    """One row of published figures (``rows``: a reference CSV's rows of one method); its cells are
    also recorded (block ``published``)."""
    cells = []
    for s, c in cols:
        hit = rows[(rows["setting"] == s) & (rows["class"].str.lower() == c.lower())]
        dice = hit["dice_percent"].iloc[0] if len(hit) else None
        asd = hit["asd_voxel"].iloc[0] if len(hit) else None
        cells.append(published_cell(dice, asd))
        table.records.append(cell_record("published", name, s, disp, label, c, "paper",
                                         Stat(float(dice), float("nan"), 1) if dice else None,
                                         Stat(float(asd), float("nan"), 1) if asd else None,
                                         False, False) | {"n": 0, "n_asd": 0})
    return label, cells


def _later_block(table: Table, dataset: str, cols: list[tuple[str, str]], methods: Sequence[str]) -> list[str]:
    """The published rows of methods after ACTION's tables (``LATER_REFERENCE``), for the methods
    shown (run or selected) only; returns footnote lines naming each row's source."""
    ref = read_reference(LATER_REFERENCE)
    name = reference_name(dataset, read_reference("action_paper_main_tables.csv"))
    ref = ref[ref["dataset"] == name] if name else ref.iloc[0:0]
    wanted = {display_name(m) for m in methods}
    block, sources = Block(LATER_LABEL), []
    for disp in sorted(dict.fromkeys(ref["method"]), key=method_order):
        rows = ref[ref["method"] == disp]
        if disp not in wanted or not set(rows["setting"]) & {s for s, _ in cols}:
            continue
        block.rows.append(_published_row(table, name, f"{disp} (published)", disp, rows, cols))
        sources += [f"{disp}: {src}" for src in dict.fromkeys(rows["source"])]
    if not block.rows:
        return []
    table.blocks.append(block)
    return ["Rows marked (published): each method's own published figures on the real ACDC dataset "
            "(no std, single run); not measured here and not part of the bold marks. Sources: "
            + "; ".join(sources) + "."]


def _published_block(table: Table, dataset: str, cols: list[tuple[str, str]],
                     methods: Sequence[str] | None) -> list[str]:
    """Append the paper's rows; returns footnote lines."""
    ref = read_reference("action_paper_main_tables.csv")
    name = reference_name(dataset, ref)
    if name is None:
        table.notes.append(f"No published figures for dataset {dataset!r} (it has no reference_name).")
        return []
    ref = ref[ref["dataset"] == name]
    paper_settings = sorted(ref["setting"].unique(), key=setting_order)
    shown = sorted({s for s, _ in cols} & set(paper_settings), key=setting_order)
    if not shown:
        table.notes.append(f"No published figures for the settings shown; the paper reports {name} "
                           f"for: {', '.join(paper_settings)}.")
        return []
    wanted = {display_name(m) for m in methods} if methods else None
    order = list(dict.fromkeys(ref["method"]))
    block = Block(PUBLISHED_LABEL)
    for disp in sorted(order, key=method_order):
        if wanted is not None and disp not in wanted:
            continue
        rows = ref[ref["method"] == disp]
        block.rows.append(_published_row(table, name, f"{disp} (paper)", disp, rows, cols))
    if not block.rows:
        table.notes.append(f"No published rows for the selected methods on {name}.")
        return []
    table.blocks.append(block)
    return [f"Rows marked (paper): figures published by {PAPER} on the real {name.upper()} dataset "
            f"(no std, single run); not measured here and not part of the bold marks."]
