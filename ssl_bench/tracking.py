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

The SQLite store is created and migrated by one process at a time, under a file lock
(``<db>.lock``; ``ensure_store``): MLflow's schema creation is not safe when several processes
open a fresh database at once (they race through the migrations and leave it half-migrated).

Defaults: the results root is ``--results-root``, else ``$SSL_BENCH_RESULTS``, else
``<cwd>/results/runs``; the tracking URI is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///<results root>/mlflow.db`` with artifacts under ``<results root>/mlartifacts``.
MLflow's usage telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY=true`` unless set): the
harness runs offline.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import warnings
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ssl_bench import owner
from ssl_bench.config import flatten

T = TypeVar("T")

RESULTS_ENV = "SSL_BENCH_RESULTS"
TAG_PREFIX = "ssl_bench."
#: MLflow run status for each value of the ``ssl_bench.status`` tag
MLFLOW_STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED"}
DEFAULT_EXPERIMENT = "ssl-bench"
#: MLflow's experiment-kind tag (the value its own UI sets for "Machine learning"): marks an
#: experiment as model training, so the UI opens it on the runs table, not the GenAI overview
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: tags logged a second time without the ``ssl_bench.`` prefix, for short UI filters such as
#: ``tags.method = 'mt' and tags.protocol = 'paper-v1'``
FILTER_TAGS = ("method", "dataset", "setting", "seed", "split_seed")
#: file in a run dir whose MLflow logging failed: the index lacks (part of) this run
PENDING_MARKER = "mlflow_pending"

log = logging.getLogger(__name__)


# -- roots and URIs ------------------------------------------------------------------------------
def results_root(cli_value: str | Path | None = None) -> Path:
    """``--results-root``, else ``$SSL_BENCH_RESULTS``, else ``<cwd>/results/runs`` (absolute)."""
    value = cli_value or os.environ.get(RESULTS_ENV) or Path.cwd() / "results" / "runs"
    return Path(value).expanduser().resolve()


def default_tracking_uri(results_root: str | Path, cli_value: str | None = None) -> str:
    """``cli_value``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in the results root."""
    if cli_value:
        return cli_value
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results_root).expanduser().resolve() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):])
    return None


