"""A run's record without its weights: what a result folder in the repository holds.

A run dir (``ssl_bench.tracking``) holds its record, small text files (``config.json``,
``split.json``, ``environment.json``, ``tags.json``, ``log.jsonl``, ``metrics.json``,
``test_<ckpt>_per_case.csv``), and its weights (``checkpoints/``). The record is all the tables,
the statistics and the ``curves``/``seeds`` figures read. ``export_runs`` copies the record of
every finished run under a results root into another folder, in the same layout, so a committed
result can be re-tabled from a clean clone:

    ssl-bench results export runs/acdc results/acdc/runs
    ssl-bench results rebuild --results-root results/acdc/runs   # a local MLflow index (ignored by git)
    ssl-bench table --results-root results/acdc/runs --dataset acdc --ci

Left out: ``checkpoints/`` and other folders, ``mlflow_run_id`` (the id in the source's store;
``rebuild`` writes a new one), files larger than ``MAX_FILE_BYTES`` and files of other kinds
(both named in the report). Runs not marked finished are left out and named. A file already in
the destination with other content is an error: an export never overwrites a record silently.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

#: the file kinds of a record
RECORD_SUFFIXES = (".json", ".jsonl", ".csv")
#: index files of one MLflow store, not part of the record
INDEX_FILES = ("mlflow_run_id", "mlflow_pending")
#: a record file above this size is left out and named (a record is a few hundred kB at most)
MAX_FILE_BYTES = 2 * 1024 * 1024


class ExportError(RuntimeError):
    """The export would overwrite a different record; nothing of that run was written."""


@dataclass
class ExportReport:
    copied: list[Path] = field(default_factory=list)      # run dirs written (destination)
    unchanged: list[Path] = field(default_factory=list)   # already there, byte-identical
    unfinished: list[Path] = field(default_factory=list)  # source run dirs not marked finished
    left_out: list[str] = field(default_factory=list)     # "path (why)" of files not copied
    bytes: int = 0


def record_files(run_dir: Path) -> tuple[list[Path], list[str]]:
    """The record files of one run dir (top level only), and "name (why)" for what is left out."""
    keep, left = [], []
    for p in sorted(run_dir.iterdir()):
        if p.is_dir():
            continue  # checkpoints/ and the like: weights, not the record
        if p.name in INDEX_FILES:
            continue
        if p.suffix not in RECORD_SUFFIXES:
            left.append(f"{p} (not a record file: {', '.join(RECORD_SUFFIXES)})")
        elif p.stat().st_size > MAX_FILE_BYTES:
            left.append(f"{p} ({p.stat().st_size / 2**20:.1f} MiB > {MAX_FILE_BYTES / 2**20:.0f} MiB)")
        else:
            keep.append(p)
    return keep, left


def _finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "tags.json").read_text(encoding="utf-8")).get("status") == "finished"
    except (OSError, ValueError):
        return False


def export_runs(source: Path, dest: Path) -> ExportReport:
    """Copy the record of every finished run dir under ``source`` to the same relative path
    under ``dest``. A run whose files are all already there (byte-identical) is counted as
    unchanged; one whose destination holds a differing file raises ``ExportError`` before
    anything of it is written."""
    from ssl_bench.run_index import find_run_dirs

    source, dest = Path(source), Path(dest)
    report = ExportReport()
    for run_dir in find_run_dirs(source):
        if not _finished(run_dir):
            report.unfinished.append(run_dir)
            continue
        files, left = record_files(run_dir)
        report.left_out += left
        target = dest / run_dir.relative_to(source)
        clash = [f.name for f in files if (target / f.name).exists()
                 and (target / f.name).read_bytes() != f.read_bytes()]
        if clash:
            raise ExportError(f"{target} already holds a different {', '.join(clash)}: a different run, or "
                              f"this one re-run; export into an empty folder or remove {target} first")
        if all((target / f.name).exists() for f in files):
            report.unchanged.append(target)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            tmp = target / (f.name + ".tmp")
            shutil.copyfile(f, tmp)
            tmp.replace(target / f.name)  # a killed export leaves no half-written record file
            report.bytes += f.stat().st_size
        report.copied.append(target)
    return report
