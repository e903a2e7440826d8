"""Tables name the recipe keys their runs set away from the protocol (ssl_bench.table.departures)."""
import json

import pandas as pd

from ssl_bench.registry import get_dataset_class, get_method_class
from ssl_bench.runconfig import RunSpec, resolve, resolved_dict
from ssl_bench.table.departures import config_departures, departures_line


def recorded_config(method: str, overrides: dict, protocol: str = "field-v2", dataset: str = "acdc") -> dict:
    """The config.json a run of these --set items writes (as the engine resolves and records it)."""
    spec = RunSpec(method=method, dataset=dataset, labeled=3, protocol=protocol, overrides=overrides)
    train, method_cfg = resolve(spec, get_method_class(method), get_dataset_class(dataset).train_defaults)
    return json.loads(json.dumps(resolved_dict(spec, train, method_cfg), default=str))


def test_a_set_item_that_changes_the_recipe_is_a_departure_and_sizing_is_not():
    sizing = {"image_size": "64", "iterations": "1000", "val_every": "50", "threads": "1"}
    assert config_departures(recorded_config("mt", sizing)) == {}
    cfg = recorded_config("mt", {**sizing, "augment.mode": "harness", "dice_form": "linear"})
    assert config_departures(cfg) == {"augment.mode": "harness", "dice_form": "linear"}
    # a method key, and the variant (shown in the row's name) is not one
    assert config_departures(recorded_config("mt", {"method.ema_momentum": "0.9"})) == {"method.ema_momentum": 0.9}
    assert config_departures(recorded_config("action", {"method.variant": "paper"})) == {}
    # the same value as the protocol's is no departure; a key the old record lacks is not compared
    cfg = recorded_config("mt", {"dice_form": "squared"})
    del cfg["train"]["augment"]
    assert config_departures(cfg) == {}


def test_departures_line_names_each_method_once(tmp_path):
    rows = []
    for i, (method, over) in enumerate([("mt", {"augment.mode": "harness"}), ("mt", {"augment.mode": "harness"}),
                                        ("unet-l", {})]):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps(recorded_config(method, over)))
        rows.append({"run_id": f"r{i}", "method": method, "dataset": "acdc", "run_dir": str(d)})
    line = departures_line(pd.DataFrame(rows))
    assert line.endswith("MT: augment.mode=harness.") and "UNet-L" not in line
    assert departures_line(pd.DataFrame(rows[2:])) is None
