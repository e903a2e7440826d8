"""Results tables in the layout of the ACTION paper (You et al., IPMI 2023).

* Tables 1/2 (``main_tables``): one table per dataset; methods as rows in the paper's order, and
  for each labeled setting a column group "Average, then each class". A cell is
  ``DSC / ASD (n=...)``, each as mean ± sample std over seeds; the best measured value of a column
  is bold (highest DSC, lowest ASD, compared at display precision, ties all bold).
  ``with_published`` adds the paper's figures for the dataset's ``reference_name`` in a separate,
  labelled block whose rows end in "(paper)"; they never take part in the bold marks.
* Tables 3/4 (``ablation_tables``): runs of method ``action`` grouped by the tag
  ``ssl_bench.ablation`` (Table 3) and, among full-ACTION runs, by ``ssl_bench.augment``
  (Table 4, "student-teacher" augmentation), each beside the paper's value.

Runs come from MLflow (``load_runs``); a run is one seed. When a (method, setting, seed, split
seed) was run twice, the run that ended last counts. Renderers: ``rich`` (terminal), ``md``,
``latex`` (booktabs) and ``csv`` (tidy: one line per row and column, numbers unformatted, units
in the column names; the footnote is left out of CSV).
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ssl_bench.tracking import TAG_PREFIX, make_client

PAPER_ORDER = ["UNet-F", "UNet-L", "EM", "CCT", "DAN", "URPC", "DCT", "ICT", "MT", "UAMT", "CPS",
               "GCL", "SCS", "ACTION"]
DISPLAY_NAMES = {"unet-f": "UNet-F", "unet-l": "UNet-L", "em": "EM", "cct": "CCT", "dan": "DAN",
                 "urpc": "URPC", "dct": "DCT", "ict": "ICT", "mt": "MT", "uamt": "UAMT", "cps": "CPS",
                 "gcl": "GCL", "scs": "SCS", "action": "ACTION", "bcp": "BCP"}
BUDGET_RULE = ("equal total gradient steps including pre-training stages unless a method's paper "
               "fixes its own schedule")
PAPER = "You et al., IPMI 2023"
PUBLISHED_LABEL = f"published ({PAPER}, real ACDC/LiTS)"
CHECKPOINT_MEANING = {"best": "best validation Dice", "last": "final iteration"}
#: ``checkpoint`` value meaning "the checkpoint each run's protocol reports" (tag report_checkpoint)
REPORTED = "reported"

#: ablation tag -> the ``variant`` of action_paper_ablations.csv (Table 3, paper order)
ABLATIONS = {
    "vanilla": "Vanilla (BYOL only)",
    "none": "ACTION (full)",
    "no-rsi": "w/o random sampled images (RSI)",
    "no-stage2": "w/o stage ii",
    "no-rsi-no-stage2": "w/o RSI + stage ii",
    "no-stage3": "w/o stage iii",
    "no-anco": "w/o L_anco",
    "no-unsup": "w/o L_unsup",
    # Table 3's other reading of "w/o L_unsup": drop the pseudo-label CE only, keep AnCo
    "no-pseudo-ce": "w/o pseudo-label CE (L_anco kept)",
}
#: augment tag ("student-teacher") of Table 4, paper order; ACTION's default is strong-weak
AUGMENTS = ["weak-weak", "strong-weak", "weak-strong", "strong-strong"]
DEFAULT_AUGMENT = "strong-weak"
ABLATION_METHOD = "action"


class TableError(RuntimeError):
    """Nothing to show (no store, no matching runs); the message says what to do."""


# -- loading runs ------------------------------------------------------------------------------------
def load_runs(tracking_uri: str, status: str = "finished") -> pd.DataFrame:
    """All runs of every experiment as a DataFrame: one row per run, columns ``run_id``,
    ``status``, ``end_time``, the ``ssl_bench.`` tags without prefix (``method``, ``dataset``,
    ``setting``, ``seed``, ``split_seed``, ``ablation``, ``augment``...) and one column per metric.
    ``status`` is ``finished``, ``failed``, ``running`` or ``all``."""
    from mlflow.entities import ViewType

    client = make_client(tracking_uri)
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    filt = "" if status == "all" else f"attributes.status = '{status.upper()}'"
    rows = []
    token = None
    while exp_ids:
        page = client.search_runs(exp_ids, filter_string=filt, max_results=1000, page_token=token)
        for r in page:
            row: dict[str, Any] = {"run_id": r.info.run_id, "status": r.info.status.lower(),
                                   "end_time": r.info.end_time or r.info.start_time or 0}
            row.update({k[len(TAG_PREFIX):]: v for k, v in r.data.tags.items() if k.startswith(TAG_PREFIX)})
            row.update(r.data.metrics)
            rows.append(row)
        token = page.token
        if not token:
            break
    return normalise_columns(pd.DataFrame(rows))


#: tag columns every run table has, with the value of a run that lacks the tag (runs made before
#: protocols existed were trained exactly as protocol paper v1 trains)
TAG_DEFAULTS = {"method": "", "dataset": "", "setting": "", "seed": "", "split_seed": "", "ablation": "none",
                "augment": "", "protocol": "paper", "protocol_version": "1", "report_checkpoint": "best"}


def normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Every column of TAG_DEFAULTS present, as strings, missing or empty values defaulted."""
    df = df.copy()
    for col, default in TAG_DEFAULTS.items():
        if col not in df:
            df[col] = default
        df[col] = df[col].fillna(default).astype(str)
        if default:
            df.loc[df[col] == "", col] = default
    return df


