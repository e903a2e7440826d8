"""How often the tables' bold mark is wrong, and how often it finds a real difference: a Monte
Carlo of two methods compared exactly as ``ssl-bench table`` compares a best row with its
runner-up (``ssl_bench.stats.compare`` and ``ssl_bench.stats.bold``; one comparison, so Holm
leaves its p as it is).

Simulated scores, in Dice points, of method m (A or B), seed k, patient p, volume v
(``Setting``)::

    y = base + shift [m = A] + patient_p + inter_{m,p} + seed_{m,k} + e_{m,k,p,v}

with ``patient_p`` ~ N(0, patient_sd^2) shared by both methods (how hard the patient is),
``inter_{m,p}`` ~ N(0, inter_sd^2) (which patients suit which method; the same for every seed
and both volumes of a patient), ``seed_{m,k}`` ~ N(0, seed_sd^2) (a trained run's luck, the same
for every patient) and ``e`` ~ N(0, volume_sd^2). ``shift`` = 0 is the null: every bold mark is a
false positive. ``legacy`` is the procedure before issue 17 (two-sided Wilcoxon signed-rank test
on one difference per *volume*, averaged over seeds; bold at p < 0.05 with any number of runs),
kept here only to show its error rate.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ssl_bench import stats


@dataclass(frozen=True)
class Setting:
    n_patients: int = 20
    n_volumes: int = 2  # per patient (ACDC: ED and ES)
    n_seeds: int = 3
    seed_sd: float = 3.0
    patient_sd: float = 8.0
    inter_sd: float = 3.0
    volume_sd: float = 3.0
    base: float = 75.0


def draw(rng: np.random.Generator, s: Setting, shift: float) -> np.ndarray:
    """(2, seeds, patients, volumes) Dice in % of methods A and B."""
    shape = (2, s.n_seeds, s.n_patients, s.n_volumes)
    y = np.full(shape, s.base)
    y[0] += shift
    y += rng.normal(0, s.patient_sd, (1, 1, s.n_patients, 1))
    y += rng.normal(0, s.inter_sd, (2, 1, s.n_patients, 1))
    y += rng.normal(0, s.seed_sd, (2, s.n_seeds, 1, 1))
    y += rng.normal(0, s.volume_sd, shape)
    return y


def cell(y: np.ndarray) -> stats.Cell:
    """One method's (seeds, patients, volumes) scores as a one-class ``Cell``."""
    k, p, v = y.shape
    return stats.Cell(tuple((str(i), "0") for i in range(k)), tuple(f"p{j:03d}" for j in range(p)),
                      y.sum(axis=2)[:, :, None], np.full((k, p, 1), float(v)), np.ones((k, p), dtype=bool))


def new_bold(y: np.ndarray, min_runs: int = stats.MIN_RUNS, run_share_cap: float = stats.RUN_SHARE_CAP) -> bool:
    """The table's rule: the better mean is bold where ``compare`` says so (either direction)."""
    r = stats.compare(cell(y[0]), cell(y[1]), min_runs, run_share_cap)
    if r is None or not r.tested:
        return False
    return stats.bold(r, stats.holm([r.p])[0], r.mean > 0)


def legacy_bold(y: np.ndarray) -> bool:
    d = (y[0] - y[1]).mean(axis=0).reshape(-1)  # one difference per volume, averaged over seeds
    return stats.wilcoxon_p(d) < stats.ALPHA


#: where the variance of a paired difference sits, as (seed_sd, inter_sd); the base setting's
#: patient and volume sd are kept. ``--grid`` adds these lines to the one of the base setting.
MIXES = {"seed-dominated": (6.0, 1.0), "patient-dominated": (1.0, 4.0), "no seed spread": (0.0, 4.0),
         "both large": (5.0, 5.0)}


