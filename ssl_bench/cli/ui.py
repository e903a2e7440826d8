"""``ssl-bench ui``: the MLflow UI on the results store, started and stopped as one process group.

``mlflow ui`` starts uvicorn and, in MLflow 3.x, a job runner with huey worker processes; a
SIGTERM to ``mlflow ui`` alone leaves them running with the port still taken. ``ssl-bench ui``
therefore starts the server in a session of its own and, on Ctrl-C, SIGTERM or SIGHUP, signals
the whole process group: SIGTERM, then SIGKILL for whatever is still there after
``STOP_GRACE_S``. The job runner (GenAI evaluation jobs, unused by ssl-bench) is off unless
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` says otherwise.

Before starting, every ``ssl-bench`` experiment of the store is marked as model training
(``mlflow_store.EXPERIMENT_KIND``), its runs logged before they existed get the headline metrics and
the short filter tags, and it gets a shared view of the runs table (``HEADLINE_VIEW``: MLflow
3.17 shows no metric column by default) with DSC and ASD, mean and per class, and the filter tags
as columns. MLflow 3.17's UI also keeps a GenAI / Model training switch of its own (remembered
in the browser, GenAI by default) that decides which page an experiment opens on; the links
printed here open the runs table (``workflowType=machine_learning``) in that view
(``viewStateShareKey``).
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

from ssl_bench.cli.common import RESULTS_ROOT, TRACKING_URI, console, fail

STOP_GRACE_S = 10.0
TRAINING_VIEW = "workflowType=machine_learning"
#: the shared view of the runs table that shows the headline columns (``_save_headline_view``)
HEADLINE_VIEW = "ssl-bench"


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
    results_root: Optional[Path] = RESULTS_ROOT,
    tracking_uri: Optional[str] = TRACKING_URI,
    port: Optional[int] = typer.Option(None, "--port", help="port to serve on (default: a free one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to serve on (default: loopback only)"),
    workers: int = typer.Option(1, "--workers", min=1, help="server worker processes (one serves one user well)"),
):
    """Open the MLflow UI on the results store (Ctrl-C stops the whole server)."""
    from ssl_bench import mlflow_store

    uri = mlflow_store.default_tracking_uri(mlflow_store.results_root(results_root), tracking_uri)
    db = mlflow_store.sqlite_path(uri)
    if db is not None and not db.exists():
        fail(f"no MLflow store at {db}: no run has been recorded there yet "
             "(run `ssl-bench run` first, or pass --results-root / --tracking-uri)")
    if port is None:
        port = free_port(host)
    elif not port_is_free(host, port):
        fail(f"port {port} on {host} is taken; pass another --port, or none for a free one")
    experiments = _prepare_store(uri)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    base = f"http://{host}:{port}"
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C even where this process was started with SIGINT ignored (a background job of a script)
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    proc, code = None, 0
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                 "--host", host, "--port", str(port), "--workers", str(workers)],
                                env=env, start_new_session=True)
        console.print(f"MLflow UI on {base}/#/experiments?{TRAINING_VIEW} (store {uri}); Ctrl-C stops it",
                      soft_wrap=True)
        for exp_id, name in experiments:
            console.print(f"  {name}: {base}/#/experiments/{exp_id}/runs?viewStateShareKey={HEADLINE_VIEW}&"
                          f"{TRAINING_VIEW}", soft_wrap=True)
        code = proc.wait()
    except (KeyboardInterrupt, _Stop):
        console.print("stopping the MLflow UI")
    finally:
        if proc is not None:
            stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)
    raise typer.Exit(code)


def _prepare_store(uri: str) -> list[tuple[str, str]]:
    """Make every ssl-bench experiment open usefully; returns their (id, name)."""
    from mlflow.entities import ViewType

    from ssl_bench import mlflow_store

    client = mlflow_store.make_client(uri)
    out = []
    for exp in client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        if exp.name.startswith(mlflow_store.DEFAULT_EXPERIMENT):
            mlflow_store.mark_training_experiment(client, exp)
            metric_keys = _add_ui_fields(client, exp.experiment_id)
            _save_headline_view(client, exp.experiment_id, metric_keys)
            out.append((exp.experiment_id, exp.name))
    return sorted(out, key=lambda e: e[1])


def _add_ui_fields(client, experiment_id: str) -> set[str]:
    """Give runs indexed before they existed the headline metrics and the short filter tags;
    returns the headline metric names of the experiment."""
    from mlflow.entities import Metric, RunTag

    from ssl_bench import mlflow_store
    from ssl_bench.evaluate import headline_metrics

    keys: set[str] = set()
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            have, tags = run.data.metrics, run.data.tags
            bare = {k[len(mlflow_store.TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(mlflow_store.TAG_PREFIX)}
            metrics = headline_metrics(have, bare.get("report_checkpoint") or "best")
            new_metrics = [Metric(k, v, run.info.end_time or 0, 0) for k, v in metrics.items() if k not in have]
            new_tags = [RunTag(k, v) for k, v in mlflow_store.mlflow_tags(bare).items() if k not in tags]
            if new_metrics or new_tags:
                client.log_batch(run.info.run_id, metrics=new_metrics, tags=new_tags)
            keys.update(metrics)
        token = page.token
        if not token:
            return keys


def _save_headline_view(client, experiment_id: str, metric_keys: set[str]) -> None:
    """The runs table's shared view ``HEADLINE_VIEW``: DSC and ASD (mean, then per class) and the
    filter tags as columns (MLflow shows no metric column by default)."""
    import json

    order = sorted(metric_keys, key=lambda k: (k.split("/")[0], k.split("/")[1] != "mean", k))
    columns = [f"metrics.`{k}`" for k in order] + [f"tags.`{t}`" for t in ("method", "setting", "seed",
                                                                           "split_seed", "protocol")]
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{HEADLINE_VIEW}",
                              json.dumps({"selectedColumns": columns}))
