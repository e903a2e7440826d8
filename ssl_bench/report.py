"""One self-contained HTML page for the runs of a dataset and protocol (``ssl-bench report``).

The page holds the tables with their statistics (``ssl_bench.table``: Tables 1/2 with 95 %
intervals, paired differences against the reference method, Tables 3/4 where ACTION ablations
were run), every figure (``ssl_bench.figures``, PNG inlined as base64), each run's config and
environment (from its run dir), and a link to each MLflow run in a UI at ``mlflow_url``
(``ssl-bench ui --port``). It needs no server and no internet: it can be mailed. A figure
that cannot be drawn (no data root for the qualitative and imbalance figures) is named in the
page and in ``ReportResult.missing``, with the reason.
"""
from __future__ import annotations

import base64
import datetime
import json
import tempfile
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

from ssl_bench import figures
from ssl_bench import table as tbl
from ssl_bench.table.cases import run_dirs

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table.results { border-collapse: collapse; margin: 1em 0 0.3em; font-size: 0.85em; }
table.results caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
table.results th, table.results td { border: 1px solid #ccc; padding: 0.25em 0.5em; white-space: nowrap; }
table.results thead th { background: #f0f0f0; }
ul.footnote { font-size: 0.78em; color: #555; margin-top: 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
details pre { background: #f7f7f7; padding: 0.5em; font-size: 0.78em; overflow-x: auto; }
.missing { color: #a00; }
div.scroll { overflow-x: auto; }
"""


@dataclass
class ReportResult:
    path: Path
    tables: int
    figures: list[str] = field(default_factory=list)  # kinds drawn
    missing: list[str] = field(default_factory=list)  # "kind: why" of figures not drawn


def _tables(runs: pd.DataFrame, root: Path, checkpoint: str, compare_to: str | None) -> list:
    tables = tbl.main_tables(runs, checkpoint, ci=True, results_root=root)
    tables += tbl.paired_tables(runs, checkpoint, compare_to, root)
    action = runs[runs["method"] == tbl.ABLATION_METHOD]
    if ((action["ablation"] != "none") | (action["augment"] != tbl.DEFAULT_AUGMENT)).any():
        tables += tbl.ablation_tables(runs, checkpoint, ci=True, results_root=root)
    return tables


def _figures(runs: pd.DataFrame, root: Path, data_root: Path, checkpoint: str, work: Path):
    from ssl_bench.errors import user_errors

    makers = {
        "curves": lambda: figures.curves(runs, work, root),
        "ratio": lambda: figures.ratio(runs, work, checkpoint),
        "seeds": lambda: figures.seeds(runs, work, checkpoint),
        "qualitative": lambda: figures.qualitative(runs, data_root, work, checkpoint, results_root=root),
        "imbalance": lambda: figures.imbalance([str(runs["dataset"].iloc[0])], data_root, work),
    }
    drawn, missing = [], []
    for kind, make in makers.items():
        try:
            drawn.append(make())
        except user_errors() as exc:
            missing.append(f"{kind}: {exc}")
    return drawn, missing


def _figure_html(result: figures.FigureResult) -> str:
    data = base64.b64encode(result.paths[0].read_bytes()).decode("ascii")
    notes = "".join(f"<br>{escape(n)}" for n in result.notes)
    return (f'<figure id="figure-{result.kind}"><img alt="{result.kind}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(result.kind)}: {escape(', '.join(result.labels))}{notes}</figcaption></figure>")


def _runs_html(runs: pd.DataFrame, root: Path, mlflow_url: str) -> str:
    dirs = run_dirs(runs, root)
    rows = []
    ordered = runs.sort_values(["method", "setting", "split_seed", "seed"])
    for _, r in ordered.iterrows():
        run_id = str(r["run_id"])
        link = f"{mlflow_url.rstrip('/')}/#/experiments/{r.get('experiment_id', '')}/runs/{run_id}"
        files = []
        for name in ("config.json", "environment.json"):
            path = dirs[run_id] / name if dirs[run_id] else None
            text = json.dumps(json.loads(path.read_text()), indent=2) if path and path.exists() else "(not found)"
            files.append(f"<details><summary>{name}</summary><pre>{escape(text)}</pre></details>")
        rows.append(f"<tr><td>{escape(tbl.display_name(r['method']))}</td><td>{escape(r['setting'])}</td>"
                    f"<td>{escape(str(r['seed']))}</td><td>{escape(str(r['split_seed']))}</td>"
                    f'<td><a href="{escape(link)}">{escape(run_id)}</a></td><td>{"".join(files)}</td></tr>')
    return ('<table class="results runs"><thead><tr><th>Method</th><th>Setting</th><th>Seed</th><th>Split seed</th>'
            f'<th>MLflow run</th><th>Config, environment</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def build_report(runs: pd.DataFrame, root: Path, uri: str, data_root: Path, out: Path,
                 checkpoint: str = tbl.REPORTED, compare_to: str | None = None,
                 mlflow_url: str = "http://127.0.0.1:5000") -> ReportResult:
    """Write the report of ``runs`` (one dataset and protocol) to ``out``, atomically."""
    from ssl_bench.datasets.base import atomic_write_text
    from ssl_bench.provenance import git_commit

    dataset, protocol = str(runs["dataset"].iloc[0]), str(runs["protocol_tag"].iloc[0])
    tables = _tables(runs, root, checkpoint, compare_to)
    with tempfile.TemporaryDirectory(prefix="ssl-bench-report-") as work:
        drawn, missing = _figures(runs, root, data_root, checkpoint, Path(work))
        figure_html = "".join(_figure_html(f) for f in drawn)
    missing_html = "".join(f'<p class="missing">Figure not drawn: {escape(m)}</p>' for m in missing)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ssl-bench report: {escape(dataset)}, {escape(protocol)}</title>
<style>{CSS}</style></head><body>
<h1>ssl-bench report: {escape(dataset)}, protocol {escape(protocol)}</h1>
<p>{len(runs)} finished run(s) of {runs['method'].nunique()} method(s); made {escape(now)} by ssl-bench
{escape(git_commit())} from {escape(uri)}. MLflow links open in <code>ssl-bench ui --port
{escape(mlflow_url.rsplit(':', 1)[-1].strip('/'))}</code> ({escape(mlflow_url)}).</p>
<h2>Tables</h2>{"".join(f'<div class="scroll">{tbl.render_html(t)}</div>' for t in tables)}
<h2>Figures</h2>{figure_html}{missing_html}
<h2>Runs</h2><div class="scroll">{_runs_html(runs, root, mlflow_url)}</div>
</body></html>
"""
    atomic_write_text(out, page)
    return ReportResult(Path(out), len(tables), [f.kind for f in drawn], missing)
