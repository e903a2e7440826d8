"""Which `field` v2 knob moved UNet-L and MT on real ACDC: each arm against v2, paired.

Reads exported run records (``ssl-bench results export``: tags, config, per-case CSVs) from one
folder per arm, pairs every arm run with the v2 run of the same method, seed and split seed, and
prints mean ± std over seeds and the paired difference arm − v2 of the test mean DSC with the
statistics of ``ssl-bench table`` (``ssl_bench.stats.compare``: the crossed seed x patient
t-test, patients as units; Holm over the tests printed). The checkpoint is the one the protocol
reports (the runs' ``report_checkpoint`` tag).

    python results/acdc/knob_arms.py v2=results/acdc/runs/field-v2-cpu \
        augment.mode=harness=results/acdc/runs/field-v2-arm-augment-harness \
        dice_form=linear=results/acdc/runs/field-v2-arm-dice-linear

The first argument is the baseline; each is ``label=folder`` (the label is everything before the
last ``=``). Which knob an arm changed is checked against each run's ``config.json``.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pandas as pd

from ssl_bench.stats import cell_of, compare, holm
from ssl_bench.table.cases import read_case_csv

METHODS = ("unet-l", "mt")


def runs_in(folder: Path) -> dict[tuple[str, str, str], tuple[dict, Path]]:
    """(method, seed, split seed) -> (config, run dir) of every finished run under ``folder``."""
    out = {}
    for tags_file in sorted(folder.rglob("tags.json")):
        tags, d = json.loads(tags_file.read_text()), tags_file.parent
        if tags.get("status") != "finished" or tags["method"] not in METHODS:
            continue
        key = (tags["method"], tags["seed"], tags["split_seed"])
        if key in out:
            raise SystemExit(f"{folder}: two finished runs of {key}; keep one per arm folder")
        csv = d / f"test_{tags['report_checkpoint']}_per_case.csv"
        if not csv.exists():
            raise SystemExit(f"{d}: no {csv.name}; export the run with its per-case results")
        out[key] = (json.loads((d / "config.json").read_text()), csv)
    return out


def long_frame(runs: dict, method: str) -> pd.DataFrame:
    parts = [read_case_csv(csv).assign(seed=seed, split_seed=split)
             for (m, seed, split), (_, csv) in sorted(runs.items()) if m == method]
    return pd.concat(parts, ignore_index=True)


def run_means(frame: pd.DataFrame) -> list[float]:
    """Per run: mean over classes of the class means of DSC, in % (the tables' Average)."""
    per_class = frame.groupby(["seed", "split_seed", "class"])["dice"].mean()
    return [100 * v for v in per_class.groupby(["seed", "split_seed"]).mean().tolist()]


def knob(cfg: dict) -> str:
    t = cfg["train"]
    return f"augment.mode={t['augment']['mode']}, dice_form={t['dice_form']}"


def main(args: list[str]) -> None:
    arms = [(a.rsplit("=", 1)[0], Path(a.rsplit("=", 1)[1])) for a in args]
    loaded = {label: runs_in(folder) for label, folder in arms}
    (base_label, _), base = arms[0], loaded[arms[0][0]]
    print("| arm | knobs (from config.json) | method | DSC % (mean ± std) | n | Δ arm − v2 [95 % CI] | p (Holm) | p Wilcoxon (patients) |")
    print("|---|---|---|---|---|---|---|---|")
    rows, pvals = [], []
    for label, _ in arms:
        for method in METHODS:
            runs = {k: v for k, v in loaded[label].items() if k[0] == method}
            if not runs:
                continue
            frame = long_frame(runs, method)
            means = run_means(frame)
            knobs = sorted({knob(cfg) for cfg, _ in runs.values()})
            cmp = None
            if label != base_label:
                cmp = compare(cell_of(frame, "dice"), cell_of(long_frame(base, method), "dice"))
                pvals.append(cmp.p if cmp and cmp.tested else float("nan"))
            rows.append((label, "; ".join(knobs), method, means, cmp))
    tested = [p for p in pvals if p == p]
    adjusted = iter(holm(tested))
    for label, knobs, method, means, cmp in rows:
        sd = f" ± {statistics.stdev(means):.1f}" if len(means) > 1 else ""
        cell = f"{statistics.mean(means):.1f}{sd}"
        if cmp is None:
            delta = p = pw = "(baseline)"
        else:
            delta = f"{100 * cmp.mean:+.1f} [{100 * cmp.ci[0]:+.1f}, {100 * cmp.ci[1]:+.1f}]"
            p = f"{next(adjusted):.2g}" if cmp.tested else f"not tested: {cmp.why_not}"
            pw = f"{cmp.p_wilcoxon:.2g}"
        print(f"| {label} | {knobs} | {method} | {cell} | {len(means)} | {delta} | {p} | {pw} |")
    print(f"\nHolm over the {len(tested)} test(s) above; n = runs (seeds); patients: "
          f"{', '.join(str(c.n_patients) for *_, c in rows if c is not None)} per comparison.")


if __name__ == "__main__":
    main(sys.argv[1:])