# -- MLflow access ---------------------------------------------------------------------------------
def quiet_mlflow() -> None:
    """Silence MLflow's informational logging (SQLite schema creation, alembic migrations) and
    its network telemetry. Warnings and errors still show."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils",
                 "mlflow.store.sql_alchemy", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


#: SQLite stores this process has opened (created and migrated) under the lock
_READY_STORES: set[str] = set()
STORE_LOCK_TIMEOUT_S = 600.0


def ensure_store(tracking_uri: str) -> None:
    """Create and migrate a SQLite store once, under a file lock beside the database.

    Opening a store makes MLflow create a missing schema and run its migrations; two processes
    doing so at once corrupt a fresh database (``table ... already exists``, a half-applied
    migration). Under the lock the first process migrates and the others find a current schema.
    MLflow keeps the opened store for the process, so the lock is taken once per process.
    Other URIs (an ``mlflow server``) migrate their own database when the server starts.
    """
    db = sqlite_path(tracking_uri)
    if db is None or tracking_uri in _READY_STORES:
        return
    quiet_mlflow()
    db.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock
    from mlflow import MlflowClient

    with FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S):
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    _READY_STORES.add(tracking_uri)


def make_client(tracking_uri: str):
    """An ``MlflowClient`` bound to ``tracking_uri`` (a SQLite store is created and migrated
    first, under its lock: ``ensure_store``)."""
    ensure_store(tracking_uri)
    quiet_mlflow()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def is_transient(exc: BaseException) -> bool:
    """A locked SQLite database or a dropped connection: worth retrying."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = f"{type(e).__name__}: {e}".lower()
        if "locked" in text or "operationalerror" in text or "timed out" in text or "busy" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def with_retry(fn: Callable[[], T], attempts: int = 5, delay_s: float = 0.25) -> T:
    """Call ``fn``; retry transient errors with exponential backoff (delay, 2*delay, ...)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(delay_s * 2 ** attempt)
    raise AssertionError("unreachable")


def get_or_create_experiment(client, name: str, tracking_uri: str, attempts: int = 5,
                             delay_s: float = 0.25) -> str:
    """The id of experiment ``name``, created if needed (artifacts next to a SQLite store).

    Two jobs may create it at once: the loser gets RESOURCE_ALREADY_EXISTS and reads it back.
    """
    def lookup_or_create() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            mark_training_experiment(client, exp)
            return exp.experiment_id
        db = sqlite_path(tracking_uri)
        location = None
        if db is not None:
            location = (db.parent / "mlartifacts" / _safe_name(name)).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
        except Exception as exc:
            if "already exists" in str(exc).lower() or "RESOURCE_ALREADY_EXISTS" in str(exc):
                return client.get_experiment_by_name(name).experiment_id
            raise

    return with_retry(lookup_or_create, attempts, delay_s)


def mark_training_experiment(client, experiment) -> bool:
    """Set ``EXPERIMENT_KIND`` on an experiment that lacks it (stores made before it existed);
    True if it was set now."""
    key, value = EXPERIMENT_KIND
    if experiment.tags.get(key):
        return False  # a kind the user chose in the UI stays
    client.set_experiment_tag(experiment.experiment_id, key, value)
    return True


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"


_KEY_OK = re.compile(r"[^A-Za-z0-9_\-. :/]")


def mlflow_key(key: str) -> str:
    """A valid MLflow key: disallowed characters become ``_``, at most 250 characters."""
    return _KEY_OK.sub("_", str(key))[:250]


def _max_param_length() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        return int(MAX_PARAM_VAL_LENGTH)
    except Exception:  # older MLflow: the historical limit
        return 500


def param_value(value: Any, limit: int) -> str:
    """A param value as MLflow stores it: a string, cut to ``limit`` with a visible marker."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > limit:
        marker = "...[truncated]"
        text = text[: limit - len(marker)] + marker
    return text


def mlflow_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Prefix bare tag names with ``ssl_bench.`` (``mlflow.*`` tags are kept as they are), plus
    the short ``FILTER_TAGS`` and ``protocol`` (name-vN) for filtering in the UI."""
    out = {}
    for k, v in tags.items():
        key = k if k.startswith(TAG_PREFIX) or k.startswith("mlflow.") else TAG_PREFIX + k
        out[mlflow_key(key)] = str(v)[:8000]
    out.update({k: str(tags[k]) for k in FILTER_TAGS if k in tags})
    if "protocol" in tags:
        out["protocol"] = f"{tags['protocol']}-v{tags.get('protocol_version', '1')}"
    return out


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


def _get_run_or_none(client, run_id: str):
    """The run, or None if the store does not have it (or it was deleted)."""
    try:
        run = client.get_run(run_id)
        return None if run.info.lifecycle_stage == "deleted" else run
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower() or (
                getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


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


# -- rebuilding the index ----------------------------------------------------------------------------
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


# -- provenance --------------------------------------------------------------------------------------
_PACKAGES = {"torch": "torch", "numpy": "numpy", "smp": "segmentation-models-pytorch", "timm": "timm",
             "mlflow": "mlflow", "medpy": "medpy", "scipy": "scipy", "pandas": "pandas",
             "ssl-bench": "ssl-bench"}


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on ("not installed" if absent)."""
    out = {}
    for key, dist in _PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def git_commit(source_dir: str | Path | None = None) -> str:
    """The commit of the ssl-bench source checkout, ``-dirty`` if it has uncommitted changes
    (untracked, non-ignored files count), ``unknown`` if the source is not a git checkout."""
    src = Path(source_dir) if source_dir else Path(__file__).resolve().parent.parent
    try:
        top = _git(src, "rev-parse", "--show-toplevel")
        # an installed copy inside some unrelated repository is not a checkout of ssl-bench
        if Path(top).resolve() != src.resolve():
            return "unknown"
        commit = _git(src, "rev-parse", "HEAD")
        dirty = _git(src, "status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> str:
    res = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise subprocess.SubprocessError(res.stderr.strip())
    return res.stdout.strip()
