"""Run tracking: a run directory that is the source of truth, mirrored into MLflow.

Every run writes plain files into its run directory; MLflow (a SQLite store under the results
root by default) is an index over them that the tables and the UI read. If MLflow fails
(locked database, bad URI), training goes on: the failure is warned once and the files stay
complete, so ``rebuild_index`` can recreate the MLflow runs later.

Run-directory files (all JSON is UTF-8; non-finite floats are written as ``null``):

``config.json``
    The resolved run configuration (nested or flat JSON object; written by the engine). It is
    flattened with dotted keys into MLflow params.
``split.json``
    The patient split (``ssl_bench.datasets.base.Split``; written by the engine).
``tags.json``
    One flat JSON object of the run's tags, keys *without* the ``ssl_bench.`` prefix, values
    strings: ``method``, ``dataset``, ``setting``, ``seed``, ``split_seed``, ``ablation``,
    ``augment`` (ACTION only), ``git_commit``, ``run_dir``, ``status``
    (``running``/``finished``/``failed``), ``status_message`` (failed runs), ``experiment``,
    ``run_name``, and ``host``/``pid``/``pid_started``: the process that last started or resumed
    the run (``ssl_bench.owner``; a run left ``running`` by a killed process is told by them). ``RunTracker.start`` writes it (merging what is there) and
    ``set_status`` updates ``status``.
``log.jsonl``
    Training curves, appended by ``RunTracker.log_metrics``: one JSON object per line,
    ``{"step": 120, "time": 1700000000.123, "metrics": {"train/loss": 0.53}}`` (``time`` in
    Unix seconds). A resumed run appends again, so a step can appear twice: the last line wins.
    A crash can leave a partial last line; readers skip lines that do not parse.
``metrics.json``
    Final results. A JSON object whose member ``flat`` maps MLflow metric names
    (``test/<ckpt>/<metric>/<class>``) to numbers; the engine adds more members (per-class
    summaries, status, ``cost``: see ``ssl_bench.cost``). Without ``flat``, the object's numeric
    top-level members are the metrics.
    ``RunTracker.log_final`` writes ``{"flat": ...}`` only when the caller has not written it.
``mlflow_run_id``
    The MLflow run id as a single line of text: a resumed job continues the same MLflow run.
``mlflow_pending``
    Present when some MLflow call of the run failed after its retries (JSON: what failed, the
    error, when): the index may lack part of the run. ``rebuild_index`` (``ssl-bench results
    rebuild``, and ``ssl-bench table`` before it reads) re-indexes such a run from its files and
    removes the marker.
``checkpoints/``, ``test_<ckpt>_per_case.csv``
    Written by the engine; logged as MLflow artifacts when passed to ``log_final``.

Where the store is and how it is opened: ``ssl_bench.mlflow_store``; rebuilding the index from
the run dirs: ``ssl_bench.run_index``; package versions and the source commit:
``ssl_bench.provenance``.
"""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ssl_bench import owner
from ssl_bench.config import flatten
from ssl_bench.mlflow_store import (DEFAULT_EXPERIMENT, TAG_PREFIX, _get_run_or_none, _max_param_length,
                                    get_or_create_experiment, make_client, mlflow_key, mlflow_tags, param_value,
                                    with_retry)
from ssl_bench.provenance import git_commit

T = TypeVar("T")

#: MLflow run status for each value of the ``ssl_bench.status`` tag
MLFLOW_STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED"}
#: file in a run dir whose MLflow logging failed: the index lacks (part of) this run
PENDING_MARKER = "mlflow_pending"

log = logging.getLogger(__name__)


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, obj: Any) -> None:
    from ssl_bench.datasets.base import atomic_write_text

    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True, default=str) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- the tracker -----------------------------------------------------------------------------------