def select_runs(df: pd.DataFrame, dataset: str | None = None, methods: Sequence[str] | None = None,
                setting: str | None = None, protocol: str | None = None) -> pd.DataFrame:
    """Filter runs, then keep the last-ended run per (protocol, method, dataset, setting,
    variant, seed). ``protocol`` is a name (every version) or ``name-vN``.

    ACTION runs without an augment tag use its default augmentation and are tagged so here."""
    if dataset:
        df = df[df["dataset"] == dataset]
    if methods:
        df = df[df["method"].isin(list(methods))]
    if setting:
        df = df[df["setting"] == setting]
    df = normalise_columns(df)
    df["protocol_tag"] = df["protocol"] + "-v" + df["protocol_version"]
    if protocol:
        df = df[(df["protocol"] == protocol) | (df["protocol_tag"] == protocol)]
    df.loc[(df["method"] == ABLATION_METHOD) & (df["augment"] == ""), "augment"] = DEFAULT_AUGMENT
    keys = ["protocol_tag", "method", "dataset", "setting", "ablation", "augment", "seed", "split_seed"]
    return df.sort_values("end_time").groupby(keys, sort=False).tail(1)


def is_main_variant(row: pd.Series) -> bool:
    """Runs of the main tables: no ablation, and ACTION with its default augmentation."""
    if row["ablation"] not in ("none", ""):
        return False
    return row["method"] != ABLATION_METHOD or row["augment"] in ("", DEFAULT_AUGMENT)


# -- names and orders ----------------------------------------------------------------------------------
def display_name(method: str) -> str:
    """The method class's own ``display_name``, else the paper's spelling, else the name."""
    try:
        from ssl_bench.registry import get_method_class

        own = vars(get_method_class(method)).get("display_name")
        if isinstance(own, str) and own:
            return own
    except Exception:  # a run of a method that is not installed here
        pass
    return DISPLAY_NAMES.get(method, method)


def method_order(display: str) -> tuple:
    return (0, PAPER_ORDER.index(display), "") if display in PAPER_ORDER else (1, 0, display.lower())


def setting_order(setting: str) -> tuple:
    """"3 labeled" < "7 labeled" < "5% labeled" < "10% labeled" < anything else."""
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*(%?)", setting)
    if m:
        return (1 if m.group(2) else 0, float(m.group(1)), setting)
    return (2, 0.0, setting)


