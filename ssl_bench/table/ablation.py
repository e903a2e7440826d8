"""Tables 3/4: ACTION's ablations and augmentations, each beside the paper's value."""
from __future__ import annotations

import pandas as pd

from .cases import CaseData, load_cases
from .main import cell_record, interval_fields, method_checkpoints
from .model import (Block, Stat, Table, as_run_line, empty_asd_line, footnote, measured_cell, protocol_line,
                    published_cell)
from .runs import (ABLATION_METHOD, ABLATIONS, AUGMENTS, DEFAULT_AUGMENT, PAPER, REPORTED, base_method,
                   column_values, display_name, read_reference, reference_name, setting_order)
from ssl_bench.stats import MIN_RUNS

from .significance import ci_of, mark_grid, statistics_lines


def ablation_tables(runs: pd.DataFrame, checkpoint: str = REPORTED, ci: bool = False,
                    results_root=None, min_runs: int = MIN_RUNS) -> list[Table]:
    """Tables 3 and 4 for every (dataset, setting, protocol) with runs of method ``action``.
    The paper's figures fill the Published column only beside runs of the protocol that
    produced them (``field``). Bold and ``ci`` as in ``main_tables``."""
    from ssl_bench.protocols import protocol_by_tag

    runs = runs[runs["method"].map(base_method) == ABLATION_METHOD] if len(runs) else runs
    ref = read_reference("action_paper_ablations.csv")
    tables = []
    groups = runs.groupby(["dataset", "setting", "protocol_tag", "method"])
    for (dataset, setting, ptag, method), d in sorted(groups, key=lambda kv: (kv[0][0], setting_order(kv[0][1]),
                                                                             kv[0][2], kv[0][3])):
        where = f"{dataset}, {setting}"
        note = []
        if (reference_name(dataset, read_reference("action_paper_main_tables.csv")) != "acdc"
                or setting != "3 labeled"):
            note.append(f"The published ablations are on real ACDC with 3 labeled patients; "
                        f"this table is {where}.")
        proto = protocol_by_tag(ptag)
        use_ref = ref if proto is not None and proto.published else ref.iloc[0:0]
        if not len(use_ref):
            note.append(f"Published column left empty: the paper's figures come from the authors' released "
                        f"configuration (protocol field), these runs are protocol {ptag}.")
        ckpt = method_checkpoints(d, checkpoint)[method]
        variant = f" {display_name(method)}" if method != ABLATION_METHOD else ""
        cases = load_cases(d, {method: ckpt}, results_root)
        for make in (_table3, _table4):
            t = make(d, use_ref, ckpt, dataset, setting, note, cases, ci, min_runs)
            t.protocol = ptag
            t.title = t.title.replace(f", {setting} (", f", {setting}, protocol {ptag}{variant} (")
            t.footnote[0] = protocol_line(ptag)
            t.footnote.append(empty_asd_line(d))
            if (as_run := as_run_line(d)) is not None:
                t.footnote.insert(1, as_run)
            tables.append(t)
    return tables


