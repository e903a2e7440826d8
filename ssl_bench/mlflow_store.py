"""The MLflow store: where it is, opening it safely, and the names MLflow accepts.

MLflow (a SQLite store under the results root by default) is the index over the run dirs that
the tables and the UI read (``ssl_bench.tracking`` writes the run dirs and mirrors them here;
``ssl_bench.run_index`` rebuilds the index from them).

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
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

RESULTS_ENV = "SSL_BENCH_RESULTS"
TAG_PREFIX = "ssl_bench."
DEFAULT_EXPERIMENT = "ssl-bench"
#: MLflow's experiment-kind tag (the value its own UI sets for "Machine learning"): marks an
#: experiment as model training, so the UI opens it on the runs table, not the GenAI overview
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: tags logged a second time without the ``ssl_bench.`` prefix, for short UI filters such as
#: ``tags.method = 'mt' and tags.protocol = 'paper-v1'``
FILTER_TAGS = ("method", "dataset", "setting", "seed", "split_seed")

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