def _dataset_class(name: str):
    try:
        from ssl_bench.registry import get_dataset_class

        return get_dataset_class(name)
    except Exception:
        return None


def class_order(dataset: str, found: Iterable[str]) -> list[str]:
    """Foreground classes in the dataset's ``class_names`` order, then any others by name."""
    found = [c for c in found if c != "mean"]
    cls = _dataset_class(dataset)
    names = getattr(cls, "class_names", None) if cls is not None else None
    # a class attribute list (a dataset that computes its names per instance has none here)
    known = list(names[1:]) if isinstance(names, (list, tuple)) else []
    ordered = [c for c in known if c in found]
    return ordered + sorted(c for c in found if c not in ordered)


def reference_name(dataset: str, reference: pd.DataFrame) -> str | None:
    """The real dataset whose published figures apply (``reference_name`` of the class)."""
    cls = _dataset_class(dataset)
    ref = getattr(cls, "reference_name", None) if cls is not None else None
    if isinstance(ref, str) and ref:
        return ref
    return dataset if dataset in set(reference["dataset"]) else None


def read_reference(name: str) -> pd.DataFrame:
    """A CSV of results/reference (package ``ssl_bench.reference``)."""
    text = resources.files("ssl_bench.reference").joinpath(name).read_text(encoding="utf-8")
    # figures stay strings, printed as the paper prints them (4.10, not 4.1)
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


# -- statistics and cells --------------------------------------------------------------------------------
@dataclass
class Stat:
    mean: float
    std: float  # sample std (ddof=1); NaN when n < 2
    n: int

    @classmethod
    def of(cls, values: Iterable[float], scale: float = 1.0) -> "Stat | None":
        v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float) * scale
        if v.size == 0:
            return None
        return cls(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size))


Seg = tuple[str, bool]  # (text, bold)
DICE_DIGITS, ASD_DIGITS = 1, 2


def fmt_stat(s: Stat, digits: int) -> str:
    return f"{s.mean:.{digits}f}" + ("" if math.isnan(s.std) else f"±{s.std:.{digits}f}")


def measured_cell(dice: Stat | None, asd: Stat | None, dice_bold: bool, asd_bold: bool) -> list[Seg]:
    if dice is None and asd is None:
        return [("—", False)]
    n = dice.n if dice else asd.n
    tail = f" (n={n})" if not (dice and asd) or asd.n == dice.n else f" (n={n}; ASD n={asd.n})"
    return [(fmt_stat(dice, DICE_DIGITS) if dice else "—", dice_bold), (" / ", False),
            (fmt_stat(asd, ASD_DIGITS) if asd else "—", asd_bold), (tail, False)]


def published_cell(dice: str | None, asd: str | None) -> list[Seg]:
    """The paper's figures as printed there (strings from the reference CSV)."""
    if dice is None and asd is None:
        return [("—", False)]
    return [(f"{dice or '—'} / {asd or '—'}", False)]


def best_flags(stats: list[Stat | None], digits: int, highest: bool) -> list[bool]:
    """Bold marks for one column: the best value at display precision (ties all bold)."""
    shown = [round(s.mean, digits) if s else None for s in stats]
    valid = [v for v in shown if v is not None]
    if not valid:
        return [False] * len(stats)
    best = max(valid) if highest else min(valid)
    return [v is not None and v == best for v in shown]


# -- the table model ---------------------------------------------------------------------------------------
@dataclass
class Block:
    label: str | None
    rows: list[tuple[str, list[list[Seg]]]] = field(default_factory=list)


@dataclass
class Table:
    title: str
    row_header: str
    columns: list[str]
    groups: list[tuple[str, int]] = field(default_factory=list)  # column groups over `columns`
    blocks: list[Block] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    footnote: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # tidy rows for CSV
    protocol: str = ""  # name-vN of the runs in the table


