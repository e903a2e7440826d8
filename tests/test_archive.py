"""`ssl-bench results export`: a run's record without its weights re-tables from another folder.

Runs are real run dirs (RunTracker, per-case CSVs) written by tests/test_table_stats.py's helper;
the export goes to another folder, a fresh MLflow store is built there by `results rebuild`, and the
table must read the same as from the source, its statistics included (per-case CSVs found in the
moved run dirs).
"""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from ssl_bench import archive
from ssl_bench import table as tbl
from ssl_bench.cli import app
from ssl_bench.run_index import rebuild_index

from test_table_stats import add_case_run, case_values


@pytest.fixture()
def source(tmp_path, mlflow_template_db):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copyfile(mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for method in ("unet-l", "mt"):
        for seed in range(3):
            add_case_run(root, uri, method, seed, case_values(method, seed))
    # weights and an unfinished run: never exported
    (root / "field-mt-0-0" / "checkpoints").mkdir()
    (root / "field-mt-0-0" / "checkpoints" / "last.pt").write_bytes(b"\0" * 64)
    (root / "field-action-0-0").mkdir()  # a job still training (or killed before it finished)
    (root / "field-action-0-0" / "tags.json").write_text(json.dumps({"method": "action", "status": "running"}))
    return root, uri


def md_of(uri: str, results_root=None) -> str:
    runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol="field")
    return tbl.render(tbl.main_tables(runs, "best", ci=True, results_root=results_root), "md")


def test_export_then_rebuild_gives_the_same_table(source, tmp_path, mlflow_template_db):
    root, uri = source
    before = md_of(uri)
    assert "no per-case results" not in before and "[" in before
    dest = tmp_path / "committed"
    report = archive.export_runs(root, dest)
    assert len(report.copied) == 6 and [p.name for p in report.unfinished] == ["field-action-0-0"]
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert "field-mt-0-0/test_best_per_case.csv" in files and "field-mt-0-0/tags.json" in files
    assert not [f for f in files if "checkpoints" in f or f.endswith("mlflow_run_id") or "action" in f]
    # the source is gone (a clean clone): a fresh store over the copies reads the same table,
    # intervals and bold included, from the copies' per-case CSVs
    shutil.rmtree(root)
    shutil.copyfile(mlflow_template_db, dest / "mlflow.db")
    new_uri = f"sqlite:///{dest / 'mlflow.db'}"
    assert len(rebuild_index(dest, new_uri)) == 6
    assert md_of(new_uri, dest) == before


def test_export_is_idempotent_and_never_overwrites_a_different_record(source, tmp_path):
    root, _ = source
    dest = tmp_path / "committed"
    archive.export_runs(root, dest)
    again = archive.export_runs(root, dest)
    assert (len(again.copied), len(again.unchanged)) == (0, 6)
    metrics = dest / "field-mt-2-0" / "metrics.json"
    metrics.write_text(json.dumps({"flat": {"test/best/dice/mean": 0.1}}))
    with pytest.raises(archive.ExportError, match="field-mt-2-0 already holds a different metrics.json"):
        archive.export_runs(root, dest)
    assert json.loads(metrics.read_text())["flat"]["test/best/dice/mean"] == 0.1


def test_export_names_what_it_leaves_out(source, tmp_path, monkeypatch):
    root, _ = source
    (root / "field-mt-0-0" / "notes.pt").write_bytes(b"\0" * 10)
    monkeypatch.setattr(archive, "MAX_FILE_BYTES", 200)
    report = archive.export_runs(root, tmp_path / "out")
    assert any(s.endswith("notes.pt (not a record file: .json, .jsonl, .csv)") for s in report.left_out)
    assert any("test_best_per_case.csv" in s and "MiB >" in s for s in report.left_out)


def test_cli_export_reports_and_fails_loudly(source, tmp_path):
    root, _ = source
    runner = CliRunner()
    res = runner.invoke(app, ["results", "export", str(root), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "exported 6 run record(s)" in res.output and "left out 1 run dir(s) not marked finished" in res.output
    res = runner.invoke(app, ["results", "export", str(tmp_path / "nothing"), str(tmp_path / "out2")])
    assert res.exit_code == 2 and "no run dirs under" in res.output
    assert not (tmp_path / "out2").exists()
