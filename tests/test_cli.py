"""CLI: bad input ends with one clear line, a non-zero exit, and nothing written."""
import os

import pytest
from typer.testing import CliRunner

from ssl_bench.cli import app

runner = CliRunner()


def _files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs] if os.path.exists(root) else []


@pytest.mark.parametrize("args, message", [
    (["--method", "nope", "--dataset", "tiny-test", "--labeled", "2"], "unknown method 'nope'"),
    (["--method", "mt", "--dataset", "nope", "--labeled", "2"], "unknown dataset 'nope'"),
    (["--method", "mt", "--dataset", "tiny-test", "--ratio", "1.5"], "--ratio 1.5 is out of range"),
    (["--method", "mt", "--dataset", "tiny-test", "--ratio", "0"], "--ratio 0.0 is out of range"),
    (["--method", "mt", "--dataset", "tiny-test", "--labeled", "50"], "--labeled 50 is out of range"),
    (["--method", "mt", "--dataset", "tiny-test", "--labeled", "2", "--set", "lrr=0.1"], "unknown train config key"),
    (["--method", "mt", "--dataset", "tiny-test", "--labeled", "2", "--set", "lr"], "--set expects key=value"),
    (["--method", "mt", "--dataset", "tiny-test", "--labeled", "2", "--ratio", "0.5"], "either --labeled or --ratio"),
])
def test_bad_run_arguments(tmp_path, args, message):
    results = tmp_path / "results"
    res = runner.invoke(app, ["run", *args, "--results-root", str(results)])
    assert res.exit_code != 0
    out = res.output
    assert message in out, out
    assert "Traceback" not in out
    assert _files(results) == []


def test_missing_data_root_names_it(tmp_path):
    missing = tmp_path / "no-such-folder"
    res = runner.invoke(app, ["run", "--method", "mt", "--dataset", "acdc", "--labeled", "3",
                              "--data-root", str(missing), "--results-root", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert str(missing) in res.output and "Traceback" not in res.output
    assert _files(tmp_path / "r") == [] and not missing.exists()


def test_methods_and_datasets_are_listed():
    res = runner.invoke(app, ["methods"])
    assert res.exit_code == 0
    for name in ("unet-l", "unet-f", "mt"):
        assert name in res.output
    assert "Tarvainen" in res.output
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0 and "tiny-test" in res.output


@pytest.mark.slow
def test_run_then_table(tmp_path):
    results = tmp_path / "results"
    common = ["--dataset", "tiny-test", "--labeled", "2", "--iterations", "4", "--no-progress",
              "--results-root", str(results), "--set", "labeled_bs=2", "--set", "unlabeled_bs=2",
              "--set", "val_every=2"]
    for method in ("unet-l", "mt"):
        res = runner.invoke(app, ["run", "--method", method, *common])
        assert res.exit_code == 0, res.output
        assert "test set" in res.output
    res = runner.invoke(app, ["run", "--method", "mt", *common])
    assert res.exit_code == 0 and "already finished" in res.output
    res = runner.invoke(app, ["table", "--dataset", "tiny-test", "--results-root", str(results), "--format", "md"])
    assert res.exit_code == 0, res.output
    assert "UNet-L" in res.output and "MT" in res.output and "(n=1)" in res.output
