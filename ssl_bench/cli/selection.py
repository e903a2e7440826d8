"""The runs a figure or a report shows: the store indexed first, then filtered like ``ssl-bench
table`` (one dataset and one protocol at a time)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ssl_bench.cli.common import fail


def selected_runs(results_root: Path | None, tracking_uri: str | None, dataset: str | None,
                  methods: Sequence[str] | None, setting: str | None, protocol: str | None
                  ) -> tuple[Path, str, pd.DataFrame]:
    """(results root, tracking URI, finished runs of one dataset and protocol)."""
    from ssl_bench import table as tbl
    from ssl_bench import mlflow_store, run_index
    from ssl_bench.cli.table import _describe, _reconcile_index

    root = mlflow_store.results_root(results_root)
    uri = mlflow_store.default_tracking_uri(root, tracking_uri)
    db = mlflow_store.sqlite_path(uri)
    if db is not None and not db.exists() and not run_index.find_run_dirs(root):
        fail(f"no MLflow store at {db} and no run dirs under {root}: run `ssl-bench run` first, "
             "or pass --results-root / --tracking-uri", code=1)
    _reconcile_index(root, uri, True, "finished")
    what = _describe("finished", dataset, methods, setting, protocol)
    runs = tbl.select_runs(tbl.load_runs(uri), dataset, methods, setting, protocol)
    if runs.empty:
        fail(f"no {what} in {uri}", code=1)
    for column, option in (("dataset", "--dataset"), ("protocol_tag", "--protocol")):
        found = sorted(runs[column].unique())
        if len(found) > 1:
            fail(f"the {what} hold {len(found)} {column.split('_')[0]}s ({', '.join(found)}); "
                 f"pick one with {option}", code=2)
    return root, uri, runs
