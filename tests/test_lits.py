"""LiTS (release and MSD Task03_Liver layouts): discovery, preprocessing, the paper's split."""
from __future__ import annotations

import numpy as np
import pytest

from ct_fakes import SPACING, ct_pair, make_lits, make_msd_liver
from ssl_bench.datasets.base import DataError
from ssl_bench.datasets.io import write_nifti
from ssl_bench.datasets.lits import LiTS
from ssl_bench.registry import get_dataset_class


def test_registered_with_the_papers_settings():
    cls = get_dataset_class("lits")
    assert cls is LiTS
    assert cls.class_names == ["background", "liver", "tumour"]
    assert (cls.reference_name, cls.default_image_size, cls.default_setting) == ("lits", 256, "ratio")


def test_release_layout_in_batch_subfolders_and_mixed_suffixes(tmp_path):
    make_lits(tmp_path / "LiTS", [0, 1, 27, 28], gz=False)
    make_lits(tmp_path / "LiTS", [100, 130], gz=True)
    ds = LiTS(tmp_path)  # a parent of the LiTS folder works too
    refs = ds.cases()
    assert [(r.case_id, r.subset) for r in refs] == [
        ("lits-000", "train"), ("lits-001", "train"), ("lits-027", "train"), ("lits-028", "train"),
        ("lits-100", "test"), ("lits-130", "test")]
    assert ds.layout.layout == "lits"
    assert ds.source_files("lits-028")[0].parent.name == "Training Batch 2"


def test_load_case_windows_hu_and_scales_per_scan(tmp_path):
    make_lits(tmp_path, [3])
    case = LiTS(tmp_path).load_case("lits-003")
    hu, label = ct_pair(3)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.shape == hu.shape and case.spacing == pytest.approx(SPACING)
    # air clips to -200 and bone to 250, so the scan's min/max are the window's: x -> (x + 200) / 450
    expected = (np.clip(hu.astype(np.float32), -200, 250) + 200) / 450
    np.testing.assert_allclose(case.image, expected, atol=1e-6)
    np.testing.assert_array_equal(case.label, label)


def test_flipped_affine_is_reoriented_to_ras(tmp_path):
    hu, label = ct_pair(5)
    write_nifti(tmp_path / "volume-0.nii", hu, SPACING, dtype=np.int16)
    write_nifti(tmp_path / "segmentation-0.nii", label, SPACING, dtype=np.uint8)
    # the same anatomy stored head-first and mirrored in x: the affine says so
    flipped = np.diag([-SPACING[2], SPACING[1], -SPACING[0], 1.0])
    write_nifti(tmp_path / "volume-100.nii", hu[::-1, :, ::-1], SPACING, dtype=np.int16, affine=flipped)
    write_nifti(tmp_path / "segmentation-100.nii", label[::-1, :, ::-1], SPACING, dtype=np.uint8, affine=flipped)
    ds = LiTS(tmp_path)
    a, b = ds.load_case("lits-000"), ds.load_case("lits-100")
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(a.image, b.image)


def test_msd_task03_layout_gives_the_same_case_ids(tmp_path):
    make_msd_liver(tmp_path, [0, 1, 100])
    ds = LiTS(tmp_path)
    assert ds.layout.layout == "msd"
    assert [(r.case_id, r.subset) for r in ds.cases()] == [
        ("lits-000", "train"), ("lits-001", "train"), ("lits-100", "test")]  # ._ file and imagesTs ignored
    np.testing.assert_array_equal(ds.load_case("lits-001").label, ct_pair(1)[1])


def test_both_layouts_under_one_root_is_an_error(tmp_path):
    make_lits(tmp_path / "LiTS", [0, 100])
    make_msd_liver(tmp_path, [0, 100])
    with pytest.raises(DataError, match="both the LiTS release and the MSD"):
        LiTS(tmp_path).cases()


def test_no_data_names_the_root_and_both_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        LiTS(tmp_path / "empty").cases()
    assert str(tmp_path / "empty") in str(err.value) and "Task03_Liver" in str(err.value)


