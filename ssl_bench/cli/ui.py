"""``ssl-bench ui``: the MLflow UI on the results store, started and stopped as one process group.

``mlflow ui`` starts uvicorn and, in MLflow 3.x, a job runner with huey worker processes; a
SIGTERM to ``mlflow ui`` alone leaves them running with the port still taken. ``ssl-bench ui``
therefore starts the server in a session of its own and, on Ctrl-C, SIGTERM or SIGHUP, signals
the whole process group: SIGTERM, then SIGKILL for whatever is still there after
``STOP_GRACE_S``. The job runner (GenAI evaluation jobs, unused by ssl-bench) is off unless
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` says otherwise.

Before starting, every ``ssl-bench`` experiment of the store is marked as model training
(``tracking.EXPERIMENT_KIND``). MLflow 3.17's UI also keeps a GenAI / Model training switch of
its own (remembered in the browser, GenAI by default) that decides which page an experiment
opens on; the links printed here carry ``?workflowType=machine_learning`` so that they open
the runs table.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ssl_bench.cli.common import console, fail

STOP_GRACE_S = 10.0
TRAINING_VIEW = "workflowType=machine_learning"


class _Stop(Exception):
    """A stop signal (SIGTERM, SIGHUP) arrived."""


def free_port(host: str) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` (bound as servers bind, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which hold no port and wait only
    to be reaped, do not count where /proc tells them apart)."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group of ``proc``, SIGKILL to what is left after ``grace_s``;
    returns when no process of the group runs any more (``proc`` itself reaped)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _wait_group(proc, wait_s):
            break
    proc.poll()


def _wait_group(proc: subprocess.Popen, wait_s: float) -> bool:
    """True once the group of ``proc`` is gone; False if it is still there after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        proc.poll()  # reap our own child
        if not group_alive(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def ui(
    results_root: Optional[Path] = typer.Option(None, "--results-root", help="results folder (default $SSL_BENCH_RESULTS or ./results/runs)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: SQLite under the results root)"),
    port: Optional[int] = typer.Option(None, "--port", help="port to serve on (default: a free one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to serve on (default: loopback only)"),
    workers: int = typer.Option(1, "--workers", min=1, help="server worker processes (one serves one user well)"),
):
    """Open the MLflow UI on the results store (Ctrl-C stops the whole server)."""
    from ssl_bench import tracking

    uri = tracking.default_tracking_uri(tracking.results_root(results_root), tracking_uri)
    db = tracking.sqlite_path(uri)
    if db is not None and not db.exists():
        fail(f"no MLflow store at {db}: no run has been recorded there yet "
             "(run `ssl-bench run` first, or pass --results-root / --tracking-uri)")
    if port is None:
        port = free_port(host)
    elif not port_is_free(host, port):
        fail(f"port {port} on {host} is taken; pass another --port, or none for a free one")
    experiments = _mark_experiments(uri)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    base = f"http://{host}:{port}"
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    proc, code = None, 0
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                 "--host", host, "--port", str(port), "--workers", str(workers)],
                                env=env, start_new_session=True)
        console.print(f"MLflow UI on {base}/#/experiments?{TRAINING_VIEW} (store {uri}); Ctrl-C stops it",
                      soft_wrap=True)
        for exp_id, name in experiments:
            console.print(f"  {name}: {base}/#/experiments/{exp_id}?{TRAINING_VIEW}", soft_wrap=True)
        code = proc.wait()
    except (KeyboardInterrupt, _Stop):
        console.print("stopping the MLflow UI")
    finally:
        if proc is not None:
            stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)
    raise typer.Exit(code)


def _mark_experiments(uri: str) -> list[tuple[str, str]]:
    """Mark every ssl-bench experiment as model training; returns their (id, name)."""
    from mlflow.entities import ViewType

    from ssl_bench import tracking

    client = tracking.make_client(uri)
    out = []
    for exp in client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        if exp.name.startswith(tracking.DEFAULT_EXPERIMENT):
            tracking.mark_training_experiment(client, exp)
            out.append((exp.experiment_id, exp.name))
    return sorted(out, key=lambda e: e[1])