def rates(setting: Setting = Setting(), shift: float = 0.0, replicates: int = 2000, seed: int = 0,
          legacy: bool = True) -> dict:
    """Bold rate over ``replicates`` tables of the current procedure, of the same with the df
    capped at the runs' whenever the seed term enters (``always_cap``: the rule before
    2026-12-03) and of the legacy one."""
    rng = np.random.default_rng(seed)
    new = capped = old = 0
    for _ in range(replicates):
        y = draw(rng, setting, shift)
        new += new_bold(y)
        capped += new_bold(y, run_share_cap=0.0)
        old += legacy and legacy_bold(y)
    out = {"shift": shift, "replicates": replicates, "seed": seed, "bold_rate": new / replicates,
           "always_cap_bold_rate": capped / replicates, **asdict(setting), "min_runs": stats.MIN_RUNS,
           "alpha": stats.ALPHA, "run_share_cap": stats.RUN_SHARE_CAP}
    if legacy:
        out["legacy_bold_rate"] = old / replicates
    return out


def report(out_dir=None, seeds: tuple[int, ...] = (3,), shift: float = 4.0, replicates: int = 2000,
           base: Setting = Setting(), seed: int = 0, progress=None, grid: bool = False) -> dict:
    """False-positive rate (shift 0) and power (``shift``) of the bold rule, of the always-capped
    one and of the legacy one, for each number of seeds (and each of ``MIXES`` with ``grid``);
    written to ``out_dir``/stats.json and stats.md when given."""
    import json
    from dataclasses import replace
    from pathlib import Path

    mixes = [("as set", base)] + ([(name, replace(base, seed_sd=a, inter_sd=b)) for name, (a, b) in MIXES.items()]
                                  if grid else [])
    rows = []
    for name, mix in mixes:
        for k in seeds:
            s = replace(mix, n_seeds=int(k))
            null, alt = rates(s, 0.0, replicates, seed), rates(s, shift, replicates, seed + 1)
            row = {"mix": name, "seed_sd": s.seed_sd, "inter_sd": s.inter_sd, "n_seeds": int(k),
                   "false_positive_rate": null["bold_rate"], "power": alt["bold_rate"],
                   "always_cap_false_positive_rate": null["always_cap_bold_rate"],
                   "always_cap_power": alt["always_cap_bold_rate"],
                   "legacy_false_positive_rate": null["legacy_bold_rate"], "legacy_power": alt["legacy_bold_rate"]}
            rows.append(row)
            if progress is not None:
                progress(row)
    rep = {"setting": asdict(base), "shift_dice": shift, "replicates": replicates, "rng_seed": seed,
           "alpha": stats.ALPHA, "min_runs": stats.MIN_RUNS, "run_share_cap": stats.RUN_SHARE_CAP, "rows": rows}
    if out_dir is not None:
        from ssl_bench.datasets.base import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "stats.json", json.dumps(rep, indent=2) + "\n")
        atomic_write_text(out / "stats.md", markdown(rep))
    return rep


def markdown(rep: dict) -> str:
    s = rep["setting"]
    lines = [
        "# Bold-mark error rate and power (`ssl-bench bench stats`)", "",
        f"Two methods compared as `ssl-bench table` compares a best row with its runner-up, {rep['replicates']} "
        f"simulated tables per rate (RNG seed {rep['rng_seed']}); {s['n_patients']} patients x {s['n_volumes']} "
        f"volumes; sd in Dice points: patient (shared) {s['patient_sd']}, volume {s['volume_sd']}, seed (method x "
        f"run) and method x patient as each line says; alpha {rep['alpha']}; a comparison needs >= "
        f"{rep['min_runs']} paired runs. False positives: identical methods; power: a true shift of "
        f"{rep['shift_dice']} Dice. The rule: Satterthwaite's df, capped at the runs' K - 1 where the seed term is "
        f">= {rep['run_share_cap']} of the variance. 'Always capped': the cap wherever the seed term enters (the "
        "rule before 2026-12-03). Legacy: Wilcoxon on per-volume differences averaged over seeds (before issue 17).",
        "", "| variance mix (seed sd, method x patient sd) | seeds | false-positive rate | power | always capped: "
        "false-positive rate | always capped: power | legacy false-positive rate | legacy power |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['mix']} ({r['seed_sd']:g}, {r['inter_sd']:g}) | {r['n_seeds']} | "
                     f"{r['false_positive_rate']:.3f} | {r['power']:.3f} | {r['always_cap_false_positive_rate']:.3f} | "
                     f"{r['always_cap_power']:.3f} | {r['legacy_false_positive_rate']:.3f} | {r['legacy_power']:.3f} |")
    return "\n".join(lines) + "\n"
