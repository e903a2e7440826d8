"""Which process is writing a run dir: its host, pid and the time that pid started.

A run marks itself ``running`` in ``tags.json`` when it starts or resumes, and only the run itself
can mark it finished or failed. A run whose process was killed with SIGKILL, or whose machine
restarted, stays ``running`` on disk. The pid alone cannot tell such a run from a live one: after a
restart, pids are handed out again from the bottom, and another process may hold the old number.
The pid's start time (Linux: ``/proc/<pid>/stat``) tells them apart; where it cannot be read, the
pid alone is checked.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Mapping

TOLERANCE_S = 1.0  # the start time is in clock ticks since boot (1/100 s), read twice the same way


def start_time(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch; None where it cannot be read
    (no such process, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration):
        return None
    # fields after the command name, which is in parentheses and may hold spaces: state is field 3,
    # starttime field 22
    fields = stat[stat.rfind(")") + 2:].split()
    return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def identity() -> dict[str, str]:
    """This process, for ``tags.json``: ``host``, ``pid`` and ``pid_started`` ('' if unknown)."""
    started = start_time(os.getpid())
    return {"host": socket.gethostname(), "pid": str(os.getpid()),
            "pid_started": "" if started is None else f"{started:.2f}"}


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def is_alive(pid: int, started: float | None = None, tolerance_s: float = TOLERANCE_S) -> bool:
    """Whether process ``pid`` on this host exists and, where ``started`` is given and the start
    time can be read, is the process that started then (and not a later one given the same pid)."""
    if not pid_exists(pid):
        return False
    if started is None:
        return True
    now_started = start_time(pid)
    return now_started is None or abs(now_started - started) <= tolerance_s


def owner_alive(tags: Mapping[str, object]) -> bool | None:
    """Whether the process recorded in a run's tags still runs: True or False on its own host,
    None where this cannot be told (another host, e.g. a Slurm node, or a run made before
    owners were recorded)."""
    host, pid = tags.get("host"), str(tags.get("pid", ""))
    if host != socket.gethostname() or not pid.isdigit():
        return None
    started = str(tags.get("pid_started", ""))
    return is_alive(int(pid), float(started) if started else None)
