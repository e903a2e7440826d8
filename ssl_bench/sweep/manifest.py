"""A sweep's manifest: ``<results root>/sweeps/<id>/manifest.json``.

It lists every job of the sweep (name, command line, run dir, iterations, estimate) and what the
launcher knows of it: the local slot, pid, host, start and end times and exit code, or the
Slurm job id and log paths. ``ssl-bench sweep status`` reads it, with the run dirs, from any
machine that sees the results root. The id is a hash of the job names and of their run dirs
(which hold the protocol version and the config hash), so re-running a sweep reuses its folder
(and its logs), while the same command under another protocol version or another resolved
config gets its own; the manifest is rewritten atomically on every change.
"""
from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

from ssl_bench.datasets.base import atomic_write_text

SWEEPS_DIR = "sweeps"


def sweep_id_of(results_root: Path, planned) -> str:
    """The sweep's id: a hash of each job's name and run dir (relative to the results root)."""
    root = Path(results_root)

    def where(run_dir: Path) -> str:
        run_dir = Path(run_dir)
        return (run_dir.relative_to(root) if run_dir.is_relative_to(root) else run_dir).as_posix()

    lines = sorted(f"{p.job.name}\t{where(p.run_dir)}" for p in planned)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:10]


class Manifest:
    def __init__(self, path: Path, data: dict):
        self.path = Path(path)
        self.data = data

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def jobs(self) -> list[dict]:
        return self.data["jobs"]

    @classmethod
    def create(cls, results_root: Path, executor: str, planned, device: str, runtime=()) -> "Manifest":
        """A manifest for ``planned`` (``plan.PlannedJob``s, in launch order), whose jobs run
        with the ``runtime`` options (roots, tracking URI)."""
        sweep_id = sweep_id_of(results_root, planned)
        folder = Path(results_root) / SWEEPS_DIR / sweep_id
        jobs = [{"name": p.job.name, "argv": p.job.argv(runtime), "run_dir": str(p.run_dir), "iterations": p.iterations,
                 "estimate_s": p.remaining_s, "estimate_source": p.estimate.source if p.estimate else None,
                 "log": str(folder / "logs" / f"{p.job.file_stem}.log") if executor == "local" else None}
                for p in planned]
        manifest = cls(folder / "manifest.json", {"id": sweep_id, "executor": executor, "device": device,
                                                   "created": time.time(), "host": socket.gethostname(),
                                                   "results_root": str(results_root), "jobs": jobs})
        manifest.write()
        return manifest

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        return cls(Path(path), json.loads(Path(path).read_text()))

    @classmethod
    def find(cls, results_root: Path, sweep_id: str | None = None) -> "Manifest":
        """The sweep ``sweep_id`` of a results root, else its most recently changed one."""
        base = Path(results_root) / SWEEPS_DIR
        if sweep_id:
            path = base / sweep_id / "manifest.json"
            if not path.exists():
                known = sorted(p.parent.name for p in base.glob("*/manifest.json"))
                raise FileNotFoundError(f"no sweep {sweep_id!r} under {base}; known: {', '.join(known) or 'none'}")
            return cls.load(path)
        found = sorted(base.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no sweep under {base}: start one with `ssl-bench sweep`, "
                                    "or pass the --results-root it used")
        return cls.load(found[-1])

    def job(self, name: str) -> dict:
        return next(j for j in self.jobs if j["name"] == name)

    def update(self, name: str, **fields) -> None:
        self.job(name).update(fields)
        self.write()

    def write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")
