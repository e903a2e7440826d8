"""Run tracking: run-dir files, MLflow mirror, resume, failure tolerance, index rebuild."""
from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_bench import mlflow_store, provenance, run_index, tracking
from ssl_bench.tracking import RunTracker

TAGS = {"method": "mt", "dataset": "acdc-phantom", "setting": "3 labeled", "seed": 0, "split_seed": 0,
        "git_commit": "abc123"}


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


@pytest.fixture
def store(mlflow_template_db):
    """Puts a copy of the migrated empty store (conftest) in a folder; returns its URI."""
    def copy_to(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "mlflow.db").exists():
            shutil.copyfile(mlflow_template_db, folder / "mlflow.db")
        return sqlite_uri(folder)

    return copy_to


def make_tracker(tmp_path: Path, name: str = "run", uri: str | None = None, **kw) -> RunTracker:
    uri = uri or sqlite_uri(tmp_path / "results")
    params = kw.pop("params", {"train": {"iterations": 100, "lr": 0.01}, "method": "mt"})
    return RunTracker(tmp_path / "results" / name, uri, "ssl-bench/test", f"{name} seed0", dict(TAGS), params, **kw)


def test_roots_and_default_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_store.results_root() == (tmp_path / "results").resolve()  # $SSL_BENCH_RESULTS (conftest)
    assert mlflow_store.results_root(tmp_path / "cli") == (tmp_path / "cli").resolve()
    monkeypatch.delenv("SSL_BENCH_RESULTS")
    monkeypatch.chdir(tmp_path)
    assert mlflow_store.results_root() == (tmp_path / "results" / "runs").resolve()
    assert mlflow_store.default_tracking_uri(tmp_path / "r") == f"sqlite:///{(tmp_path / 'r').resolve()}/mlflow.db"
    assert mlflow_store.default_tracking_uri(tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert mlflow_store.default_tracking_uri(tmp_path) == "sqlite:///env.db"
    assert mlflow_store.default_tracking_uri(tmp_path, "sqlite:///cli.db") == "sqlite:///cli.db"


def test_tracker_writes_run_dir_and_mlflow(tmp_path, store):
    store(tmp_path / "results")
    long_value = "x" * 10_000
    t = make_tracker(tmp_path, params={"train": {"iterations": 100}, "notes": long_value, "bad key!": 1})
    t.start()
    t.log_metrics({"train/loss": 0.5, "train/unsup": 0.25}, step=10)
    t.log_metrics({"train/loss": 0.4, "val/dice/mean": float("nan")}, step=20)
    (t.run_dir / "test_best_per_case.csv").write_text("case,dice\na,0.5\n")
    t.log_final({"test/best/dice/mean": 0.8, "test/best/n/mean": 3},
                [t.run_dir / "test_best_per_case.csv", t.run_dir / "missing.csv"])
    t.set_status("finished")

    lines = [json.loads(x) for x in (t.run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [10, 20]
    assert lines[0]["metrics"] == {"train/loss": 0.5, "train/unsup": 0.25}
    assert lines[1]["metrics"] == {"train/loss": 0.4, "val/dice/mean": None}  # strict JSON, no NaN token
    assert all(isinstance(e["time"], float) for e in lines)
    assert json.loads((t.run_dir / "metrics.json").read_text()) == {
        "flat": {"test/best/dice/mean": 0.8, "test/best/n/mean": 3.0}}
    tags = json.loads((t.run_dir / "tags.json").read_text())
    assert tags["status"] == "finished" and tags["method"] == "mt" and tags["seed"] == "0"
    assert tags["experiment"] == "ssl-bench/test" and tags["ablation"] == "none"
    assert (t.run_dir / "mlflow_run_id").read_text().strip() == t.run_id

    client = MlflowClient(t.tracking_uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ssl_bench.status"] == "finished"
    assert run.data.tags["ssl_bench.method"] == "mt"
    assert run.data.tags["mlflow.runName"] == "run seed0"
    assert run.data.params["train.iterations"] == "100"
    assert run.data.params["bad key_"] == "1"
    notes = run.data.params["notes"]
    assert notes.endswith("...[truncated]") and len(notes) <= mlflow_store._max_param_length() < 10_000
    assert run.data.metrics["test/best/dice/mean"] == 0.8
    assert [m.value for m in client.get_metric_history(t.run_id, "train/loss")] == [0.5, 0.4]
    assert [m.step for m in client.get_metric_history(t.run_id, "train/loss")] == [10, 20]
    artifacts = [a.path for a in client.list_artifacts(t.run_id)]
    assert artifacts == ["test_best_per_case.csv"]
    # artifacts live next to the SQLite store, not in the working directory
    assert (tmp_path / "results" / "mlartifacts").is_dir()


def test_log_final_keeps_callers_metrics_json(tmp_path, store):
    store(tmp_path / "results")
    t = make_tracker(tmp_path).start()
    (t.run_dir / "metrics.json").write_text(json.dumps({"status": "finished", "flat": {"a": 1.0}}))
    t.log_final({"a": 1.0})
    assert json.loads((t.run_dir / "metrics.json").read_text())["status"] == "finished"


def test_resume_continues_the_same_mlflow_run(tmp_path, store):
    store(tmp_path / "results")
    first = make_tracker(tmp_path).start()
    first.log_metrics({"train/loss": 1.0}, step=1)  # then the job dies without set_status
    with pytest.warns(RuntimeWarning, match="train.iterations"):
        second = make_tracker(tmp_path, params={"train": {"iterations": 999, "lr": 0.01}, "method": "mt"}).start()
    assert second.run_id == first.run_id
    second.log_metrics({"train/loss": 0.5}, step=2)
    second.set_status("failed", "RuntimeError: out of memory")

    client = MlflowClient(second.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["ssl_bench.status"] == "failed"
    assert run.data.tags["ssl_bench.status_message"] == "RuntimeError: out of memory"
    assert run.data.params["train.iterations"] == "100"  # MLflow params are immutable
    assert [m.step for m in client.get_metric_history(first.run_id, "train/loss")] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert [e["step"] for e in tracking.read_log(second.run_dir / "log.jsonl")] == [1, 2]
    assert json.loads((second.run_dir / "tags.json").read_text())["status_message"].startswith("RuntimeError")


def test_resume_of_a_run_missing_from_the_store_starts_a_new_run(tmp_path, store):
    store(tmp_path / "results")
    first = make_tracker(tmp_path).start()
    old = first.run_id
    MlflowClient(first.tracking_uri).delete_run(old)
    second = make_tracker(tmp_path).start()
    assert second.run_id != old
    assert (second.run_dir / "mlflow_run_id").read_text().strip() == second.run_id


def test_bad_uri_never_crashes_training(tmp_path):
    t = make_tracker(tmp_path, uri="bogus-scheme://nowhere", retry_delay_s=0.0)
    with pytest.warns(RuntimeWarning, match="bogus-scheme"):
        t.start()
    assert not t.mlflow_ok
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once at start, silent afterwards
        t.log_metrics({"train/loss": 0.3}, step=5)
        t.log_final({"test/best/dice/mean": 0.7})
        t.set_status("finished")
    assert tracking.read_log(t.run_dir / "log.jsonl")[0]["metrics"] == {"train/loss": 0.3}
    assert json.loads((t.run_dir / "tags.json").read_text())["status"] == "finished"


def test_locked_database_is_retried_then_warned_once(tmp_path, store):
    store(tmp_path / "results")
    t = make_tracker(tmp_path, retry_attempts=3, retry_delay_s=0.0).start()
    calls = []

    def locked(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    t._client.log_batch = locked
    with pytest.warns(RuntimeWarning, match="database is locked"):
        t.log_metrics({"train/loss": 0.3}, step=1)
    assert len(calls) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.log_metrics({"train/loss": 0.2}, step=2)
    assert t.mlflow_errors == 2
    assert [e["step"] for e in tracking.read_log(t.run_dir / "log.jsonl")] == [1, 2]


def test_with_retry_retries_only_transient_errors():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("database is locked")
        return "ok"

    assert mlflow_store.with_retry(flaky, attempts=5, delay_s=0.0) == "ok" and len(attempts) == 3

    def broken():
        attempts.append(1)
        raise ValueError("bad value")

    attempts.clear()
    with pytest.raises(ValueError):
        mlflow_store.with_retry(broken, attempts=5, delay_s=0.0)
    assert len(attempts) == 1


def test_two_trackers_in_one_process_use_their_own_stores(tmp_path, store):
    store(tmp_path / "a" / "results")
    store(tmp_path / "b" / "results")
    a = make_tracker(tmp_path / "a").start()
    b = make_tracker(tmp_path / "b").start()
    a.log_metrics({"x": 1.0}, 1)
    b.log_metrics({"x": 2.0}, 1)
    assert MlflowClient(a.tracking_uri).get_run(a.run_id).data.metrics == {"x": 1.0}
    assert MlflowClient(b.tracking_uri).get_run(b.run_id).data.metrics == {"x": 2.0}
    assert a.tracking_uri != b.tracking_uri


def test_rebuild_index_recreates_runs_from_run_dirs(tmp_path, store):
    root = tmp_path / "results"
    store(root)
    done = make_tracker(tmp_path, "done").start()
    (done.run_dir / "config.json").write_text(json.dumps({"train": {"iterations": 100}, "method": "mt"}))
    done.log_metrics({"train/loss": 0.9}, 1)
    done.log_metrics({"train/loss": 0.4}, 2)
    done.log_final({"test/best/dice/mean": 0.8, "test/best/asd_vox/mean": 1.5})
    done.set_status("finished")
    failed = make_tracker(tmp_path, "failed").start()
    failed.set_status("failed", "diverged")
    live = make_tracker(tmp_path, "live").start()  # a job still running owns its run id
    # the store is lost: rebuild into a fresh one (same as deleting mlflow.db between processes)
    uri = store(tmp_path / "fresh")
    created = run_index.rebuild_index(root, uri)
    assert len(created) == 2 and done.run_id not in created
    client = MlflowClient(uri)
    by_name = {r.data.tags["mlflow.runName"]: r for r in client.search_runs(
        [client.get_experiment_by_name("ssl-bench/test").experiment_id])}
    run = by_name["done seed0"]
    assert run.info.status == "FINISHED" and by_name["failed seed0"].info.status == "FAILED"
    assert run.data.tags["ssl_bench.method"] == "mt" and run.data.tags["ssl_bench.setting"] == "3 labeled"
    assert run.data.params["train.iterations"] == "100"
    assert run.data.metrics["test/best/dice/mean"] == 0.8
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0.9, 0.4]
    assert (done.run_dir / "mlflow_run_id").read_text().strip() == run.info.run_id
    assert run_index.rebuild_index(root, uri) == []  # idempotent
    assert (live.run_dir / "mlflow_run_id").read_text().strip() == live.run_id
    (revived,) = run_index.rebuild_index(root, uri, include_running=True)
    assert client.get_run(revived).info.status == "RUNNING"


def test_final_metrics_reads_engine_and_flat_formats():
    assert run_index.final_metrics({"status": "finished", "flat": {"a": 1, "b": None}, "test": {}})["a"] == 1.0
    assert run_index.final_metrics({"a": 2.0, "status": "finished", "ok": True}) == {"a": 2.0}


def test_package_versions_and_git_commit(tmp_path):
    versions = provenance.package_versions()
    assert set(versions) == {"torch", "numpy", "smp", "timm", "mlflow", "medpy", "scipy", "pandas",
                             "ssl-bench", "python"}
    assert versions["python"].count(".") == 2
    assert provenance.git_commit(tmp_path) == "unknown"

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.git_commit(repo) == head
    (repo / "a.py").write_text("x = 2\n")
    assert provenance.git_commit(repo) == head + "-dirty"
    sub = repo / "pkg"
    sub.mkdir()
    assert provenance.git_commit(sub) == "unknown"  # inside a repository, but not its top level


def test_context_manager_marks_failed_on_exception(tmp_path, store):
    store(tmp_path / "results")
    with pytest.raises(KeyError):
        with make_tracker(tmp_path) as t:
            raise KeyError("boom")
    run = MlflowClient(t.tracking_uri).get_run(t.run_id)
    assert run.info.status == "FAILED" and run.data.tags["ssl_bench.status_message"] == "KeyError: 'boom'"


def test_short_filter_tags_and_training_experiment_kind(tmp_path, store):
    tags = mlflow_store.mlflow_tags({**TAGS, "protocol": "paper", "protocol_version": "2", "run_dir": "/x"})
    assert tags["ssl_bench.method"] == "mt" and tags["method"] == "mt" and tags["setting"] == "3 labeled"
    assert tags["protocol"] == "paper-v2" and tags["ssl_bench.protocol"] == "paper" and "run_dir" not in tags
    uri = store(tmp_path / "r")
    client = MlflowClient(uri)
    key, value = mlflow_store.EXPERIMENT_KIND
    new = mlflow_store.get_or_create_experiment(client, "ssl-bench/new", uri)
    assert client.get_experiment(new).tags[key] == value
    old = client.create_experiment("ssl-bench/old")  # a store made before the tag existed
    assert key not in client.get_experiment(old).tags
    mlflow_store.get_or_create_experiment(client, "ssl-bench/old", uri)
    assert client.get_experiment(old).tags[key] == value
    client.set_experiment_tag(old, key, "genai_development")  # the user's own choice stays
    assert not mlflow_store.mark_training_experiment(client, client.get_experiment(old))
    assert client.get_experiment(old).tags[key] == "genai_development"
