from test_table_stats import *  # noqa

def test_show(store):
    root, uri = store
    for proto in ("field", "equal", "paper"):
        runs = tbl.select_runs(tbl.load_runs(uri), dataset="tiny-test", protocol=proto)
        print(tbl.render(tbl.main_tables(runs, "best", ci=True) + tbl.paired_tables(runs, "best"), "md"))
