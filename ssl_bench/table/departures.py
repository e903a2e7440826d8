"""Where a table's runs depart from the protocol its title names.

A run's ``--set`` items take precedence over its protocol's recipe (``ssl_bench.runconfig.resolve``),
so runs tagged ``field-v2`` may have trained with, say, the harness's augmentation. The table
names such departures in a footnote instead of leaving the protocol line to speak for them: each
run's recorded ``config.json`` is compared with what its protocol sets for it (the same
resolution without the run's ``--set`` items), key by key. Keys that only size a run to a machine
(the budget, image size, batch, validation cadence, threads, precision, eval batch) are left
out, as is a method's variant (the row's name shows it): the as-run line states the ones that matter. A key the recorded config lacks (a run older than the key) is
not compared.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ssl_bench.config import flatten

#: keys that size a run to its machine, not change its recipe (the as-run line shows the budget)
SIZING = frozenset({"iterations", "image_size", "labeled_bs", "unlabeled_bs", "patch_size", "val_every",
                    "checkpoint_every", "log_every", "amp", "amp_dtype", "device", "threads", "deterministic",
                    "eval_batch_size", "eval_workers", "lean", "sampling", "channels_last", "compile"})
#: method keys the table already shows in the row's name (``ACTION (paper)``)
SHOWN = frozenset({"variant"})


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def config_departures(config: Mapping[str, Any]) -> dict[str, Any]:
    """``key -> recorded value`` for every recipe key where a run's ``config.json`` differs from
    what its protocol (name and version as recorded) sets for that method and dataset."""
    from ssl_bench.config import to_dict
    from ssl_bench.protocols import get_protocol
    from ssl_bench.registry import get_dataset_class, get_method_class
    from ssl_bench.runconfig import RunSpec, resolve

    protocol = get_protocol(f"{config['protocol']}-v{config['protocol_version']}"
                            if config.get("protocol_version") else config["protocol"])
    method_cls = get_method_class(config["method"])
    spec = RunSpec(method=config["method"], dataset=config["dataset"], labeled=config.get("labeled"),
                   ratio=config.get("ratio"), split=config.get("split", "default"),
                   split_seed=int(config.get("split_seed", 0)), seed=int(config.get("seed", 0)),
                   protocol=f"{protocol.name}-v{protocol.version}")
    defaults = getattr(get_dataset_class(config["dataset"]), "train_defaults", None)
    train, method = resolve(spec, method_cls, defaults)
    expected = {**{f"train.{k}": v for k, v in flatten(to_dict(train)).items()},
                **{f"method.{k}": v for k, v in flatten(to_dict(method)).items()}}
    recorded = {**{f"train.{k}": v for k, v in flatten(config.get("train", {})).items()},
                **{f"method.{k}": v for k, v in flatten(config.get("method_config", {})).items()}}
    out = {}
    for key, value in recorded.items():
        short = key.split(".", 1)[1]
        if short.split(".")[0] in (SIZING if key.startswith("train.") else SHOWN):
            continue
        if key in expected and not _same(value, expected[key]):
            out[short if key.startswith("train.") else key] = value
    return out


def departures_line(runs: pd.DataFrame, results_root: Path | None = None) -> str | None:
    """One footnote naming, per method, the recipe keys its runs set away from the protocol
    (None when every run follows it, or no run's config could be read)."""
    from .cases import run_dirs
    from .runs import display_name, method_order

    per_method: dict[str, list[str]] = {}
    dirs = run_dirs(runs, results_root)
    for _, run in runs.iterrows():
        d = dirs.get(str(run["run_id"]))
        if d is None or not (d / "config.json").exists():
            continue
        try:
            found = config_departures(json.loads((d / "config.json").read_text()))
        except Exception:  # a plugin or protocol not installed here: nothing to compare with
            continue
        name = display_name(run["method"], run.get("dataset"))
        items = per_method.setdefault(name, [])
        for k, v in sorted(found.items()):
            text = f"{k}={v}"
            if text not in items:
                items.append(text)
    shown = {m: items for m, items in per_method.items() if items}
    if not shown:
        return None
    parts = "; ".join(f"{m}: {', '.join(shown[m])}" for m in sorted(shown, key=method_order))
    return (f"Departs from the protocol's recipe (the runs' --set items, read from their config.json; "
            f"budget, image size and batch aside): {parts}.")