def protocol_line(protocol_tag: str | None) -> str:
    """The footnote line naming the protocol (name, version) and its budget rule."""
    from ssl_bench.protocols import PROTOCOLS

    if not protocol_tag:
        return f"Budget: {BUDGET_RULE}."
    name, _, version = protocol_tag.rpartition("-v")
    p = PROTOCOLS.get(name)
    if p is None:
        return f"Protocol: {protocol_tag} (not known to this version of ssl-bench)."
    stale = "" if str(p.version) == version else f" (this ssl-bench defines version {p.version})"
    return f"Protocol: {protocol_tag}{stale}; budget: {p.budget_rule}."


def checkpoint_line(checkpoint: str, per_method: Mapping[str, str] | None = None) -> str:
    if checkpoint != REPORTED:
        return f"Checkpoint: {checkpoint} ({CHECKPOINT_MEANING.get(checkpoint, checkpoint)}), test split."
    used = sorted(set((per_method or {}).values()))
    if len(used) == 1:
        return (f"Checkpoint: {used[0]} ({CHECKPOINT_MEANING.get(used[0], used[0])}), as the protocol reports, "
                "test split.")
    detail = ", ".join(f"{display_name(m)}: {c}" for m, c in sorted((per_method or {}).items()))
    return f"Checkpoint: as the protocol reports for each method ({detail}), test split."


def footnote(checkpoint: str, extra: Sequence[str] = (), protocol_tag: str | None = None,
             per_method: Mapping[str, str] | None = None) -> list[str]:
    return [
        protocol_line(protocol_tag),
        checkpoint_line(checkpoint, per_method),
        "Units: DSC in %, ASD in voxels; cells are mean±std over seeds (sample std, none when n=1); "
        "n = number of seeds.",
        "Bold: best measured value per column (highest DSC, lowest ASD).",
        *extra,
    ]


def _values(runs: pd.DataFrame, column: str) -> list[float]:
    return [float(x) for x in runs[column]] if column in runs else []


# -- Tables 1/2 ----------------------------------------------------------------------------------------------
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
            row.append((Stat.of(_values(rs, f"test/{ckpt}/dice/{c}"), 100.0),
                        Stat.of(_values(rs, f"test/{ckpt}/asd_vox/{c}"))))
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
            table.records.append(_record("measured", dataset, s, m, display_name(m), c, per_method[m], dice,
                                         asd, dice_best[j][i], asd_best[j][i]) | {"protocol": table.protocol})
    table.blocks.append(block)


