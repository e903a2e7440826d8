"""The table model (cells, blocks, tables), per-cell statistics and footnotes."""
from __future__ import annotations

import re
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from .runs import BUDGET_RULE, CHECKPOINT_MEANING, REPORTED, display_name


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


def fmt_ci(ci: tuple[float, float] | None, digits: int) -> str:
    return "" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def measured_cell(dice: Stat | None, asd: Stat | None, dice_bold: bool, asd_bold: bool,
                  dice_ci: tuple[float, float] | None = None, asd_ci: tuple[float, float] | None = None,
                  dice_note: str = "", asd_note: str = "") -> list[Seg]:
    """``DSC / ASD (n=...)``, each mean±std, with its confidence interval when given; a note
    (e.g. why the column's best was not tested) follows its value."""
    if dice is None and asd is None:
        return [("—", False)]
    n = dice.n if dice else asd.n
    tail = f" (n={n})" if not (dice and asd) or asd.n == dice.n else f" (n={n}; ASD n={asd.n})"
    note = lambda text: f" ({text})" if text else ""  # noqa: E731
    return [(fmt_stat(dice, DICE_DIGITS) if dice else "—", dice_bold), (fmt_ci(dice_ci, DICE_DIGITS), False),
            (note(dice_note), False), (" / ", False), (fmt_stat(asd, ASD_DIGITS) if asd else "—", asd_bold),
            (fmt_ci(asd_ci, ASD_DIGITS), False), (note(asd_note), False), (tail, False)]


def published_cell(dice: str | None, asd: str | None) -> list[Seg]:
    """The paper's figures as printed there (strings from the reference CSV)."""
    if dice is None and asd is None:
        return [("—", False)]
    return [(f"{dice or '—'} / {asd or '—'}", False)]


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
    from ssl_bench.protocols import PROTOCOLS, protocol_by_tag

    if not protocol_tag:
        return f"Budget: {BUDGET_RULE}."
    p = protocol_by_tag(protocol_tag)
    if p is not None:
        return f"Protocol: {protocol_tag}; budget: {p.budget_rule}."
    latest = PROTOCOLS.get(protocol_tag.rpartition("-v")[0])
    if latest is None:
        return f"Protocol: {protocol_tag} (not known to this version of ssl-bench)."
    return (f"Protocol: {protocol_tag} (this ssl-bench defines version {latest.version}); "
            f"budget: {latest.budget_rule}.")


def as_run_line(runs) -> str | None:
    """What the runs of a table trained with: total gradient steps, the slices per step and the
    image size of each method, from their logged params (None where runs lack them). The protocol
    line states the paper-scale recipe; runs at a CPU preset or a ``--iterations`` budget differ."""
    from .runs import display_name, method_order

    needed = ["as_run.iterations", "as_run.labeled_bs", "as_run.unlabeled_bs", "as_run.image_size"]
    if not len(runs) or any(c not in runs or runs[c].isna().any() for c in needed):
        return None
    per_method, sizes = {}, set()
    for method, r in runs.groupby("method"):
        seen = []
        for _, row in r.iterrows():
            scale = float(row.get("as_run.budget_scale") or 1.0)
            steps = round(int(row["as_run.iterations"]) * scale)
            lab, unl = int(row["as_run.labeled_bs"]), int(row["as_run.unlabeled_bs"])
            batch = labeled_only_batch(row, lab, unl) or f"({lab} + {unl})"
            text = f"{steps} x {batch}"
            if text not in seen:
                seen.append(text)
            sizes.add(size_text(row))
        per_method[display_name(method, r["dataset"].iloc[0] if "dataset" in r else None)] = " or ".join(seen)
    shown = ", ".join(f"{m} {per_method[m]}" for m in sorted(per_method, key=method_order))
    three_d = any(" x " in z for z in sizes)
    if three_d:
        px = (f"patches of {sizes.pop()} voxels (x, y, z)" if len(sizes) == 1
              else "patches (x, y, z): " + " / ".join(sorted(sizes)))
        return f"As run (gradient steps x patches per step, {px}): {shown}."
    px = f"{sizes.pop()} px" if len(sizes) == 1 else "px: " + "/".join(sorted(sizes, key=int))
    return f"As run (gradient steps x slices per step, {px}): {shown}."


def labeled_only_batch(row, labeled_bs: int, unlabeled_bs: int) -> str | None:
    """"N labeled", the batch a step of a supervised-only method (UNet-L) drew: the whole batch
    labeled where the run set ``supervised_whole_batch``, as ``engine.fit`` samples it
    (``registry.step_images``); None for a method that also draws unlabeled slices."""
    from ssl_bench.registry import is_supervised_only, step_images

    from .runs import base_method

    method = base_method(str(row["method"]))
    if not is_supervised_only(method):
        return None
    whole = str(row.get("as_run.supervised_whole_batch", "")).lower() == "true"
    return f"{step_images(method, labeled_bs, unlabeled_bs, whole)[0]} labeled"


def size_text(row) -> str:
    """A run's training image: its side in px (2D), or its 3D patch as "x x y x z" (the run's
    ``patch_size``, else its dataset's default patch; 3D runs log ``image_size`` 0); "?" where the
    run logged neither."""
    from .runs import _dataset_class

    cls = _dataset_class(str(row.get("dataset", "")))
    if getattr(cls, "spatial_dims", 2) != 3:
        try:
            return str(int(float(row.get("as_run.image_size"))))
        except (TypeError, ValueError):  # not logged (None, NaN, "")
            return "?"
    raw = str(row.get("as_run.patch_size") or "")
    patch = [int(v) for v in re.findall(r"\d+", raw)] or list(getattr(cls, "default_patch_size", ()))
    return " x ".join(map(str, patch)) if patch else "?"


def empty_asd_line(runs) -> str:
    """Which ASD an empty prediction scored in the table's runs (``train.empty_asd``; runs that
    predate the key scored the volume diagonal)."""
    from ssl_bench.metrics import EMPTY_ASD_MEANING

    col = "as_run.empty_asd"
    used = sorted(set(runs[col].fillna("diagonal").astype(str))) if col in runs else ["diagonal"]
    used = used or ["diagonal"]
    what = " in some runs, ".join(EMPTY_ASD_MEANING.get(u, u) for u in used)
    mixed = " (mixed: ASD differs in meaning across these runs)" if len(used) > 1 else ""
    return f"ASD of a class the prediction misses entirely: {what}{mixed}."


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
             per_method: Mapping[str, str] | None = None, statistics: Sequence[str] = (),
             as_run: str | None = None) -> list[str]:
    """``statistics``: what the std covers, how bold was decided, the intervals
    (``ssl_bench.table.significance``); ``as_run``: ``as_run_line`` of the table's runs."""
    return [
        protocol_line(protocol_tag),
        *([as_run] if as_run else []),
        checkpoint_line(checkpoint, per_method),
        "Units: DSC in %, ASD in voxels; cells are mean±std over runs (sample std, none when n=1).",
        *statistics,
        *extra,
    ]
