"""A sweep's child processes: started so that they die with the sweep, stopped gently, then surely."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import IO, Mapping, Sequence

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _child_setup() -> None:
    """In the child, before it runs its command.

    SIGINT back to its default: ``stop`` asks a job to stop with SIGINT, and a sweep started with
    SIGINT ignored (a background job of a non-interactive shell, some CI runners) would pass the
    ignore on to its jobs, which would then run on until SIGKILL, losing the work since their
    last checkpoint.

    Linux: the child is killed when the process that started it dies. A job left running
    unwatched would go on writing its run dir, and a re-run of the sweep would start a second
    writer there. (Elsewhere a child outlives a killed sweep; Ctrl-C still stops it.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start(argv: Sequence[str], env: Mapping[str, str], log: IO | None = None,
          new_session: bool = True) -> subprocess.Popen:
    """Start ``argv``; ``new_session``: in its own session, so that a Ctrl-C in the terminal
    reaches only the sweep, which then stops its children itself (``stop``)."""
    return subprocess.Popen(list(argv), env=dict(env), stdout=log, stderr=subprocess.STDOUT if log else None,
                            start_new_session=new_session, preexec_fn=_child_setup)


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> int:
    """SIGINT first: ``ssl-bench run`` marks its run interrupted and exits, its last checkpoint
    intact for a resume. SIGKILL if it has not exited after ``grace_s``. Safe inside a signal
    handler that interrupted a ``wait`` on ``proc`` (submitit's preemption hook): it reaps with
    ``os.waitpid`` and never takes the lock that the interrupted ``Popen.wait`` holds."""
    _signal(proc, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while (code := _reap(proc)) is None:
        if time.monotonic() > deadline:
            _signal(proc, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)
    return code


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.returncode is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def _reap(proc: subprocess.Popen) -> int | None:
    """The exit code if the process has ended (reaping it), else None."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:  # reaped by Popen meanwhile
        return proc.returncode if proc.returncode is not None else -signal.SIGKILL
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode
