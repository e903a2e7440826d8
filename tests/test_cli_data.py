"""``ssl-bench data prepare`` / ``info`` through typer's CliRunner, on good and bad inputs."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from ct_fakes import SPACING, cache_files, ct_pair, make_lits, make_msd_liver, make_nnunet
from ssl_bench.cli.data import data_app
from ssl_bench.datasets.io import write_nifti

runner = CliRunner()


def invoke(*args):
    return runner.invoke(data_app, [str(a) for a in args])


def test_prepare_writes_the_cache_then_is_a_no_op_then_rebuilds_a_changed_case(tmp_path):
    make_lits(tmp_path, [0, 1, 100])
    res = invoke("prepare", "lits", tmp_path, "--size", 8)
    assert res.exit_code == 0, res.output
    assert "prepared 3 case(s)" in res.output
    assert len(cache_files(tmp_path)) == 9
    again = invoke("prepare", "lits", tmp_path, "--size", 8)
    assert again.exit_code == 0 and "nothing to do" in again.output
    path = tmp_path / "Training Batch 1" / "volume-1.nii"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    res = invoke("prepare", "lits", tmp_path, "--size", 8)
    assert res.exit_code == 0 and "prepared 1 case(s)" in res.output and "1 rebuilt" in res.output
    assert "2 already cached" in res.output


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_prepare_other_layouts(tmp_path, layout):
    if layout == "msd":
        make_msd_liver(tmp_path, [0, 100])
        res = invoke("prepare", "lits", tmp_path, "--size", 8)
    else:
        folder = make_nnunet(tmp_path, ["a_001", "a_002"])
        res = invoke("prepare", "nnunet", folder, "--size", 8)
    assert res.exit_code == 0, res.output
    assert len([p for p in cache_files(tmp_path if layout == "msd" else folder) if p.suffix == ".json"]) == 2


def test_unknown_dataset_is_one_line_listing_the_known_ones(tmp_path):
    res = invoke("prepare", "litz", tmp_path)
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0
    assert "unknown dataset 'litz'" in res.output and "lits" in res.output and "nnunet" in res.output


@pytest.mark.parametrize("command", ["prepare", "info"])
def test_missing_path_is_one_line_and_writes_nothing(tmp_path, command):
    before = sorted(tmp_path.rglob("*"))
    res = invoke(command, "lits", tmp_path / "nowhere")
    assert res.exit_code != 0
    assert str(tmp_path / "nowhere") in res.output and res.output.strip().count("\n") == 0
    assert sorted(tmp_path.rglob("*")) == before


# -- bad inputs: the message names the file, the exit code is non-zero, no cache is written ----
def _remove_label(root):
    (root / "Training Batch 1" / "segmentation-1.nii").unlink()
    return root / "Training Batch 1" / "volume-1.nii"


def _shape_mismatch(root):
    hu, label = ct_pair(1)
    write_nifti(root / "Training Batch 1" / "segmentation-1.nii", label[:3], SPACING, dtype=np.uint8)
    return root / "Training Batch 1" / "volume-1.nii"


def _affine_mismatch(root):
    _, label = ct_pair(1)
    shifted = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    write_nifti(root / "Training Batch 1" / "segmentation-1.nii", label, SPACING, dtype=np.uint8, affine=shifted)
    return root / "Training Batch 1" / "volume-1.nii"


def _label_outside_map(root):
    _, label = ct_pair(1)
    label[0, 0, 0] = 7
    write_nifti(root / "Training Batch 1" / "segmentation-1.nii", label, SPACING, dtype=np.uint8)
    return root / "Training Batch 1" / "segmentation-1.nii"


def _truncated_gz(root):
    path = root / "Training Batch 1" / "volume-1.nii"
    data = gzip.compress(path.read_bytes())
    path.unlink()
    gz = path.with_name("volume-1.nii.gz")
    gz.write_bytes(data[: len(data) // 2])
    return gz


def _all_zero(root):
    hu, _ = ct_pair(1)
    write_nifti(root / "Training Batch 1" / "volume-1.nii", np.zeros_like(hu), SPACING, dtype=np.int16)
    return root / "Training Batch 1" / "volume-1.nii"


def _not_hounsfield(root):
    hu, _ = ct_pair(1)
    write_nifti(root / "Training Batch 1" / "volume-1.nii", (hu + 1024) / 4096.0, SPACING, dtype=np.float32)
    return root / "Training Batch 1" / "volume-1.nii"


@pytest.mark.parametrize("damage, reason", [
    (_remove_label, "this image has no label"), (_shape_mismatch, "must match voxel for voxel"),
    (_affine_mismatch, "different affines"), (_label_outside_map, "label values [7] are outside the class map"),
    (_truncated_gz, "truncated or corrupt"), (_all_zero, "the image is constant"),
    (_not_hounsfield, "Hounsfield units")])
def test_bad_case_fails_prepare_naming_the_file_and_writes_no_cache(tmp_path, damage, reason):
    make_lits(tmp_path, [0, 1, 2, 100])
    bad_file = damage(tmp_path)
    res = invoke("prepare", "lits", tmp_path, "--size", 8)
    assert res.exit_code == 1, res.output
    assert f"{bad_file}" in res.output and reason in res.output
    assert "1 problem(s)" in res.output
    assert "nothing was written to the cache" in res.output
    assert cache_files(tmp_path) == [] and not (tmp_path / ".ssl_bench_cache").exists()


def test_prepare_lists_every_bad_case_and_keeps_a_previous_cache_intact(tmp_path):
    make_lits(tmp_path, [0, 1, 2, 100])
    assert invoke("prepare", "lits", tmp_path, "--size", 8).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in cache_files(tmp_path)}
    bad_a = _label_outside_map(tmp_path)
    hu, _ = ct_pair(2)
    write_nifti(tmp_path / "Training Batch 1" / "volume-2.nii", np.zeros_like(hu), SPACING, dtype=np.int16)  # constant
    (tmp_path / "Training Batch 2").mkdir(exist_ok=True)
    write_nifti(tmp_path / "Training Batch 2" / "volume-101.nii", hu, SPACING, dtype=np.int16)  # no label
    res = invoke("prepare", "lits", tmp_path, "--size", 8)
    assert res.exit_code == 1
    assert "3 problem(s)" in res.output
    for name in (str(bad_a), "volume-2.nii", "volume-101.nii"):
        assert name in res.output
    assert {p: p.stat().st_mtime_ns for p in cache_files(tmp_path)} == before  # untouched, no staging left


def test_info_reports_counts_spacing_and_class_frequency(tmp_path):
    make_lits(tmp_path, [0, 1, 100])
    res = invoke("info", "lits", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    labels = [ct_pair(n)[1] for n in (0, 1, 100)]
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=3)
    assert s["cases"] == 3 and s["subsets"] == {"train": 2, "test": 1} and s["slices"] == 12
    assert [c["voxels"] for c in s["classes"]] == counts.tolist()
    assert s["classes"][2]["voxel_fraction"] == pytest.approx(counts[2] / counts.sum())
    assert [c["cases"] for c in s["classes"]] == [3, 3, 3]
    assert s["spacing_mm"]["z"] == {"min": SPACING[0], "median": SPACING[0], "max": SPACING[0]}
    assert s["read_from_cache"] == 0 and cache_files(tmp_path) == []  # info writes nothing
    invoke("prepare", "lits", tmp_path)
    s2 = json.loads(invoke("info", "lits", tmp_path, "--json").stdout)
    assert s2["read_from_cache"] == 3 and s2["classes"] == s["classes"]
    table = invoke("info", "lits", tmp_path)
    assert table.exit_code == 0 and "tumour" in table.output and "class frequency" in table.output


def test_info_lists_problems_and_fails(tmp_path):
    make_lits(tmp_path, [0, 100])
    (tmp_path / "Training Batch 1" / "segmentation-0.nii").unlink()
    res = invoke("info", "lits", tmp_path)
    assert res.exit_code == 1 and "volume-0.nii" in res.output


def test_prepare_refuses_acdc_missing_field_patients_then_allows_partial(tmp_path):
    """A layout that is only partly understood (SSL4MIS's flattened copy read as if the training
    slices were absent) must not pass prepare: it names the missing patients and writes nothing."""
    from test_acdc import write_flat_ssl4mis

    write_flat_ssl4mis(tmp_path, train_patients=["patient099"])
    res = invoke("prepare", "acdc", tmp_path, "--size", 8)
    assert res.exit_code == 1, res.output
    assert "incomplete for its protocol split" in res.output and "nothing was written" in res.output
    assert "train: 69 of 70 patients missing" in res.output and "patient038" in res.output
    assert "--allow-partial" in res.output
    assert not (tmp_path / ".ssl_bench_cache").exists() and cache_files(tmp_path) == []
    res = invoke("prepare", "acdc", tmp_path, "--size", 8, "--allow-partial")
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and "prepared 62 case(s)" in res.output