def test_image_without_label_is_reported_with_its_file(tmp_path):
    make_lits(tmp_path, [0, 100])
    (tmp_path / "Training Batch 1" / "segmentation-0.nii").unlink()
    refs, problems = LiTS(tmp_path).scan()
    assert [r.case_id for r in refs] == ["lits-100"]
    assert len(problems) == 1 and "volume-0.nii" in str(problems[0]) and "no label" in str(problems[0])
    with pytest.raises(DataError, match="volume-0.nii"):
        LiTS(tmp_path).cases()


def test_paper_split_on_131_volumes(tmp_path):
    make_lits(tmp_path, range(131), n_z=2, batches=False)
    ds = LiTS(tmp_path)
    s5 = ds.make_split(ratio=0.05, split_seed=0)
    s10 = ds.make_split(ratio=0.1, split_seed=0)
    assert len(s5.labeled) == 5 and len(s10.labeled) == 10  # the ratio is of the 100 training volumes
    assert s5.test == [f"lits-{n:03d}" for n in range(100, 131)] == s10.test
    assert len(s5.val) == 10 and s5.val == s10.val  # carved from the unlabeled rest, same for each ratio
    assert set(s5.labeled) < set(s10.labeled)
    for s in (s5, s10):
        parts = [set(s.labeled), set(s.unlabeled), set(s.val)]
        assert sum(map(len, parts)) == 100 and set.union(*parts) == {f"lits-{n:03d}" for n in range(100)}
        assert not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert ds.make_split(ratio=0.05, split_seed=0) == s5  # deterministic
    assert ds.make_split(ratio=0.05, split_seed=1).labeled != s5.labeled
    assert len(ds.make_split(labeled=7).labeled) == 7
    assert s5.meta["missing_volumes"] == []


def test_split_needs_train_and_test_volumes(tmp_path):
    make_lits(tmp_path, [0, 1, 2])
    with pytest.raises(DataError, match="0 test volumes"):
        LiTS(tmp_path).make_split(ratio=0.5)


def test_training_slices_are_the_liver_range_plus_margin():
    ds = LiTS.__new__(LiTS)
    label = np.zeros((20, 4, 4), np.uint8)
    label[8:11, 1, 1] = 1
    keep = ds.training_slice_mask(label, (5.0, 1.0, 1.0))  # 20 mm / 5 mm = 4 slices each side
    assert np.flatnonzero(keep).tolist() == list(range(4, 15))
    keep = ds.training_slice_mask(label, (7.0, 1.0, 1.0))  # ceil(20 / 7) = 3
    assert np.flatnonzero(keep).tolist() == list(range(5, 14))
    assert ds.training_slice_mask(np.zeros((5, 4, 4), np.uint8), (5.0, 1.0, 1.0)) is None  # no liver: all


def test_load_slices_applies_the_training_rule_and_reports_positions(tmp_path):
    make_lits(tmp_path, [0, 1, 100], n_z=4)

    class NoMargin(LiTS):
        train_z_margin_mm = 0.0

    ds = NoMargin(tmp_path)
    s = ds.load_slices(["lits-001", "lits-000"], 16)
    # liver is on slices 1 and 2 of each 4-slice volume
    assert len(s) == 4 and s.images.shape == (4, 16, 16) and s.labels.dtype == np.uint8
    assert s.case_index.tolist() == [0, 0, 1, 1] and s.slice_index.tolist() == [1, 2, 1, 2]
    np.testing.assert_allclose(s.position, [1 / 3, 2 / 3, 1 / 3, 2 / 3], rtol=1e-6)
    assert (s.labels.reshape(4, -1).max(1) > 0).all()
    full = LiTS(tmp_path).load_slices(["lits-000"], 16)  # 20 mm margin > the volume: every slice
    assert full.slice_index.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(full.position, [0, 1 / 3, 2 / 3, 1], rtol=1e-6)


def test_an_nnunet_conversion_beside_the_msd_task_is_not_mistaken_for_it(tmp_path):
    make_msd_liver(tmp_path, [0, 100])
    converted = tmp_path / "nnUNet_raw" / "Dataset003_Liver"
    hu, label = ct_pair(0)
    write_nifti(converted / "imagesTr" / "liver_0_0000.nii.gz", hu, SPACING, dtype=np.int16)
    write_nifti(converted / "labelsTr" / "liver_0.nii.gz", label, SPACING, dtype=np.uint8)
    refs, problems = LiTS(tmp_path).scan()
    assert problems == [] and [r.case_id for r in refs] == ["lits-000", "lits-100"]
