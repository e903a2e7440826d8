"""The qualitative figure of 3D runs (LA, V-Net): each method's whole-volume sliding-window
prediction, the one the run's test scored, shown at the axial slice with most foreground."""
import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from la_fakes import tiny_la_run
from ssl_bench import predict
from ssl_bench.cli import app
from ssl_bench.datasets.base import DataError
from ssl_bench.registry import get_dataset_class

# the module (ssl_bench.figures exports its function of the same name)
qual = importlib.import_module("ssl_bench.figures.qualitative")


def test_the_slice_with_most_foreground_is_chosen_along_z():
    label = np.zeros((6, 5, 5), np.uint8)  # (z, y, x)
    label[1, :2, :2] = 1  # 4 voxels
    label[3, :3, :3] = 1  # 9 voxels: the most
    label[4, :, 0] = 2  # 5 voxels of a second class count as foreground too
    label[5, :3, :3] = 1  # 9 again: the first of equals stays
    label[2, :, :] = 0
    assert qual.most_foreground_slice(label) == 3
    label[2, :4, :4] = 2  # 16 voxels
    assert qual.most_foreground_slice(label) == 2


def test_row_labels_name_the_axis_and_keep_long_ids_in_their_row():
    assert qual.slice_label(7, volumetric=True) == "axial slice z=7"
    assert qual.slice_label(7, volumetric=False) == "slice 7"  # 2D: as before
    assert qual.case_name("median", "case10") == "median: case10"
    assert qual.case_name("hardest", "SCAN0000000000000020") == "hardest:\nSCAN0000000000000020"


def test_a_run_drawn_with_a_dataset_of_the_other_kind_is_named():
    with pytest.raises(DataError, match=r"image_size \[16, 32, 32\] is that of a 3D run, but dataset 'la' is 2D here"):
        predict.run_image_size({"image_size": [16, 32, 32], "dataset": "la"}, False, Path("run"))
    assert predict.run_image_size({"image_size": [16, 32, 32]}, True, Path("run")) == (16, 32, 32)
    assert predict.run_image_size({"image_size": 24}, False, Path("run")) == 24


@pytest.mark.slow
def test_figure_of_two_3d_runs_shows_the_scored_prediction(tmp_path, monkeypatch):
    """V-Net-L and MT (MT with the largest-component filter) on tiny LA volumes ->
    ``ssl-bench figure qualitative --dataset la``: a PNG; every volume the figure predicted, once per
    method and case, is the one the run's test scored (its voxel count and Dice are the run's
    per-case CSV row), and the slice shown is the one with most foreground."""
    tiny_la_run(tmp_path, "unet-l", "la-field")
    tiny_la_run(tmp_path, "mt", "la-field", "lcc=true")
    volumes, slices = [], []

    def predict_volume(run, volume, device="cpu"):
        volumes.append((run, volume, real_volume(run, volume, device)))
        return volumes[-1][2]

    def predict_slice(run, volume, z, device="cpu"):
        slices.append((run, volume, z))
        return real_slice(run, volume, z, device)

    real_volume, real_slice = predict.predict_volume, qual.predict_slice
    monkeypatch.setattr(predict, "predict_volume", predict_volume)
    monkeypatch.setattr(qual, "predict_slice", predict_slice)
    data, out = tmp_path / "data", tmp_path / "figures"
    res = CliRunner().invoke(app, ["figure", "qualitative", "--dataset", "la", "--data-root", str(data),
                                   "--results-root", str(tmp_path / "results"), "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "qualitative_la_la-field-v1.png").stat().st_size > 10_000
    text = " ".join(res.output.split())
    assert "runs: V-Net-L seed 0, MT seed 0" in text and "the axial slice (axis z) with most ground-truth" in text
    assert "MT patch [32, 32, 16], stride [16, 16, 8], lcc on" in text

    ds = get_dataset_class("la")(data)
    cases = {c: ds.load_case(c) for c in ds.lists["test"]}

    def case_of(volume):
        [case_id] = [c for c, case in cases.items() if np.array_equal(case.image, volume)]
        return case_id

    shown = [(run.run_dir, case_of(volume), z) for run, volume, z in slices]
    assert len(volumes) == len(shown) == len(set(shown)) >= 2  # one whole volume per method and case
    for run_dir, case_id, z in shown:
        assert z == qual.most_foreground_slice(cases[case_id].label)
        assert f"{case_id} z={z}" in text  # the notes name each slice shown
    for run, volume, pred in volumes:
        case_id = case_of(volume)
        assert pred.shape == cases[case_id].label.shape
        scored = pd.read_csv(run.run_dir / "test_last_per_case.csv").set_index("case_id").loc[case_id]
        truth = cases[case_id].label == 1
        assert int((pred == 1).sum()) == scored["pred_voxels"]
        assert 2 * (truth & (pred == 1)).sum() / (truth.sum() + (pred == 1).sum()) == pytest.approx(scored["dice"], abs=1e-12)
        assert run.window.lcc == (run.run_dir.parent.name == "mt")
        if run.window.lcc:  # the run's switch: one 26-connected component left
            assert ndimage.label(pred == 1, structure=np.ones((3, 3, 3)))[1] == 1
