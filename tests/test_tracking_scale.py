"""Tracking at scale, with real processes: eight concurrent jobs logging to a real ``mlflow
server`` (loopback, SQLite backend in a temp dir) through ``--tracking-uri``, and eight
concurrent ``ssl-bench run`` on a fresh default SQLite store; every run is then in the index
with all its metrics."""
from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from mlflow import MlflowClient

from scale_jobs import TINY, cli, job_env, metrics, run_dirs, run_options, toy_dataset, wait_for
from ssl_bench import run_index, tracking

SEEDS = range(1, 9)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on a free loopback port; its whole process group is killed after."""
    port = _free_port()
    (tmp_path / "server").mkdir()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "server" / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=job_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), f"mlflow server at {url} (log {tmp_path / 'server.log'})", timeout_s=300,
                 poll_s=0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _assert_indexed(uri: str, root, n: int = 8) -> None:
    """``n`` finished runs in the index, each with every metric of its run dir's metrics.json."""
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}
    dirs = run_dirs(root)
    assert len(dirs) == n and not [d for d in dirs if (d / tracking.PENDING_MARKER).exists()]
    by_id = {r.info.run_id: r for r in runs}
    seeds = set()
    for d in dirs:
        run = by_id[(d / "mlflow_run_id").read_text().strip()]
        expected = run_index.final_metrics(metrics(d))
        assert {k: run.data.metrics[k] for k in expected} == pytest.approx(expected, nan_ok=True)
        assert any(k.startswith("test/best/dice/") for k in expected) and "cost/device_hours" in expected
        assert run.data.tags["ssl_bench.status"] == "finished"
        seeds.add(run.data.tags["ssl_bench.seed"])
    assert seeds == {str(s) for s in SEEDS}


@pytest.mark.slow
def test_eight_concurrent_jobs_log_to_an_mlflow_server(tmp_path, toy, mlflow_server):
    root = tmp_path / "results"
    sweep = subprocess.run(cli("sweep", "--methods", "unet-l", "--dataset", "nnunet", "--data-root", str(toy),
                               "--labeled", "2", "--seeds", ",".join(map(str, SEEDS)), "--iterations", "6",
                               *TINY, "--gpus", "none", "--jobs", "8",
                               "--tracking-uri", mlflow_server, "--results-root", str(root)),
                           env=job_env(), capture_output=True, text=True, timeout=1800)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert "8 job(s) on 8 slot(s)" in sweep.stdout
    assert not (root / "mlflow.db").exists()  # everything went to the server
    _assert_indexed(mlflow_server, root)


@pytest.mark.slow
def test_eight_concurrent_runs_on_a_fresh_default_sqlite_store(tmp_path, toy):
    root = tmp_path / "results"
    procs = [subprocess.Popen(cli("run", *run_options(toy, "unet-l", seed, iterations=6), "--no-progress",
                                  "--results-root", str(root)),
                              env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed in SEEDS]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(outputs)
    assert not [o for o in outputs if "MLflow" in o and "failed" in o], "\n".join(outputs)
    _assert_indexed(f"sqlite:///{root / 'mlflow.db'}", root)
    table = subprocess.run(cli("table", "--results-root", str(root), "--format", "csv"), env=job_env(),
                           capture_output=True, text=True, timeout=600)
    assert table.returncode == 0 and "indexed" not in table.stderr, table.stderr
    rows = [r for r in csv.DictReader(io.StringIO(table.stdout)) if r["class"] == "mean"]
    assert rows and {r["n"] for r in rows} == {"8"}, table.stdout  # 8 seeds in the cell, none lost