def _ablation_table(title: str, first_cols: list[str], row_specs: list[tuple[list[str], pd.DataFrame, dict]],
                    ckpt: str, dataset: str, setting: str, note: list[str], cases: CaseData, ci: bool,
                    min_runs: int = MIN_RUNS) -> Table:
    """row_specs: (leading cell texts, runs of the row, published record + record fields)."""
    stats = [(Stat.of(column_values(r, f"test/{ckpt}/dice/mean"), 100.0), Stat.of(column_values(r, f"test/{ckpt}/asd_vox/mean")))
             for _, r, _ in row_specs]
    row_cases = [cases.cell(r["run_id"], "mean") for _, r, _ in row_specs]
    flags, tests = mark_grid([[st] for st in stats], [[c] for c in row_cases], min_runs=min_runs)
    dice_best, asd_best = flags["dice"][0], flags["asd_vox"][0]  # the one column
    table = Table(title=title, row_header=first_cols[0],
                  columns=[*first_cols[1:], "Measured DSC / ASD", "Published", "Δ DSC"])
    block = Block(None)
    for i, (lead, _, pub) in enumerate(row_specs):
        dice, asd = stats[i]
        cells = [[(t, False)] for t in lead[1:]]
        intervals = (ci_of(row_cases[i], "dice"), ci_of(row_cases[i], "asd_vox")) if ci else (None, None)
        cells.append(measured_cell(dice, asd, dice_best[i], asd_best[i], *intervals))
        cells.append(published_cell(pub.get("dice"), pub.get("asd")))
        delta = f"{dice.mean - float(pub['dice']):+.1f}" if dice and pub.get("dice") else "—"
        cells.append([(delta, False)])
        block.rows.append((lead[0], cells))
        rec = cell_record("measured", dataset, setting, ABLATION_METHOD, "ACTION", "mean", ckpt, dice, asd,
                      dice_best[i], asd_best[i])
        rec.update(pub.get("fields", {}))
        if ci:
            rec.update(interval_fields(*intervals))
        rec.update(published_dsc_percent=float(pub.get("dice") or "nan"),
                   published_asd_voxel=float(pub.get("asd") or "nan"))
        table.records.append(rec)
    table.blocks.append(block)
    table.notes.extend(note)
    shown = pd.concat([r for _, r, _ in row_specs])
    lost = [f"{r['ablation'] or 'full'} {r['augment']} seed {r['seed']} split {r['split_seed']}"
            for _, r in shown.iterrows() if str(r["run_id"]) in set(cases.missing)]
    stats_lines = statistics_lines(shown, tests, lost, ci, by=("ablation", "augment"), unscored=cases.unscored)
    table.footnote = footnote(ckpt, [
        "Measured: Average over foreground classes of runs of method action.",
        f"Published: {PAPER}, real ACDC, 3 labeled patients; not measured here, not part of the bold marks."],
        statistics=stats_lines)
    return table


def _pub(rows: pd.DataFrame) -> dict:
    if not len(rows):
        return {}
    return {"dice": rows["dice_percent"].iloc[0], "asd": rows["asd_voxel"].iloc[0]}


def _table3(runs, ref, ckpt, dataset, setting, note, cases, ci, min_runs=MIN_RUNS) -> Table:
    plain = runs[runs["augment"].isin(["", DEFAULT_AUGMENT])]
    tags = list(ABLATIONS) + sorted(set(plain["ablation"]) - set(ABLATIONS))
    specs = []
    for tag in tags:
        variant = ABLATIONS.get(tag, tag)
        hit = ref[ref["table"].isin(["3a", "3b"]) & (ref["variant"] == variant)]
        part = str(hit["table"].iloc[0]) if len(hit) else "—"
        pub = _pub(hit) | {"fields": {"table": part, "variant": variant, "ablation": tag, "augment": DEFAULT_AUGMENT}}
        specs.append(([variant, part, tag], plain[plain["ablation"] == tag], pub))
    return _ablation_table(f"Table 3 layout: ACTION ablations, {dataset}, {setting} ({ckpt} checkpoint)",
                           ["Variant", "Paper", "Tag"], specs, ckpt, dataset, setting, note, cases, ci, min_runs)


def _table4(runs, ref, ckpt, dataset, setting, note, cases, ci, min_runs=MIN_RUNS) -> Table:
    full = runs[runs["ablation"] == "none"].copy()
    full.loc[full["augment"] == "", "augment"] = DEFAULT_AUGMENT
    specs = []
    for tag in AUGMENTS + sorted(set(full["augment"]) - set(AUGMENTS)):
        student, _, teacher = tag.partition("-")
        hit = ref[(ref["table"] == "4") & (ref["student_aug"] == student) & (ref["teacher_aug"] == teacher)]
        pub = _pub(hit) | {"fields": {"table": "4", "variant": f"student {student}, teacher {teacher}",
                                      "ablation": "none", "augment": tag}}
        specs.append(([student, teacher, tag], full[full["augment"] == tag], pub))
    return _ablation_table(f"Table 4 layout: ACTION augmentations, {dataset}, {setting} ({ckpt} checkpoint)",
                           ["Student", "Teacher", "Tag"], specs, ckpt, dataset, setting, note, cases, ci, min_runs)
