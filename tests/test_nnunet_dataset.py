"""``nnunet``: any nnU-Net raw dataset folder (dataset.json, imagesTr/labelsTr, splits, test set)."""
from __future__ import annotations

import numpy as np
import pytest

from ct_fakes import ct_pair, make_nnunet
from ssl_bench.datasets.base import DataError
from ssl_bench.datasets.nnunet import NnUNetRaw
from ssl_bench.registry import get_dataset_class

CASES = [f"toy_{i:03d}" for i in range(10)]


def test_registered_and_class_names_ordered_by_label_value(tmp_path):
    assert get_dataset_class("nnunet") is NnUNetRaw and NnUNetRaw.reference_name is None
    folder = make_nnunet(tmp_path, CASES[:3])
    ds = NnUNetRaw(folder)
    assert ds.class_names == ["background", "liver", "tumour"] and ds.num_classes == 3
    assert [r.case_id for r in ds.cases()] == CASES[:3]
    assert ds.cache_name == "nnunet/Dataset501_Toy"


def test_root_may_be_a_parent_with_exactly_one_dataset(tmp_path):
    make_nnunet(tmp_path / "nnUNet_raw", CASES[:2])
    assert NnUNetRaw(tmp_path).info.folder.name == "Dataset501_Toy"
    make_nnunet(tmp_path / "nnUNet_raw", CASES[:2], name="Dataset502_Other")
    with pytest.raises(DataError, match="holds 2 nnU-Net datasets.*Dataset501_Toy.*Dataset502_Other"):
        NnUNetRaw(tmp_path).cases()


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": {"0": "T1", "1": "T2"}}, "single-channel"),
    ({"labels": {"background": 0, "liver": [1, 2]}}, "region-based"),
    ({"labels": {"background": 0, "liver": 2}}, "without gaps"),
    ({"file_ending": ".png"}, "convert the images to NIfTI"),
])
def test_unsupported_dataset_json_is_a_clear_error(tmp_path, kwargs, message):
    folder = make_nnunet(tmp_path, CASES[:2], **kwargs)
    with pytest.raises(DataError, match=message) as err:
        NnUNetRaw(folder).cases()
    assert str(folder / "dataset.json") in str(err.value)


def test_load_case_normalises_per_scan_and_keeps_labels(tmp_path):
    folder = make_nnunet(tmp_path, CASES[:2])
    case = NnUNetRaw(folder).load_case("toy_001")
    hu, label = ct_pair(1, 3)
    np.testing.assert_array_equal(case.label, label)
    assert case.image.dtype == np.float32 and 0.0 <= case.image.min() < case.image.max() <= 1.0
    lo, hi = np.percentile(hu.astype(np.float32), [0.5, 99.5])
    np.testing.assert_allclose(case.image, (np.clip(hu, lo, hi) - lo) / (hi - lo), atol=1e-5)


def test_splits_final_fold0_and_labelsTs_are_the_protocol(tmp_path):
    folder = make_nnunet(tmp_path, CASES, test_cases=["toy_900", "toy_901"],
                         splits=[{"train": CASES[:7], "val": CASES[7:9]}, {"train": CASES[2:], "val": CASES[:2]}])
    ds = NnUNetRaw(folder)
    s = ds.make_split(labeled=2, split_seed=3)
    assert s.test == ["toy_900", "toy_901"] and s.val == CASES[7:9]
    assert len(s.labeled) == 2 and sorted(s.labeled + s.unlabeled) == CASES[:7]
    assert s.meta["unused"] == [CASES[9]]  # in no list of fold 0
    assert (s.meta["test_source"], s.meta["val_source"]) == ("labelsTs", "splits_final fold 0")


def test_without_splits_or_test_labels_both_are_carved_with_the_seed(tmp_path):
    folder = make_nnunet(tmp_path, CASES)
    ds = NnUNetRaw(folder)
    s = ds.make_split(ratio=0.5, split_seed=0, val_fraction=0.1, test_fraction=0.2)
    assert (len(s.test), len(s.val), len(s.labeled), len(s.unlabeled)) == (2, 1, 4, 3)
    assert sorted(s.test + s.val + s.labeled + s.unlabeled) == CASES
    assert ds.make_split(ratio=0.5, split_seed=0) == s
    assert ds.make_split(ratio=0.5, split_seed=1) != s


def test_splits_file_naming_unknown_cases_is_an_error(tmp_path):
    folder = make_nnunet(tmp_path, CASES[:4], splits=[{"train": ["nope_001"], "val": CASES[:1]}])
    with pytest.raises(DataError, match="splits_final.json: fold 0 names cases.*nope_001"):
        NnUNetRaw(folder).cases()


def test_image_without_label_and_extra_channel_are_listed(tmp_path):
    folder = make_nnunet(tmp_path, CASES[:3])
    (folder / "labelsTr" / "toy_001.nii.gz").unlink()
    (folder / "imagesTr" / "toy_002_0001.nii.gz").write_bytes(b"")
    refs, problems = NnUNetRaw(folder).scan()
    assert [r.case_id for r in refs] == ["toy_000", "toy_002"]
    text = "\n".join(map(str, problems))
    assert "toy_001_0000.nii.gz: this image has no label" in text and "toy_002_0001.nii.gz: channel 0001" in text


def test_load_slices_through_the_cache(tmp_path):
    folder = make_nnunet(tmp_path, CASES[:2])
    ds = NnUNetRaw(folder)
    s = ds.load_slices(["toy_000", "toy_001"], 8)
    assert s.images.shape == (6, 8, 8) and s.case_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert (folder / ".ssl_bench_cache" / "nnunet" / "Dataset501_Toy" / "8" / "toy_000.json").is_file()


def test_class_level_class_names_is_an_empty_list_for_listings():
    assert NnUNetRaw.class_names == [] and NnUNetRaw.class_names[1:] == []
