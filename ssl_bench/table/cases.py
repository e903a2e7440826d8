"""Per-case test results of the runs in a table, read from their run dirs.

Every run writes ``test_{best,last}_per_case.csv`` (``ssl_bench.evaluate.write_eval``: one row
per test case and foreground class, empty cell = undefined), so runs made before the statistics
existed get them too. A run's dir is its tag ``run_dir``; a run dir that is no longer there (a
results folder copied off a cluster) is looked up under the results root by its
``mlflow_run_id`` file. Runs whose CSV cannot be found are listed in ``CaseData.missing`` and
every table that needed them says so.

Each row carries its case's patient (the CSV's ``patient_id`` column where a run wrote one, else
``ssl_bench.datasets.base.patient_of``), the unit of the statistics (``ssl_bench.stats``). The
tables' "Average" column is built from the class rows (``cell(..., "mean")``), as the class
means are averaged by ``ssl_bench.metrics.aggregate``. A row without a value whose rule is not
``both_empty`` could not be scored: it is listed in ``CaseData.unscored``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

#: the per-case columns the statistics use
VALUES = ("dice", "asd_vox")
KEYS = ["run_id", "seed", "split_seed", "case_id", "patient", "class"]
BOTH_EMPTY = "both_empty"


@dataclass
class CaseData:
    """Per-case values of many runs (columns ``KEYS`` + ``VALUES``) and the runs without any."""

    frame: pd.DataFrame
    missing: list[str] = field(default_factory=list)  # run ids without a per-case CSV
    unscored: list[tuple[str, str, str]] = field(default_factory=list)  # (run id, case, class) without a value

    def cell(self, run_ids: Iterable[str], cls: str) -> pd.DataFrame:
        """The rows of these runs for one class; ``mean`` (the Average column): every class."""
        ids = set(run_ids)
        f = self.frame
        rows = f["run_id"].isin(ids)
        return f[rows] if cls == "mean" else f[rows & (f["class"] == cls)]

    def lacking(self, run_ids: Iterable[str]) -> list[str]:
        return sorted(set(run_ids) & set(self.missing))


def moved_run_dirs(results_root: Path | None) -> dict[str, Path]:
    """run id -> run dir of every run dir under ``results_root`` (by its ``mlflow_run_id``)."""
    from ssl_bench.run_index import find_run_dirs

    out = {}
    if results_root is None or not Path(results_root).is_dir():
        return out
    for d in find_run_dirs(results_root):
        f = d / "mlflow_run_id"
        if f.exists():
            out[f.read_text().strip()] = d
    return out


def run_dir_of(run: Mapping, moved: Mapping[str, Path]) -> Path | None:
    tagged = str(run.get("run_dir") or "")
    if tagged and Path(tagged).is_dir():
        return Path(tagged)
    return moved.get(str(run["run_id"]))


def read_case_csv(path: Path) -> pd.DataFrame:
    """One per-case CSV: case, patient, class, rule and the ``VALUES``."""
    from ssl_bench.datasets.base import patient_of

    df = pd.read_csv(path, dtype={"case_id": str, "class": str, "patient_id": str})
    patient = df["patient_id"] if "patient_id" in df else df["case_id"].map(patient_of)
    rule = df["rule"] if "rule" in df else pd.Series([""] * len(df), index=df.index)
    return df[["case_id", "class", *VALUES]].assign(patient=patient.astype(str), rule=rule.fillna("").astype(str))


def run_dirs(runs: pd.DataFrame, results_root: Path | None = None) -> dict[str, Path | None]:
    """run id -> its run dir (tag ``run_dir``, else found under ``results_root``), None if lost."""
    out: dict[str, Path | None] = {}
    moved: dict[str, Path] | None = None
    for _, run in runs.iterrows():
        found = run_dir_of(run, {})
        if found is None:
            moved = moved_run_dirs(results_root) if moved is None else moved  # one scan, when needed
            found = run_dir_of(run, moved)
        out[str(run["run_id"])] = found
    return out


def load_cases(runs: pd.DataFrame, checkpoints: Mapping[str, str],
               results_root: Path | None = None) -> CaseData:
    """Per-case results of ``runs`` at each method's checkpoint (``checkpoints[method]``)."""
    dirs = run_dirs(runs, results_root)
    parts, missing = [], []
    for _, run in runs.iterrows():
        run_dir = dirs[str(run["run_id"])]
        path = run_dir / f"test_{checkpoints[run['method']]}_per_case.csv" if run_dir else None
        if path is None or not path.exists():
            missing.append(str(run["run_id"]))
            continue
        parts.append(read_case_csv(path).assign(run_id=str(run["run_id"]), seed=str(run["seed"]),
                                                split_seed=str(run["split_seed"])))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*KEYS, "rule", *VALUES])
    lost = frame[frame["dice"].isna() & (frame["rule"] != BOTH_EMPTY)]
    unscored = sorted(set(zip(lost["run_id"], lost["case_id"], lost["class"])))
    return CaseData(frame[[*KEYS, *VALUES]], missing, unscored)
