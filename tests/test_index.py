"""The MLflow index never silently misses what is on disk: one locked store initialisation,
``mlflow_pending`` markers, ``ssl-bench table`` reconciling run dirs with the index,
``ssl-bench results rebuild``."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from ssl_bench import mlflow_store, run_index, tracking
from ssl_bench.cli import app

runner = CliRunner()
TAGS = {"method": "mt", "dataset": "tiny-test", "setting": "2 labeled", "split_seed": 0, "git_commit": "abc"}

# imports first, then waits for the go file so that every process opens the fresh store at once
OPEN_STORE = """
import sys, time, pathlib
from ssl_bench import mlflow_store, run_index, tracking
from mlflow import MlflowClient
go = pathlib.Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
client = mlflow_store.make_client(sys.argv[1])
client.create_experiment("exp-" + sys.argv[3])
"""


@pytest.mark.slow
def test_concurrent_processes_create_a_fresh_store_once(tmp_path):
    """Eight processes open one fresh SQLite store at the same moment. Without the lock they
    race through MLflow's migrations (`table ... already exists`) and most fail."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri, str(go), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(8)]
    time.sleep(2.0)
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(outputs)
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {f"exp-{i}" for i in range(8)} <= names
    assert (tmp_path / "fresh" / "mlflow.db.lock").exists()


@pytest.fixture(autouse=True)
def _store_under_results_root(monkeypatch, tmp_path, mlflow_template_db):
    """These tests use the default store, the SQLite file under the results root (a copy of the
    migrated template: migrating a fresh store costs 10-20 s)."""
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "results").mkdir()
    shutil.copyfile(mlflow_template_db, tmp_path / "results" / "mlflow.db")


def _finished_run(root: Path, uri: str, name: str, dice: float, seed: int) -> tracking.RunTracker:
    """A run dir as the engine leaves it: tags, config, curves, metrics.json, status."""
    t = tracking.RunTracker(root / name, uri, "ssl-bench/tiny-test", f"{name} seed{seed}",
                            {**TAGS, "seed": seed}, {"train": {"iterations": 4}})
    t.start()
    (t.run_dir / "config.json").write_text(json.dumps({"train": {"iterations": 4}}))
    t.log_metrics({"train/loss": 0.5}, 2)
    metrics = {"test/best/dice/mean": dice, "test/best/asd_vox/mean": 1.0}
    tracking._write_json(t.run_dir / "metrics.json", {"status": "finished", "flat": metrics})
    t.log_final(metrics)
    t.set_status("finished")
    return t


def _table(root: Path, uri: str, *extra: str):
    return runner.invoke(app, ["table", "--dataset", "tiny-test", "--format", "csv", "--results-root", str(root),
                               "--tracking-uri", uri, *extra])


def test_failed_logging_marks_the_run_and_rebuild_reindexes_it(tmp_path):
    root = tmp_path / "results"
    uri = mlflow_store.default_tracking_uri(root)
    ok = _finished_run(root, uri, "ok", 0.8, 0)
    flaky = tracking.RunTracker(root / "flaky", uri, "ssl-bench/tiny-test", "flaky seed1", {**TAGS, "seed": 1},
                                {"train": {"iterations": 4}}, retry_attempts=1, retry_delay_s=0.0).start()
    real_log_batch = flaky._client.log_batch

    def broken(*args, **kwargs):
        raise RuntimeError("disk I/O error")

    flaky._client.log_batch = broken  # the final metrics never reach MLflow
    metrics = {"test/best/dice/mean": 0.6, "test/best/asd_vox/mean": 2.0}
    tracking._write_json(flaky.run_dir / "metrics.json", {"status": "finished", "flat": metrics})
    with pytest.warns(RuntimeWarning, match="mlflow_pending"):
        flaky.log_final(metrics)
    flaky._client.log_batch = real_log_batch
    flaky.set_status("finished")
    marker = json.loads((flaky.run_dir / tracking.PENDING_MARKER).read_text())
    assert marker["failed_to"] == "log final metrics" and "disk I/O error" in marker["error"]
    assert not (ok.run_dir / tracking.PENDING_MARKER).exists()

    client = MlflowClient(uri)
    check = run_index.check_index(root, client)
    assert check.missing == [flaky.run_dir] and check.running == []
    (new_id,) = run_index.rebuild_index(root, uri)
    assert new_id != flaky.run_id
    assert client.get_run(flaky.run_id).info.lifecycle_stage == "deleted"  # the partial run
    run = client.get_run(new_id)
    assert run.data.metrics["test/best/dice/mean"] == 0.6 and run.info.status == "FINISHED"
    # metrics.json predates the headline metrics: the index adds them (DSC in %, ASD in voxels)
    assert run.data.metrics["DSC/mean"] == pytest.approx(60.0) and run.data.metrics["ASD/mean"] == 2.0
    assert (flaky.run_dir / "mlflow_run_id").read_text().strip() == new_id
    assert not (flaky.run_dir / tracking.PENDING_MARKER).exists()
    assert run_index.rebuild_index(root, uri) == []


