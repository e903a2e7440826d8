"""Every supported on-disk layout, end to end: prepare -> a few training iterations -> test metrics."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ct_fakes import make_lits, make_msd_liver, make_nnunet
from ssl_bench.cli import app
from test_acdc import _volume, write_raw_patient

runner = CliRunner()
TRAIN = ["--iterations", "2", "--no-progress", "--set", "image_size=16", "--set", "labeled_bs=2",
         "--set", "unlabeled_bs=2", "--set", "val_every=1"]


def _acdc_raw(root: Path) -> tuple[Path, list[str]]:
    for i in range(1, 101):  # the field split needs every patient of the public training set
        write_raw_patient(root / "training", i, ed=1, es=2 + i % 13, shape=(2, 6, 6))
    return root, ["--labeled", "3"]


def _acdc_h5(root: Path) -> tuple[Path, list[str]]:
    """The widely shared preprocessed layout, with the field's own lists (shipped in the repo)."""
    from importlib.resources import files

    ref = files("ssl_bench.reference") / "acdc_split_ssl4mis"
    (root / "data").mkdir(parents=True)
    for part in ("train", "val", "test"):
        text = (ref / f"{part}.list").read_text()
        (root / f"{part}.list").write_text(text)
        for cid in text.split():
            image, label = _volume(int(cid[7:10]), (2, 6, 6))
            with h5py.File(root / "data" / f"{cid}.h5", "w") as f:
                f["image"], f["label"] = image.astype(np.float32) / 900, label
    return root, ["--labeled", "3"]


def _acdc_h5_flat(root: Path) -> tuple[Path, list[str]]:
    """The same copy as published flattened: training patients as slices beside the volumes."""
    from test_acdc import write_flat_ssl4mis

    return write_flat_ssl4mis(root), ["--labeled", "3"]


def _lits(root: Path):
    make_lits(root, [0, 1, 2, 3, 4, 5, 100, 101])
    return root, ["--ratio", "0.5"]


def _msd(root: Path):
    make_msd_liver(root, [0, 1, 2, 3, 4, 5, 100, 101])
    return root, ["--ratio", "0.5"]


def _nnunet(root: Path):
    folder = make_nnunet(root, [f"case_{i}" for i in range(7)], test_cases=["t_0", "t_1"])
    return folder, ["--labeled", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset, build", [("acdc", _acdc_raw), ("acdc", _acdc_h5), ("acdc", _acdc_h5_flat),
                                            ("lits", _lits), ("lits", _msd), ("nnunet", _nnunet)],
                         ids=["acdc-raw", "acdc-h5", "acdc-h5-flat", "lits", "msd-liver", "nnunet"])
def test_prepare_train_and_test(tmp_path, dataset, build):
    root, setting = build(tmp_path / "data")
    res = runner.invoke(app, ["data", "prepare", dataset, str(root), "--size", "16"])
    assert res.exit_code == 0, res.output
    results = tmp_path / "results"
    res = runner.invoke(app, ["run", "--method", "mt", "--dataset", dataset, *setting, *TRAIN,
                              "--data-root", str(root), "--results-root", str(results)])
    assert res.exit_code == 0, res.output
    [metrics_path] = list(results.rglob("metrics.json"))
    metrics = json.loads(metrics_path.read_text())
    assert metrics["status"] == "finished"
    summary = metrics["test"]["best"]
    assert summary["mean"]["n"] >= 1
    assert set(summary["classes"]) == {"RV", "Myo", "LV"} if dataset == "acdc" else len(summary["classes"]) == 2
    split = json.loads((metrics_path.parent / "split.json").read_text())
    assert split["test"] and split["labeled"] and not set(split["labeled"]) & set(split["test"])
