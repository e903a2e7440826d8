"""Measured beside published, with the difference per cell (the end of ``ssl-bench reproduce``).

For Tables 1/2 one table per metric (DSC, ASD): a cell reads ``measured / published / Δ``, the
measured value as mean ± std over seeds with n, Δ = measured mean − published. For Tables 3/4
the ablation tables already place both side by side; ``ablation_deltas`` adds the Δ column.
On a phantom (``--budget smoke``) the published figures are from the real dataset: the Δ says
how far a smoke run is from the paper, not whether it reproduces it, and the note says so.
"""
from __future__ import annotations

import math

import pandas as pd

from .main import method_checkpoints
from .model import Block, Stat, Table, fmt_stat, protocol_line
from .runs import (PAPER, class_order, column_values, display_name, is_main_variant, method_order,
                   published_rows, reference_name, setting_order,
                   LATER_REFERENCE, read_reference)

LATER_METHODS = set(read_reference(LATER_REFERENCE)["method"])
METRICS = {"dice": ("DSC [%]", 100.0, 1, "dice_percent"), "asd_vox": ("ASD [voxel]", 1.0, 2, "asd_voxel")}


def delta_text(measured: Stat | None, published: str | None, digits: int) -> str:
    if measured is None and not published:
        return "—"
    m = fmt_stat(measured, digits) + f" (n={measured.n})" if measured else "—"
    if not published:
        return f"{m} / — / —"
    d = f"{measured.mean - float(published):+.{digits}f}" if measured else "—"
    return f"{m} / {published} / {d}"


def comparison_tables(runs: pd.DataFrame, checkpoint: str = "reported") -> list[Table]:
    """Per (dataset, protocol) and metric: every measured method beside the paper's figure."""
    ref_all = published_rows()  # ACTION's tables, then the later methods' own rows
    runs = runs[runs.apply(is_main_variant, axis=1)] if len(runs) else runs
    out = []
    for (dataset, ptag), d in sorted(runs.groupby(["dataset", "protocol_tag"]), key=lambda kv: kv[0]):
        name = reference_name(dataset, ref_all)
        ref = ref_all[ref_all["dataset"] == name] if name else ref_all.iloc[0:0]
        per_method = method_checkpoints(d, checkpoint)
        found = sorted({c.split("/")[-1] for c in d.columns if c.startswith("test/") and "/dice/" in c})
        classes = ["mean", *class_order(dataset, found)]
        settings = sorted(d["setting"].unique(), key=setting_order)
        for metric, (label, scale, digits, ref_col) in METRICS.items():
            t = Table(title=f"{dataset}, protocol {ptag}: measured / published / Δ, {label}",
                      row_header="Method, setting", columns=["Average" if c == "mean" else c for c in classes],
                      protocol=ptag)
            block = Block(None)
            for m in sorted(d["method"].unique(), key=lambda m: method_order(display_name(m))):
                r, ck = d[d["method"] == m], per_method[m]
                for s in settings:
                    cells = []
                    for c in classes:
                        stat = Stat.of(column_values(r[r["setting"] == s], f"test/{ck}/{metric}/{c}"), scale)
                        hit = ref[(ref["method"] == display_name(m)) & (ref["setting"] == s)
                                  & (ref["class"].str.lower() == c.lower())]
                        pub = hit[ref_col].iloc[0] if len(hit) else None
                        cells.append([(delta_text(stat, pub, digits), False)])
                        t.records.append({"dataset": dataset, "protocol": ptag, "setting": s, "method": m,
                                          "class": c, "metric": metric, "checkpoint": ck,
                                          "measured_mean": stat.mean if stat else math.nan,
                                          "measured_std": stat.std if stat else math.nan,
                                          "n": stat.n if stat else 0,
                                          "published": float(pub) if pub else math.nan,
                                          "delta": stat.mean - float(pub) if stat and pub else math.nan})
                    block.rows.append((f"{display_name(m, dataset)}, {s}", cells))
            t.blocks.append(block)
            if name is None:
                t.notes.append(f"No published figures for {dataset!r}.")
            elif name != dataset:
                t.notes.append(f"Published figures are {PAPER} on the real {name.upper()} dataset; {dataset} is a "
                               f"phantom: Δ shows the distance to the paper, not a reproduction.")
            t.footnote = [protocol_line(ptag),
                          "Cells: measured mean±std over seeds (n) / published / Δ = measured − published."]
            later = sorted({r["method"] for r in t.records if r["method"] in d["method"].values}
                           & {m for m in d["method"].unique() if display_name(m) in LATER_METHODS})
            if later:
                t.footnote.append(f"Published figures of {', '.join(display_name(m) for m in later)}: the method's own "
                                  f"paper or release ({LATER_REFERENCE} names each source), not {PAPER}.")
            out.append(t)
    return out
