"""``ssl-bench run``'s options as data, below the command line: ``prepare_run`` turns them into an
``engine.PreparedRun`` (the CLI's ``run`` and a sweep's plan both call it, so a sweep job's run dir
is the one its run will use), and ``parse_run_args`` reads a job's ``ssl-bench run`` argument list
without importing the CLI (``ssl_bench.cli`` sits above the core; ``tests/test_layers.py`` checks
that both agree on every option).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

# option -> (parameter of prepare_run / the run command, how to read its value; None: a switch)
_OPTIONS: dict[str, tuple[str, Callable[[str], Any] | None]] = {
    "--method": ("method", str), "-m": ("method", str),
    "--dataset": ("dataset", str), "-d": ("dataset", str),
    "--labeled": ("labeled", int), "--ratio": ("ratio", float),
    "--split": ("split", str), "--split-seed": ("split_seed", int), "--seed": ("seed", int),
    "--protocol": ("protocol", str), "--iterations": ("iterations", int), "-n": ("iterations", int),
    "--backbone": ("backbone", str), "--set": ("set_", str),
    "--data-root": ("data_root", Path), "--results-root": ("results_root", Path),
    "--tracking-uri": ("tracking_uri", str),
    "--force": ("force", None), "--progress": ("progress", None), "--no-progress": ("progress", None),
}
_REPEATABLE = {"set_"}
_REQUIRED = {"method": "--method", "dataset": "--dataset"}
RUN_DEFAULTS: dict[str, Any] = {
    "labeled": None, "ratio": None, "split": "default", "split_seed": 0, "seed": 0, "protocol": "paper",
    "iterations": None, "backbone": None, "set_": [], "data_root": None, "results_root": None,
    "tracking_uri": None, "force": False, "progress": True,
}
_TYPE_NAMES = {int: "integer", float: "float"}


def run_option_names() -> set[str]:
    """Every option ``parse_run_args`` knows (the test compares them with the CLI's)."""
    return set(_OPTIONS)


def parse_run_args(args: Sequence[str]) -> dict[str, Any]:
    """The parameters of an ``ssl-bench run`` argument list (``--opt value`` or ``--opt=value``),
    defaults filled in; a ``ValueError`` names an unknown option, a missing value or a bad one."""
    params: dict[str, Any] = {k: (list(v) if isinstance(v, list) else v) for k, v in RUN_DEFAULTS.items()}
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in _OPTIONS:
            raise ValueError(f"No such option: {name}" if name.startswith("-") else f"Got unexpected extra argument ({arg})")
        param, kind = _OPTIONS[name]
        i += 1
        if kind is None:
            if eq:
                raise ValueError(f"Option '{name}' does not take a value.")
            params[param] = name != "--no-progress"
            continue
        if eq:
            raw = inline
        elif i < len(args):
            raw = args[i]
            i += 1
        else:
            raise ValueError(f"Option '{name}' requires an argument.")
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"Invalid value for '{name}': {raw!r} is not a valid "
                             f"{_TYPE_NAMES.get(kind, kind.__name__)}.") from None
        if param in _REPEATABLE:
            params[param].append(value)
        else:
            params[param] = value
    for param, flag in _REQUIRED.items():
        if param not in params:
            raise ValueError(f"Missing option '{flag}'.")
    return params


def prepare_run(method, dataset, labeled, ratio, split, split_seed, seed, protocol, iterations, backbone, set_,
                data_root, results_root):
    """The ``engine.PreparedRun`` of ``ssl-bench run``'s options; raises the user errors it finds.
    A sweep resolves its jobs through it, so a job's run dir is the one its run will use."""
    from ssl_bench import engine, mlflow_store
    from ssl_bench.config import parse_set_options
    from ssl_bench.runconfig import RunSpec

    overrides = parse_set_options(set_)
    if iterations is not None:
        overrides["iterations"] = str(iterations)
    if backbone is not None:
        overrides["backbone"] = backbone
    spec = RunSpec(method=method, dataset=dataset, labeled=labeled, ratio=ratio, split=split,
                   split_seed=split_seed, seed=seed, protocol=protocol, overrides=overrides)
    if labeled is not None and ratio is not None:
        raise ValueError("give either --labeled or --ratio, not both")
    return engine.prepare(spec, engine.data_root(data_root), mlflow_store.results_root(results_root))
