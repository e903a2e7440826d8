"""Arrows point down: the CLI (``ssl_bench/cli``) uses the core; no core module imports the CLI."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [p for d in ("ssl_bench", "methods", "datasets") for p in (ROOT / d).rglob("*.py")
        if "cli" not in p.relative_to(ROOT).parts]


def _cli_imports(path: Path, source: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = ("ssl_bench",) + parts[1:-1] if parts[0] != "ssl_bench" else parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        if any(n == "ssl_bench.cli" or n.startswith("ssl_bench.cli.") for n in names):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {names[0]}")
    return found


def test_no_core_module_imports_the_cli():
    assert len(CORE) > 40
    bad = [hit for p in CORE for hit in _cli_imports(p)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_form_of_importing_the_cli():
    probe = ROOT / "ssl_bench" / "sweep" / "probe.py"
    source = "from ..cli.run import run\nfrom ssl_bench import cli\nimport ssl_bench.cli.app\nfrom . import plan\n"
    assert [h.split(":")[1] for h in _cli_imports(probe, source)] == ["1 imports ssl_bench.cli.run", "2 imports ssl_bench",
                                                                      "3 imports ssl_bench.cli.app"]


def test_sweep_plan_figures_and_report_load_without_the_cli():
    code = ("import sys, ssl_bench.sweep.plan, ssl_bench.figures.imbalance, ssl_bench.report, ssl_bench.data_summary;"
            "print(sorted(m for m in sys.modules if m.startswith('ssl_bench.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_the_core_run_parser_knows_every_option_of_the_run_command():
    import typer.main

    from ssl_bench.cli import app
    from ssl_bench.runargs import RUN_DEFAULTS, parse_run_args, run_option_names

    command = typer.main.get_command(app).commands["run"]
    cli_options = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
    assert cli_options - {"--help"} == run_option_names()
    cli_defaults = {p.name: p.default for p in command.params if not p.required}
    assert {k: v for k, v in cli_defaults.items() if k in RUN_DEFAULTS} == {k: RUN_DEFAULTS[k] for k in cli_defaults}

    params = parse_run_args(["-m", "mt", "--dataset=acdc", "--labeled", "3", "--set", "lr=0.1", "--set", "amp=true",
                             "--no-progress", "--iterations=8"])
    assert (params["method"], params["dataset"], params["labeled"], params["iterations"]) == ("mt", "acdc", 3, 8)
    assert params["set_"] == ["lr=0.1", "amp=true"] and params["progress"] is False and params["seed"] == 0
    import pytest

    for args, message in ((["-m", "mt", "--bogus"], "No such option: --bogus"),
                          (["-m", "mt", "-d", "x", "--seed", "a"], "Invalid value for '--seed'"),
                          (["-m", "mt"], "Missing option '--dataset'"),
                          (["-m", "mt", "-d", "x", "--seed"], "requires an argument")):
        with pytest.raises(ValueError, match=message):
            parse_run_args(args)