def test_table_indexes_run_dirs_the_store_lacks_or_says_how_many_it_left_out(tmp_path):
    root = tmp_path / "results"
    uri = mlflow_store.default_tracking_uri(root)
    runs = [_finished_run(root, uri, f"r{i}", 0.5 + 0.1 * i, i) for i in range(3)]
    MlflowClient(uri).delete_run(runs[1].run_id)  # the index lost one run
    (runs[2].run_dir / tracking.PENDING_MARKER).write_text("{}")  # and holds another only in part
    live = tracking.RunTracker(root / "live", uri, "ssl-bench/tiny-test", "live", {**TAGS, "seed": 9}, {})
    live.start()
    MlflowClient(uri).delete_run(live.run_id)

    res = _table(root, uri, "--no-reindex")
    assert res.exit_code == 0, res.output
    assert "left out 2 run dir(s)" in res.stderr and "2 finished or failed" in res.stderr
    assert "ssl-bench results rebuild" in res.stderr
    assert _mean_n(res.stdout) == "2"  # r0 and the partial r2

    res = _table(root, uri)
    assert res.exit_code == 0, res.output
    # no run dir is left out of the index (the per-case warning of the statistics may still speak)
    assert "indexed 2 run dir(s)" in res.stderr and not re.search(r"left out \d+ run dir", res.stderr)
    assert _mean_n(res.stdout) == "3"  # n = 3 seeds, none left out
    assert "indexed" not in _table(root, uri).stderr  # nothing left to index

    res = _table(root, uri, "--status", "all")
    assert "left out 1 run dir(s)" in res.stderr and "1 still running" in res.stderr


def _mean_n(csv_text: str) -> str:
    import csv
    import io

    (row,) = [r for r in csv.DictReader(io.StringIO(csv_text)) if r["class"] == "mean"]
    return row["n"]


@pytest.mark.slow
def test_results_rebuild_command(tmp_path):
    root = tmp_path / "results"
    uri = mlflow_store.default_tracking_uri(root)
    for i in range(2):
        _finished_run(root, uri, f"r{i}", 0.7, i)
    mlflow_store.sqlite_path(uri).write_bytes(b"not a database")  # e.g. damaged by racing migrations
    # a fresh process, as from the shell (this one keeps MLflow's open store)
    cli = [sys.executable, "-m", "ssl_bench.cli", "results", "rebuild", "--results-root", str(root)]
    res = subprocess.run([*cli, "--fresh"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "indexed 2 run dir(s)" in res.stdout
    assert len(list(root.glob("mlflow.db.moved-*"))) == 1
    res = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "indexed 0 run dir(s)" in res.stdout, res.stdout + res.stderr
    query = ("import sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]); "
             "print(len(c.search_runs([e.experiment_id for e in c.search_experiments()])))")
    out = subprocess.run([sys.executable, "-c", query, uri], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "2", out.stderr

    res = runner.invoke(app, ["results", "rebuild", "--results-root", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no run dirs under" in res.output
    res = runner.invoke(app, ["results", "rebuild", "--results-root", str(root), "--fresh",
                              "--tracking-uri", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "is not one" in res.output


def test_store_lock_is_taken_once_per_process(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    opened = []
    import filelock

    real = filelock.FileLock

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(filelock, "FileLock", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow_store.make_client(uri).search_experiments()
        mlflow_store.make_client(uri).search_experiments()
    assert opened == [f"{tmp_path / 'results' / 'mlflow.db'}.lock"]
    mlflow_store.ensure_store("http://127.0.0.1:9")  # a server migrates its own database: no lock
    assert len(opened) == 1
