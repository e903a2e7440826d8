"""The published rows of the methods after ACTION's tables (results/reference/later_methods_acdc.csv):
shown beside field runs of those methods only, labelled with their own sources, and used by the
measured / published / Δ comparison of `ssl-bench reproduce`."""
from __future__ import annotations

import shutil

import pytest

from ssl_bench import table as tbl
from ssl_bench.table.compare import comparison_tables
from ssl_bench.table.runs import read_reference
from test_table import add_run  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template_db) -> str:
    root = tmp_path_factory.mktemp("results")
    shutil.copyfile(mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for seed, dice in enumerate((0.88, 0.90)):
        add_run(root, uri, "abd", seed, {"mean": (dice, 0.6)})
        add_run(root, uri, "mt", seed, {"mean": (dice - 0.1, 2.0)})
    return uri


def runs(uri, methods=None):
    return tbl.select_runs(tbl.load_runs(uri), dataset="acdc", methods=methods)


def test_every_later_method_has_both_settings_or_says_why_with_a_source():
    ref = read_reference("later_methods_acdc.csv")
    assert set(ref["method"]) == {"BCP", "ABD", "AD-MT", "UniMatch", "MC-Net+", "SS-Net"}
    assert (ref["source"].str.len() > 20).all()
    mean = ref[ref["class"] == "mean"]
    assert mean.groupby("method")["setting"].apply(set).to_dict()["MC-Net+"] == {"7 labeled"}  # no 3-label row
    assert mean[(mean["method"] == "ABD") & (mean["setting"] == "3 labeled")]["dice_percent"].iloc[0] == "88.96"


def test_later_rows_beside_their_runs_only(store):
    md = tbl.render(tbl.main_tables(runs(store), "best", with_published=True), "md")
    assert tbl.PUBLISHED_LABEL in md and "published (each method's paper or release, real ACDC)" in md
    assert "| ABD (published) | 88.96 / 0.52 |" in md
    assert "BCP (published)" not in md and "SS-Net (published)" not in md  # not run here
    assert "ABD: Chi et al., CVPR 2024" in md  # the source in the footnote
    only_mt = tbl.render(tbl.main_tables(runs(store, ["mt"]), "best", True, ["mt"]), "md")
    assert "(published)" not in only_mt


def test_comparison_uses_the_later_rows(store):
    dice = comparison_tables(runs(store))[0]
    rec = next(r for r in dice.records if r["method"] == "abd" and r["class"] == "mean")
    assert rec["published"] == pytest.approx(88.96) and rec["delta"] == pytest.approx(89.0 - 88.96)
    assert any("later_methods_acdc.csv" in line for line in dice.footnote)
