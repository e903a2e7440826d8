"""Rebuilding the MLflow index from the run dirs (``ssl-bench results rebuild``; ``ssl-bench
table`` runs it before it reads). The run dirs are the record (``ssl_bench.tracking``); a run dir
the store lacks, or holds only in part (``mlflow_pending``), is indexed from its files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ssl_bench.config import flatten
from ssl_bench.mlflow_store import (DEFAULT_EXPERIMENT, _get_run_or_none, default_tracking_uri,
                                    get_or_create_experiment, make_client, mlflow_key, mlflow_tags, with_retry)
from ssl_bench.tracking import MLFLOW_STATUS, PENDING_MARKER, RunTracker, _chunks, _read_json, read_log

log = logging.getLogger(__name__)


def final_metrics(metrics_json: Mapping[str, Any]) -> dict[str, float]:
    """The flat final metrics of a metrics.json object (``flat`` member or top-level numbers),
    with its ``cost`` member as ``cost_metrics``."""
    src = metrics_json.get("flat") if isinstance(metrics_json.get("flat"), Mapping) else metrics_json
    out = {}
    for k, v in src.items():
        if v is None:
            out[k] = float("nan")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    if isinstance(metrics_json.get("cost"), Mapping):
        out.update(cost_metrics(metrics_json["cost"]))
    return out


def cost_metrics(cost: Mapping[str, Any]) -> dict[str, float]:
    """A run's cost (``ssl_bench.cost``) as MLflow metrics: ``cost/<key>`` for each number,
    ``cost/stage_seconds/<stage>`` per stage; a null peak (no GPU) is left out, never a 0."""
    out = {f"cost/stage_seconds/{k}": float(v) for k, v in cost.get("stage_seconds", {}).items()}
    for k, v in cost.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"cost/{k}"] = float(v)
    return out


def find_run_dirs(results_root: str | Path) -> list[Path]:
    """Every folder under ``results_root`` holding a tags.json (artifact copies excluded)."""
    root = Path(results_root)
    return sorted(p.parent for p in root.rglob("tags.json") if "mlartifacts" not in p.relative_to(root).parts)


def indexed_run_ids(client) -> set[str]:
    """Ids of the runs the store holds in its active experiments (what tables can read)."""
    from mlflow.entities import ViewType

    exp_ids = [e.experiment_id for e in with_retry(
        lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY))]
    ids: set[str] = set()
    token = None
    while exp_ids:
        page = with_retry(lambda: client.search_runs(exp_ids, run_view_type=ViewType.ACTIVE_ONLY,
                                                     max_results=1000, page_token=token))
        ids.update(r.info.run_id for r in page)
        token = page.token
        if not token:
            break
    return ids


@dataclass
class IndexCheck:
    """Run dirs under a results root that the MLflow index lacks (or holds only in part)."""

    missing: list[Path] = field(default_factory=list)  # finished or failed: to index
    running: list[Path] = field(default_factory=list)  # still marked running: a live job owns them
    unreadable: list[Path] = field(default_factory=list)  # tags.json does not parse


def run_status(run_dir: Path, tags: Mapping[str, Any]) -> str:
    """``finished``, ``failed`` or ``running``: tags.json, except that a finished metrics.json
    wins (a job killed between writing it and its status)."""
    status = str(tags.get("status", "running"))
    if status == "running" and (run_dir / "metrics.json").exists():
        try:
            if _read_json(run_dir / "metrics.json").get("status") == "finished":
                return "finished"
        except (OSError, ValueError):
            pass
    return status


def check_index(results_root: str | Path, client) -> IndexCheck:
    """Compare the run dirs under ``results_root`` (found by their tags.json) with the index: a
    run dir whose ``mlflow_run_id`` is not an active run of the store, or that is marked
    ``mlflow_pending``, is missing from it."""
    indexed = indexed_run_ids(client)
    check = IndexCheck()
    for run_dir in find_run_dirs(results_root):
        id_path = run_dir / "mlflow_run_id"
        run_id = id_path.read_text().strip() if id_path.exists() else ""
        if run_id in indexed and not (run_dir / PENDING_MARKER).exists():
            continue
        try:
            tags = _read_json(run_dir / "tags.json")
        except (OSError, ValueError):
            check.unreadable.append(run_dir)
            continue
        (check.running if run_status(run_dir, tags) == "running" else check.missing).append(run_dir)
    return check


def rebuild_index(results_root: str | Path, tracking_uri: str | None = None,
                  include_running: bool = False) -> list[str]:
    """Index every run dir that the store lacks (``check_index``): its ``mlflow_run_id`` is
    missing from the store (e.g. the database was deleted) or it is marked ``mlflow_pending``
    (some of its logging failed; its partial MLflow run is deleted first). Tags from tags.json,
    params from config.json, curves from log.jsonl, final metrics from metrics.json, status from
    ``run_status``. Writes the new id to ``mlflow_run_id``, removes the marker and returns the
    new run ids. Runs already in the store are left alone, so it can be run any time.

    Runs still marked ``running`` are skipped unless ``include_running``: a live job owns its
    ``mlflow_run_id`` (a job killed without a status is recorded as RUNNING when included)."""
    return sync_index(results_root, tracking_uri, include_running)[1]


def sync_index(results_root: str | Path, tracking_uri: str | None = None,
               include_running: bool = False) -> tuple[IndexCheck, list[str]]:
    """``rebuild_index``, also returning what it found (``check_index``) before indexing."""
    results_root = Path(results_root)
    uri = tracking_uri or default_tracking_uri(results_root)
    client = make_client(uri)
    check = check_index(results_root, client)
    for run_dir in check.unreadable:
        log.warning("skipping %s: unreadable tags.json", run_dir)
    todo = check.missing + (check.running if include_running else [])
    return check, [index_run_dir(client, uri, run_dir) for run_dir in sorted(todo)]


def index_run_dir(client, uri: str, run_dir: Path) -> str:
    """Create the MLflow run of one run dir from its files (see ``rebuild_index``); a partial
    run it was logged to before is deleted. Returns the new run id."""
    from mlflow.entities import Metric

    id_path = run_dir / "mlflow_run_id"
    old = id_path.read_text().strip() if id_path.exists() else ""
    if old and with_retry(lambda: _get_run_or_none(client, old)) is not None:
        with_retry(lambda: client.delete_run(old))  # incomplete (mlflow_pending): replaced below
    tags = _read_json(run_dir / "tags.json")
    config = _read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    final = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    status = run_status(run_dir, tags)
    tags["status"] = status
    run_name = str(tags.get("run_name") or run_dir.name)
    exp_name = str(tags.get("experiment") or DEFAULT_EXPERIMENT)
    exp_id = get_or_create_experiment(client, exp_name, uri)
    history = read_log(run_dir / "log.jsonl")
    start_ms = int(history[0]["time"] * 1000) if history else int((run_dir / "tags.json").stat().st_mtime * 1000)
    run_id = with_retry(lambda: client.create_run(exp_id, start_time=start_ms, run_name=run_name).info.run_id)
    tracker = RunTracker(run_dir, uri, exp_name, run_name, tags, flatten(config))
    tracker._client, tracker.run_id = client, run_id
    tracker._log_tags({**mlflow_tags(tags), "mlflow.runName": run_name})
    tracker._log_params({})
    metrics = [Metric(mlflow_key(k), float("nan") if v is None else float(v), int(e["time"] * 1000),
                      int(e["step"])) for e in history for k, v in e.get("metrics", {}).items()]
    last_step = int(history[-1]["step"]) if history else 0
    end_ms = int(history[-1]["time"] * 1000) if history else start_ms
    end_ms = max(end_ms, int((run_dir / "metrics.json").stat().st_mtime * 1000)) if final else end_ms
    values = final_metrics(final)
    # runs made before the headline metrics existed get them from their test metrics
    from ssl_bench.evaluate import headline_metrics

    values = {**headline_metrics(values, str(tags.get("report_checkpoint") or "best")), **values}
    metrics += [Metric(mlflow_key(k), v, end_ms, last_step) for k, v in values.items()]
    for chunk in _chunks(metrics, 1000):
        with_retry(lambda c=chunk: client.log_batch(run_id, metrics=c))
    if status in ("finished", "failed"):
        with_retry(lambda: client.set_terminated(run_id, MLFLOW_STATUS[status], end_time=end_ms))
    from ssl_bench.datasets.base import atomic_write_text

    atomic_write_text(id_path, run_id + "\n")
    (run_dir / PENDING_MARKER).unlink(missing_ok=True)
    return run_id
