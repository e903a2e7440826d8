"""Figures and the HTML report, drawn from runs made by the real CLI in this session."""
from __future__ import annotations

import re
from html import escape

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from ssl_bench import figures
from ssl_bench import table as tbl
from ssl_bench.figures.common import class_color, method_color, method_colors

pytestmark = pytest.mark.slow
METHODS = ["UNet-L", "MT"]


@pytest.fixture(scope="module")
def runs(tiny_runs):
    root, uri = tiny_runs
    return root, uri, tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test")


def check_image(result: figures.FigureResult) -> np.ndarray:
    png, pdf = result.paths
    assert png.suffix == ".png" and pdf.read_bytes()[:5] == b"%PDF-"
    pixels = imread(png)[..., :3]
    assert (pixels.shape[1], pixels.shape[0]) == result.size_px  # the size the figure was made at
    assert pixels.std() > 0.05 and (pixels < 0.5).mean() > 0.005  # drawn on, not a blank page
    return pixels


def color_pixels(pixels: np.ndarray, color: str) -> int:
    """Pixels of exactly this colour (8-bit)."""
    want = np.round(np.array(to_rgb(color)) * 255)
    return int((np.abs(np.round(pixels * 255) - want).sum(axis=-1) == 0).sum())


def test_curves_ratio_seeds(runs, tmp_path):
    root, _, r = runs
    for result in (figures.curves(r, tmp_path, root), figures.ratio(r, tmp_path), figures.seeds(r, tmp_path)):
        check_image(result)
        assert result.labels == METHODS, result.kind
    assert figures.curves(r, tmp_path, root).size_px == (2 * 640, 440)  # one panel per setting


def test_figures_name_the_supervised_rows_as_their_tables_do_on_a_3d_dataset(runs, tmp_path):
    """On a 3D dataset the tables read V-Net-L / V-Net-F; so do the figures' ticks and legends."""
    root, _, r = runs
    r3 = r.assign(dataset="la-small")
    for result in (figures.curves(r3, tmp_path, root), figures.ratio(r3, tmp_path), figures.seeds(r3, tmp_path)):
        assert result.labels == ["V-Net-L", "MT"], result.kind


def test_qualitative_has_every_class_colour_and_the_methods(runs, tmp_path):
    root, _, r = runs
    result = figures.qualitative(r, tmp_path / "data", tmp_path, results_root=root)
    pixels = check_image(result)
    assert result.labels == METHODS
    colors = [class_color(1), class_color(2)]  # tiny-test: ring, core
    assert len(set(colors)) == 2
    for c in colors:
        assert color_pixels(pixels, c) > 30, c  # the legend's patches and the contours
    assert "split seed 0" in result.notes[0] and "median and hardest" in result.notes[0]


def test_qualitative_rules_pick_runs_and_cases():
    import pandas as pd

    from ssl_bench.figures.qualitative import pick_cases, pick_runs

    r = pd.DataFrame({"method": ["mt", "mt", "mt", "unet-l", "unet-l"], "seed": ["2", "10", "1", "3", "0"],
                      "split_seed": ["0", "1", "0", "0", "1"], "run_id": list("abcde")})
    assert sorted(pick_runs(r)["run_id"]) == ["c", "d"]  # split seed 0 (common), lowest seed (1 < 2)
    means = pd.Series({"a": 0.9, "b": 0.2, "c": 0.5, "d": 0.7})
    assert pick_cases(means) == [("median", "c"), ("hardest", "b")]  # lower median of 0.2 0.5 0.7 0.9
    assert pick_cases(pd.Series({"only": 0.5})) == [("median", "only")]


def test_imbalance(tmp_path):
    result = figures.imbalance(["tiny-test"], tmp_path / "data", tmp_path)
    pixels = check_image(result)
    assert result.labels == ["tiny-test"]
    for c in (class_color(1), class_color(2)):
        assert color_pixels(pixels, c) > 100


def test_report_holds_every_table_and_figure(runs, tmp_path):
    from ssl_bench.report import build_report

    root, uri, r = runs
    out = tmp_path / "mail" / "report.html"
    result = build_report(r, root, uri, tmp_path / "data", out)
    html = out.read_text()
    assert result.missing == [] and sorted(result.figures) == sorted(figures.KINDS)
    tables = tbl.main_tables(r, ci=True, results_root=root) + tbl.paired_tables(r, results_root=root)
    assert result.tables == len(tables) == 2
    for t in tables:
        assert f"<caption>{escape(t.title)}</caption>" in html
    assert html.count('<table class="results">') == 2 and html.count('<table class="results runs">') == 1
    for kind in figures.KINDS:
        assert re.search(rf'<img alt="{kind}" src="data:image/png;base64,[A-Za-z0-9+/=]{{1000,}}"', html), kind
    assert "http" not in html.replace("http://127.0.0.1:5000", "")  # nothing fetched from anywhere
    for run_id in r["run_id"]:
        assert f"/runs/{run_id}\">{run_id}</a>" in html
    assert html.count("<summary>config.json</summary>") == len(r) and "&quot;method&quot;: &quot;mt&quot;" in html
    assert "[" in html and "Wilcoxon" in html and "UNet-L" in html and "MT" in html


def test_cli_figure_logs_to_a_run_and_reports_bad_input(runs, tmp_path):
    from typer.testing import CliRunner

    from ssl_bench.cli import app
    from ssl_bench.mlflow_store import make_client

    root, uri, r = runs
    run_id = str(r["run_id"].iloc[0])
    args = ["--results-root", str(root), "--tracking-uri", uri, "--out-dir", str(tmp_path)]
    res = CliRunner().invoke(app, ["figure", "seeds", "--dataset", "tiny-test", "--run-id", run_id, *args])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "seeds_tiny-test_paper-v1.png").exists()
    logged = {a.path for a in make_client(uri).list_artifacts(run_id, "figures")}
    assert logged == {"figures/seeds_tiny-test_paper-v1.png", "figures/seeds_tiny-test_paper-v1.pdf"}
    res = CliRunner().invoke(app, ["figure", "curves", "--dataset", "nope", *args])
    assert res.exit_code == 1 and "no finished runs matching dataset=nope" in res.output
    res = CliRunner().invoke(app, ["figure", "imbalance", *args])
    assert res.exit_code == 2 and "at least one --dataset" in res.output
    res = CliRunner().invoke(app, ["report", "--compare-to", "zzz", "-o", str(tmp_path / "r.html"), *args[:4]])
    assert res.exit_code == 2 and "--compare-to zzz" in res.output and not (tmp_path / "r.html").exists()


def test_methods_of_one_figure_get_distinct_colours_and_keep_their_own():
    shown = ["unet-f", "unet-l", "mt", "cps", "action:paper", "action:released", "bcp", "my-plugin", "other-plugin"]
    colors = method_colors(shown)
    assert len(set(colors.values())) == len(shown)  # variants and plugins never share a colour
    for m in ["unet-f", "unet-l", "mt", "cps", "bcp", "action:paper"]:  # the first of a colour keeps it
        assert colors[m] == method_color(m)
    assert method_color("action:released") == method_color("action:paper") == method_color("action")
    assert colors["action:released"] not in {method_color(m) for m in shown}  # a colour nobody claims
    assert method_colors(["mt", "cps"]) == {"mt": method_color("mt"), "cps": method_color("cps")}
