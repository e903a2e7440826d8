"""The AnCo benchmark: CLI wiring, report files, and bad input (not a measurement test)."""
import json

import pytest
import typer
from typer.testing import CliRunner

from ssl_bench.bench_anco import run
from ssl_bench.cli.bench import bench_app


def _app():
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")  # as the main CLI mounts it
    return app


def test_bench_rejects_too_few_steps(tmp_path):
    with pytest.raises(ValueError, match="steps=1"):
        run(image_size=32, batch_size=1, steps=1, out_dir=tmp_path / "bench")
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_bench_anco_cli_writes_reports(tmp_path):
    res = CliRunner().invoke(_app(), ["bench", "anco", "--image-size", "32", "--batch-size", "2", "--steps", "2",
                                      "--threads", "1", "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "AnCo adds" in res.output
    rep = json.loads((tmp_path / "anco_cpu.json").read_text())
    w, wo = rep["variants"]["with_anco"], rep["variants"]["without_anco"]
    assert w["ablation"] == "none" and wo["ablation"] == "no-anco"
    assert "anco" in w["last_terms"] and "anco" not in wo["last_terms"]
    assert w["trainable_parameters"] > wo["trainable_parameters"]  # H_r is trained only with AnCo
    for v in (w, wo):
        assert v["peak_bytes"] > v["step_peak_bytes"] > 0 and len(v["step_seconds"]) == 2
        assert v["cpu_seconds_per_step"] > 0
    md = (tmp_path / "anco_cpu.md").read_text()
    assert "| with AnCo (`none`) |" in md and "AnCo adds" in md
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