def _record(block, dataset, setting, method, display, cls, ckpt, dice: Stat | None, asd: Stat | None,
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
            table.records.append(_record("published", name, s, disp, f"{disp} (paper)", c, "paper",
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


# -- Tables 3/4 ------------------------------------------------------------------------------------------------
def ablation_tables(runs: pd.DataFrame, checkpoint: str = REPORTED) -> list[Table]:
    """Tables 3 and 4 for every (dataset, setting, protocol) with runs of method ``action``.
    The paper's figures fill the Published column only beside runs of the protocol that
    produced them (``field``)."""
    from ssl_bench.protocols import PROTOCOLS

    runs = runs[runs["method"] == ABLATION_METHOD] if len(runs) else runs
    ref = read_reference("action_paper_ablations.csv")
    tables = []
    for (dataset, setting, ptag), d in sorted(runs.groupby(["dataset", "setting", "protocol_tag"]),
                                              key=lambda kv: (kv[0][0], setting_order(kv[0][1]), kv[0][2])):
        where = f"{dataset}, {setting}"
        note = []
        if (reference_name(dataset, read_reference("action_paper_main_tables.csv")) != "acdc"
                or setting != "3 labeled"):
            note.append(f"The published ablations are on real ACDC with 3 labeled patients; "
                        f"this table is {where}.")
        proto = PROTOCOLS.get(ptag.rpartition("-v")[0])
        use_ref = ref if proto is not None and proto.published else ref.iloc[0:0]
        if not len(use_ref):
            note.append(f"Published column left empty: the paper's figures come from the authors' released "
                        f"configuration (protocol field), these runs are protocol {ptag}.")
        ckpt = method_checkpoints(d, checkpoint)[ABLATION_METHOD]
        for make in (_table3, _table4):
            t = make(d, use_ref, ckpt, dataset, setting, note)
            t.protocol = ptag
            t.title = t.title.replace(f", {setting} (", f", {setting}, protocol {ptag} (")
            t.footnote[0] = protocol_line(ptag)
            tables.append(t)
    return tables


def _ablation_table(title: str, first_cols: list[str], row_specs: list[tuple[list[str], pd.DataFrame, dict]],
                    ckpt: str, dataset: str, setting: str, note: list[str]) -> Table:
    """row_specs: (leading cell texts, runs of the row, published record + record fields)."""
    stats = [(Stat.of(_values(r, f"test/{ckpt}/dice/mean"), 100.0), Stat.of(_values(r, f"test/{ckpt}/asd_vox/mean")))
             for _, r, _ in row_specs]
    dice_best = best_flags([s[0] for s in stats], DICE_DIGITS, True)
    asd_best = best_flags([s[1] for s in stats], ASD_DIGITS, False)
    table = Table(title=title, row_header=first_cols[0],
                  columns=[*first_cols[1:], "Measured DSC / ASD", "Published"])
    block = Block(None)
    for i, (lead, _, pub) in enumerate(row_specs):
        dice, asd = stats[i]
        cells = [[(t, False)] for t in lead[1:]]
        cells.append(measured_cell(dice, asd, dice_best[i], asd_best[i]))
        cells.append(published_cell(pub.get("dice"), pub.get("asd")))
        block.rows.append((lead[0], cells))
        rec = _record("measured", dataset, setting, ABLATION_METHOD, "ACTION", "mean", ckpt, dice, asd,
                      dice_best[i], asd_best[i])
        rec.update(pub.get("fields", {}))
        rec.update(published_dsc_percent=float(pub.get("dice") or "nan"),
                   published_asd_voxel=float(pub.get("asd") or "nan"))
        table.records.append(rec)
    table.blocks.append(block)
    table.notes.extend(note)
    table.footnote = footnote(ckpt, [
        "Measured: Average over foreground classes of runs of method action.",
        f"Published: {PAPER}, real ACDC, 3 labeled patients; not measured here, not part of the bold marks."])
    return table


def _pub(rows: pd.DataFrame) -> dict:
    if not len(rows):
        return {}
    return {"dice": rows["dice_percent"].iloc[0], "asd": rows["asd_voxel"].iloc[0]}


def _table3(runs, ref, ckpt, dataset, setting, note) -> Table:
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
                           ["Variant", "Paper", "Tag"], specs, ckpt, dataset, setting, note)


def _table4(runs, ref, ckpt, dataset, setting, note) -> Table:
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
                           ["Student", "Teacher", "Tag"], specs, ckpt, dataset, setting, note)


# -- renderers ---------------------------------------------------------------------------------------------------
def render(tables: Sequence[Table], fmt: str, width: int = 200) -> str:
    if fmt == "md":
        return "\n\n".join(render_md(t) for t in tables) + "\n"
    if fmt == "latex":
        return "\n\n".join(render_latex(t) for t in tables) + "\n"
    if fmt == "csv":
        return render_csv(tables)
    if fmt == "rich":
        return render_text(tables, width)
    raise ValueError(f"unknown format {fmt!r}; use rich, md, csv or latex")


def _headers(t: Table) -> list[str]:
    if not t.groups:
        return list(t.columns)
    out, i = [], 0
    for g, span in t.groups:
        out += [f"{g}: {c}" for c in t.columns[i:i + span]]
        i += span
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(cell: list[Seg]) -> str:
    return "".join(f"**{_md_escape(t)}**" if b else _md_escape(t) for t, b in cell)


def render_md(t: Table) -> str:
    head = [t.row_header, *_headers(t)]
    lines = [f"**{_md_escape(t.title)}**", "", "| " + " | ".join(map(_md_escape, head)) + " |",
             "|" + "---|" * len(head)]
    for block in t.blocks:
        if block.label:
            lines.append(f"| *{_md_escape(block.label)}* |" + " |" * (len(head) - 1))
        for label, cells in block.rows:
            lines.append("| " + " | ".join([_md_escape(label), *map(_md_cell, cells)]) + " |")
    lines.append("")
    lines += [f"{_md_escape(n)}  " for n in t.notes + t.footnote]
    return "\n".join(lines).rstrip()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("—", "--")


def _tex_cell(cell: list[Seg]) -> str:
    return "".join(rf"\textbf{{{_tex(t)}}}" if b else _tex(t) for t, b in cell)


def render_latex(t: Table) -> str:
    ncol = 1 + len(t.columns)
    spec = "l" + "".join("c" * span for _, span in t.groups) if t.groups else "l" + "c" * len(t.columns)
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{_tex(t.title)}}}", r"\resizebox{\linewidth}{!}{%",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if t.groups:
        lines.append(" & " + " & ".join(rf"\multicolumn{{{span}}}{{c}}{{{_tex(g)}}}" for g, span in t.groups) + r" \\")
        rules, start = [], 2
        for _, span in t.groups:
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines.append("".join(rules))
    lines.append(" & ".join(_tex(h) for h in [t.row_header, *t.columns]) + r" \\")
    lines.append(r"\midrule")
    for block in t.blocks:
        if block.label:
            lines += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{_tex(block.label)}}}}} \\"]
        for label, cells in block.rows:
            lines.append(" & ".join([_tex(label), *map(_tex_cell, cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip", r"{\footnotesize"]
    lines += [_tex(n) + r"\\" for n in t.notes + t.footnote]
    lines += ["}", r"\end{table}"]
    return "\n".join(lines)


def render_csv(tables: Sequence[Table]) -> str:
    records = [r for t in tables for r in t.records]
    if not records:
        return ""
    fields = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


def rich_tables(t: Table) -> list:
    """Rich renderables for one table: one rich table per block (a labelled block gets its label
    as title, so published rows stand apart), notes and footnote as the last caption. A cell
    shows DSC on its first line and ASD and n on the second."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    heads = t.columns if not t.groups else [
        f"{g}\n{c}" for (g, span), start in zip(t.groups, _starts(t.groups)) for c in t.columns[start:start + span]]
    out = []
    for k, block in enumerate(t.blocks):
        last = k == len(t.blocks) - 1
        title = t.title if k == 0 else f"[italic]{escape(block.label or '')}[/italic]"
        caption = "\n".join(escape(x) for x in t.notes + t.footnote) if last else None
        rt = RichTable(title=escape(title) if k == 0 else title, caption=caption, caption_justify="left")
        rt.add_column(escape(t.row_header), overflow="fold")  # the one column that may wrap
        for h in heads:
            rt.add_column(escape(h), no_wrap=True)
        for label, cells in block.rows:
            rt.add_row(escape(label), *[_rich_cell(c) for c in cells])
        out.append(rt)
    if not t.blocks:
        out.append("\n".join(t.notes + t.footnote))
    return out


def _rich_cell(cell: list[Seg]) -> str:
    from rich.markup import escape

    text = "".join(f"[bold]{escape(x)}[/bold]" if b else escape(x) for x, b in cell)
    return text.replace(" / ", "\n", 1).replace("\n ", "\n")


def _starts(groups: list[tuple[str, int]]) -> list[int]:
    out, i = [], 0
    for _, span in groups:
        out.append(i)
        i += span
    return out


def render_text(tables: Sequence[Table], width: int = 200) -> str:
    """The rich layout as plain text (for ``--output`` with ``--format rich``)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    for t in tables:
        for part in rich_tables(t):
            console.print(part)
        console.print()
    return console.file.getvalue()
