"""Tables 1/2: methods x (setting, class) cells, with the paper's rows beside field runs."""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from .model import (ASD_DIGITS, DICE_DIGITS, Block, Stat, Table, best_flags, footnote,
                    measured_cell, published_cell)
from .runs import (PAPER, PUBLISHED_LABEL, REPORTED, class_order, column_values, display_name, is_main_variant,
                   method_order, read_reference, reference_name, setting_order)


def main_tables(runs: pd.DataFrame, checkpoint: str = REPORTED, with_published: bool = False,
                methods: Sequence[str] | None = None, warn=None) -> list[Table]:
    """One table per (dataset, protocol) (see the module docstring). ``methods`` limits the
    published rows, which are placed only beside runs of the protocol that produced them
    (``Protocol.published``); otherwise ``warn`` (a callable) is told why they are left out."""
    from ssl_bench.protocols import PROTOCOLS

    runs = runs[runs.apply(is_main_variant, axis=1)] if len(runs) else runs
    tables = []
    for (dataset, ptag), d in sorted(runs.groupby(["dataset", "protocol_tag"]), key=lambda kv: kv[0]):
        per_method = method_checkpoints(d, checkpoint)
        found = sorted({c.split("/")[-1] for m, ck in per_method.items()
                        for c in d.columns if c.startswith(f"test/{ck}/dice/")
                        and d.loc[d["method"] == m, c].notna().any()})
        if not found:
            continue
        classes = ["mean", *class_order(dataset, found)] if "mean" in found else class_order(dataset, found)
        settings = sorted(d["setting"].unique(), key=setting_order)
        cols = [(s, c) for s in settings for c in classes]
        shown = checkpoint if checkpoint != REPORTED else "/".join(sorted(set(per_method.values())))
        table = Table(
            title=f"{dataset}, protocol {ptag}: test DSC [%] / ASD [voxel] ({shown} checkpoint)",
            row_header="Method", columns=[_class_label(c) for _, c in cols],
            groups=[(s, len(classes)) for s in settings])
        table.protocol = ptag
        _measured_block(table, d, cols, per_method, dataset)
        extra = []
        if with_published:
            proto = PROTOCOLS.get(ptag.rpartition("-v")[0])
            if proto is not None and proto.published:
                extra = _published_block(table, dataset, cols, methods)
            else:
                why = (f"published rows are not shown beside protocol {ptag}: they were produced by the "
                       f"field's recipe; run with --protocol field to compare with them")
                table.notes.append(why[0].upper() + why[1:] + ".")
                if warn is not None:
                    warn(f"{dataset}: {why}")
        table.footnote = footnote(checkpoint, extra, ptag, per_method)
        tables.append(table)
    return tables


def method_checkpoints(runs: pd.DataFrame, checkpoint: str) -> dict[str, str]:
    """The test checkpoint shown for each method: ``checkpoint``, or with ``reported`` the one
    its runs' protocol reports (tag ``report_checkpoint``; the most common if runs disagree)."""
    out = {}
    for m, r in runs.groupby("method"):
        out[m] = checkpoint if checkpoint != REPORTED else str(r["report_checkpoint"].mode().iloc[0])
    return out


def _class_label(c: str) -> str:
    return "Average" if c == "mean" else c


def _measured_block(table: Table, runs: pd.DataFrame, cols: list[tuple[str, str]],
                    per_method: Mapping[str, str], dataset: str) -> None:
    methods = sorted(runs["method"].unique(), key=lambda m: method_order(display_name(m)))
    grid = []  # [method][column] -> (dice, asd)
    for m in methods:
        r = runs[runs["method"] == m]
        ckpt = per_method[m]
        row = []
        for s, c in cols:
            rs = r[r["setting"] == s]
            row.append((Stat.of(column_values(rs, f"test/{ckpt}/dice/{c}"), 100.0),
                        Stat.of(column_values(rs, f"test/{ckpt}/asd_vox/{c}"))))
        grid.append(row)
    ncol = len(cols)
    dice_best = [best_flags([grid[i][j][0] for i in range(len(methods))], DICE_DIGITS, True) for j in range(ncol)]
    asd_best = [best_flags([grid[i][j][1] for i in range(len(methods))], ASD_DIGITS, False) for j in range(ncol)]
    block = Block(None)
    for i, m in enumerate(methods):
        cells = [measured_cell(*grid[i][j], dice_best[j][i], asd_best[j][i]) for j in range(ncol)]
        block.rows.append((display_name(m), cells))
        for j, (s, c) in enumerate(cols):
            dice, asd = grid[i][j]
            table.records.append(cell_record("measured", dataset, s, m, display_name(m), c, per_method[m], dice,
                                         asd, dice_best[j][i], asd_best[j][i]) | {"protocol": table.protocol})
    table.blocks.append(block)


def cell_record(block, dataset, setting, method, display, cls, ckpt, dice: Stat | None, asd: Stat | None,
            dice_best: bool, asd_best: bool) -> dict:
    nan = float("nan")
    return {"block": block, "dataset": dataset, "setting": setting, "method": method,
            "display_name": display, "class": cls, "checkpoint": ckpt,
            "dsc_mean_percent": dice.mean if dice else nan, "dsc_std_percent": dice.std if dice else nan,
            "asd_mean_voxel": asd.mean if asd else nan, "asd_std_voxel": asd.std if asd else nan,
            "n": dice.n if dice else (asd.n if asd else 0), "n_asd": asd.n if asd else 0,
            "dsc_best": dice_best, "asd_best": asd_best}


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
        cells = []
        for s, c in cols:
            hit = rows[(rows["setting"] == s) & (rows["class"].str.lower() == c.lower())]
            dice = hit["dice_percent"].iloc[0] if len(hit) else None
            asd = hit["asd_voxel"].iloc[0] if len(hit) else None
            cells.append(published_cell(dice, asd))
            table.records.append(cell_record("published", name, s, disp, f"{disp} (paper)", c, "paper",
                                             Stat(float(dice), float("nan"), 1) if dice else None,
                                             Stat(float(asd), float("nan"), 1) if asd else None,
                                             False, False) | {"n": 0, "n_asd": 0})
        block.rows.append((f"{disp} (paper)", cells))
    if not block.rows:
        table.notes.append(f"No published rows for the selected methods on {name}.")
        return []
    table.blocks.append(block)
    return [f"Rows marked (paper): figures published by {PAPER} on the real {name.upper()} dataset "
            f"(no std, single run); not measured here and not part of the bold marks."]