class RunTracker:
    """Logs one run to its run directory and to MLflow (through ``MlflowClient``; no global state).

    ``tags`` are bare names (``method``, ``seed``...; prefixed ``ssl_bench.`` in MLflow);
    ``params`` is the resolved config, flattened with dotted keys. ``start()`` must come first.
    MLflow errors are retried when transient (locked SQLite), then warned once and ignored.
    """

    def __init__(self, run_dir: str | Path, tracking_uri: str, experiment_name: str = DEFAULT_EXPERIMENT,
                 run_name: str | None = None, tags: Mapping[str, Any] | None = None,
                 params: Mapping[str, Any] | None = None, *, retry_attempts: int = 5,
                 retry_delay_s: float = 0.25):
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name or self.run_dir.name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.params = flatten(dict(params or {}))
        self.retry_attempts = retry_attempts
        self.retry_delay_s = retry_delay_s
        self.run_id: str | None = None
        self.mlflow_errors = 0  # calls that failed after retries
        self._client = None
        self._warned = False
        self._last_step = 0

    # paths
    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    @property
    def run_id_path(self) -> Path:
        return self.run_dir / "mlflow_run_id"

    @property
    def pending_path(self) -> Path:
        return self.run_dir / PENDING_MARKER

    @property
    def mlflow_ok(self) -> bool:
        """True while the run is mirrored in MLflow (start succeeded)."""
        return self.run_id is not None

    # lifecycle
    def start(self) -> "RunTracker":
        """Write tags.json; create the experiment and start, or resume, the MLflow run."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tags.setdefault("ablation", "none")
        self.tags.setdefault("run_dir", str(self.run_dir.resolve()))
        self.tags.setdefault("git_commit", git_commit())
        self.tags["status"] = "running"
        self.tags.pop("status_message", None)
        self.tags.update(owner.identity())  # who writes the run dir now (sweep status checks it)
        self.tags["experiment"] = self.experiment_name
        self.tags["run_name"] = self.run_name
        self._write_tags()
        self._last_step = _last_logged_step(self.log_path)
        self._mlflow("start the MLflow run", self._start_mlflow)
        return self

    def _start_mlflow(self) -> None:
        self._client = make_client(self.tracking_uri)
        client = self._client
        exp_id = get_or_create_experiment(client, self.experiment_name, self.tracking_uri,
                                          self.retry_attempts, self.retry_delay_s)
        old_id = self.run_id_path.read_text().strip() if self.run_id_path.exists() else ""
        existing_params: dict[str, str] = {}
        run_id = None
        if old_id:
            run = self._retry(lambda: _get_run_or_none(client, old_id))
            if run is not None:
                run_id = old_id
                existing_params = dict(run.data.params)
                self._retry(lambda: client.update_run(run_id, status="RUNNING"))
            else:
                log.warning("MLflow run %s of %s is not in %s; starting a new MLflow run",
                            old_id, self.run_dir, self.tracking_uri)
        if run_id is None:
            run_id = self._retry(lambda: client.create_run(exp_id, run_name=self.run_name).info.run_id)
            from ssl_bench.datasets.base import atomic_write_text

            atomic_write_text(self.run_id_path, run_id + "\n")
        self.run_id = run_id
        self._log_tags({**mlflow_tags(self.tags), "mlflow.runName": self.run_name})
        self._log_params(existing_params)

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for chunk in _chunks(items, 100):
            self._retry(lambda c=chunk: self._client.log_batch(self.run_id, tags=c))

    def _log_params(self, existing: Mapping[str, str]) -> None:
        """Log params not yet in the run; a resumed run keeps its original values (MLflow params
        are immutable), and a changed value is warned about."""
        from mlflow.entities import Param

        limit = _max_param_length()
        values = {mlflow_key(k): param_value(v, limit) for k, v in self.params.items()}
        changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
        if changed:
            warnings.warn(f"{self.run_dir}: config differs from the MLflow run's params for "
                          f"{', '.join(changed[:10])}; MLflow keeps the original values", RuntimeWarning)
        items = [Param(k, v) for k, v in values.items() if k not in existing]
        for chunk in _chunks(items, 100):
            self._retry(lambda c=chunk: self._client.log_batch(self.run_id, params=c))

    # logging
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Append ``{"step", "time", "metrics"}`` to log.jsonl, then log to MLflow (batched)."""
        now = time.time()
        values = _as_floats(metrics)
        line = json.dumps(_json_safe({"step": int(step), "time": round(now, 3), "metrics": values}))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._last_step = int(step)
        if self.run_id is not None and values:
            self._mlflow("log metrics", lambda: self._log_metric_batch(values, int(step), now))

    def _log_metric_batch(self, values: Mapping[str, float], step: int, now: float) -> None:
        from mlflow.entities import Metric

        ms = int(now * 1000)
        items = [Metric(mlflow_key(k), v, ms, step) for k, v in values.items()]
        for chunk in _chunks(items, 1000):
            self._retry(lambda c=chunk: self._client.log_batch(self.run_id, metrics=c))

    def log_final(self, metrics: Mapping[str, Any], artifacts: Iterable[str | Path] = (),
                  step: int | None = None) -> None:
        """Final (test) metrics and artifact files/folders. Writes ``metrics.json`` as
        ``{"flat": metrics}`` unless the caller already wrote it; missing artifacts are skipped."""
        values = _as_floats(metrics)
        metrics_path = self.run_dir / "metrics.json"
        if not metrics_path.exists():
            _write_json(metrics_path, {"flat": values})
        step = self._last_step if step is None else int(step)
        if self.run_id is None:
            return
        if values:
            self._mlflow("log final metrics", lambda: self._log_metric_batch(values, step, time.time()))
        for path in map(Path, artifacts):
            if not path.exists():
                log.warning("artifact %s does not exist; not logged", path)
                continue
            if path.is_dir():
                self._mlflow(f"log artifacts {path}",
                             lambda p=path: self._retry(
                                 lambda: self._client.log_artifacts(self.run_id, str(p), p.name)))
            else:
                self._mlflow(f"log artifact {path}",
                             lambda p=path: self._retry(
                                 lambda: self._client.log_artifact(self.run_id, str(p))))

    def set_status(self, status: str, message: str | None = None) -> None:
        """``finished`` or ``failed`` (with a message): tags.json, tag ``ssl_bench.status`` and the
        MLflow run status (FINISHED / FAILED)."""
        if status not in ("finished", "failed"):
            raise ValueError(f"status must be 'finished' or 'failed', got {status!r}")
        self.tags["status"] = status
        if message:
            self.tags["status_message"] = message[:8000]
        else:
            self.tags.pop("status_message", None)
        self._write_tags()
        if self.run_id is None:
            return
        tags = {TAG_PREFIX + "status": status}
        if message:
            tags[TAG_PREFIX + "status_message"] = message[:8000]
        self._mlflow("set the run status", lambda: self._log_tags(tags))
        self._mlflow("end the MLflow run", lambda: self._retry(
            lambda: self._client.set_terminated(self.run_id, MLFLOW_STATUS[status])))

    def __enter__(self) -> "RunTracker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tags.get("status") == "running":
            if exc is None:
                self.set_status("finished")
            else:
                self.set_status("failed", f"{exc_type.__name__}: {exc}")

    # helpers
    def _write_tags(self) -> None:
        path = self.run_dir / "tags.json"
        current: dict[str, Any] = {}
        if path.exists():
            try:
                current = _read_json(path)
            except (OSError, ValueError):
                current = {}
        current.update(self.tags)
        if "status_message" not in self.tags:
            current.pop("status_message", None)
        _write_json(path, current)

    def _retry(self, fn: Callable[[], T]) -> T:
        return with_retry(fn, self.retry_attempts, self.retry_delay_s)

    def _mlflow(self, what: str, fn: Callable[[], Any]) -> None:
        """Run an MLflow call (its own steps retry transient errors); on failure mark the run dir
        ``mlflow_pending`` (the index now lacks part of this run), warn once per tracker and
        carry on."""
        try:
            fn()
        except Exception as exc:
            self.mlflow_errors += 1
            if self._warned:
                return
            self._warned = True
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            if not self.pending_path.exists():  # the first failure tells most
                _write_json(self.pending_path, {"failed_to": what, "error": error, "time": time.time(),
                                                "tracking_uri": self.tracking_uri})
            warnings.warn(
                f"MLflow ({self.tracking_uri}) failed to {what}: {error}. Training goes on; "
                f"{self.run_dir} holds the full record and is marked {PENDING_MARKER}: "
                f"`ssl-bench results rebuild` (or the next `ssl-bench table`) indexes it again. "
                f"Further MLflow errors of this run are not shown.", RuntimeWarning, stacklevel=3)


def _as_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers (and 0-d tensors) as floats; anything else is left out with a warning."""
    out = {}
    for k, v in metrics.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            log.warning("metric %s=%r is not a number; not logged", k, v)
    return out


def read_log(path: str | Path) -> list[dict]:
    """The lines of a log.jsonl that parse (a crash may leave a partial last line)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _last_logged_step(path: Path) -> int:
    entries = read_log(path)
    return int(entries[-1].get("step", 0)) if entries else 0
