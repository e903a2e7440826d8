"""Job states of a sweep, read from its manifest and the jobs' run dirs (any executor, any host).

A job is
``finished``  its run dir holds a finished ``metrics.json``;
``failed``    its process exited non-zero, or its run says failed: the last line of its log tells why;
``stopped``   interrupted (Ctrl-C, SIGTERM) or gone without an exit code: a re-run of the sweep resumes it;
``running``   a live process on this host, or (another host, Slurm) its run says running; with its
              progress from ``log.jsonl`` and how long ago it last logged. A run that says running
              but whose process (``host``/``pid``/``pid_started`` of its tags) is gone from this
              host, killed or lost in a restart, is ``stopped``;
``queued``    nothing has started it yet.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ssl_bench import owner

STYLE = {"finished": "green", "failed": "bold red", "stopped": "magenta", "running": "yellow", "queued": "dim"}


@dataclass
class JobStatus:
    name: str
    state: str
    progress: str
    detail: str


def tail(path: Path, max_bytes: int = 16384) -> list[str]:
    """The complete last lines of a file (at most ``max_bytes`` read), [] if it is missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return lines[1:] if size > max_bytes else lines  # the first may be cut


def last_line(path: str | Path | None) -> str:
    """The last non-empty line of a log (what a failed job said last)."""
    lines = [line.strip() for line in tail(Path(path))] if path else []
    return next((line for line in reversed(lines) if line), "")


def last_step(run_dir: Path) -> int:
    """The last step logged in a run's ``log.jsonl`` (0 if none)."""
    for line in reversed(tail(run_dir / "log.jsonl")):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a crash may leave a partial last line
    return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def finished_metrics(run_dir: Path) -> dict | None:
    """The run's ``metrics.json`` if it says the run finished, else None."""
    metrics = _read_json(run_dir / "metrics.json")
    return metrics if metrics.get("status") == "finished" else None


def _ago(path: Path, now: float) -> str:
    try:
        return f"logged {now - path.stat().st_mtime:.0f} s ago"
    except OSError:
        return "not logged yet"


def job_status(entry: dict, now: float | None = None) -> JobStatus:
    """The state of one manifest entry (see the module docstring)."""
    now = time.time() if now is None else now
    run_dir = Path(entry["run_dir"])
    iterations = int(entry.get("iterations") or 0)
    log = entry.get("log") or entry.get("stderr")
    metrics = finished_metrics(run_dir)
    if metrics is not None:
        hours = metrics.get("cost", {}).get("device_hours")
        return JobStatus(entry["name"], "finished", f"{iterations}/{iterations}",
                         f"{hours:.3f} device-h" if isinstance(hours, (int, float)) else "")
    step = last_step(run_dir)
    progress = f"{step}/{iterations}" + (f" ({100 * step / iterations:.0f}%)" if iterations and step else "")
    tags = _read_json(run_dir / "tags.json")
    message = str(tags.get("status_message", ""))
    code = entry.get("exit_code")
    if code is not None:
        if entry.get("interrupted") or message.startswith("KeyboardInterrupt"):
            return JobStatus(entry["name"], "stopped", progress, "interrupted; re-run the sweep to resume")
        why = last_line(log) or message or "no log"
        return JobStatus(entry["name"], "failed", progress, f"exit {code}: {why}")
    pid = entry.get("pid")
    if pid is not None and entry.get("host") == socket.gethostname():
        # the launcher records its start just after the fork: a pid reused after a restart differs
        started = entry.get("started")
        if owner.is_alive(int(pid), float(started) if started else None, tolerance_s=30.0):
            return JobStatus(entry["name"], "running", progress, f"{entry.get('slot', '')}, {_ago(run_dir / 'log.jsonl', now)}")
        return JobStatus(entry["name"], "stopped", progress, "its process is gone; re-run the sweep to resume")
    status = tags.get("status")
    where = entry.get("slurm_job_id") or entry.get("host") or ""
    if status == "running" and owner.owner_alive(tags) is False:
        return JobStatus(entry["name"], "stopped", progress,
                         f"its process (pid {tags.get('pid')}) is gone; the sweep resumes it (re-run it if it has stopped)")
    if status == "running":
        return JobStatus(entry["name"], "running", progress, f"{where} {_ago(run_dir / 'log.jsonl', now)}".strip())
    if status == "failed":
        state = "stopped" if message.startswith("KeyboardInterrupt") else "failed"
        return JobStatus(entry["name"], state, progress, last_line(log) or message)
    return JobStatus(entry["name"], "queued", progress if step else "", str(where))


def job_statuses(manifest) -> list[JobStatus]:
    now = time.time()
    return [job_status(entry, now) for entry in manifest.jobs]


def render(statuses: list[JobStatus], title: str):
    """A rich table of job states, with a count of each state as its caption."""
    from rich.markup import escape
    from rich.table import Table

    counts = {s: sum(j.state == s for j in statuses) for s in STYLE}
    caption = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    table = Table(title=escape(title), caption=caption, caption_justify="left")
    table.add_column("job", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("detail", overflow="fold", min_width=20)
    for j in statuses:
        table.add_row(escape(j.name), f"[{STYLE[j.state]}]{j.state}[/]", j.progress, escape(j.detail))
    return table
