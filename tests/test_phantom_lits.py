"""``lits-phantom``: deterministic generation, LiTS layout, rare tumours, the LiTS-like protocol."""
from __future__ import annotations

import numpy as np
import pytest

from ssl_bench.datasets.base import DataError
from ssl_bench.datasets.io import read_nifti
from ssl_bench.datasets.lits import LiTS
from ssl_bench.datasets.phantom_lits import (
    IMAGE_SIZE, MARKER, N_TRAIN, N_VOLUMES, PHANTOM_FOLDER, LiTSPhantom, draw_volume)
from ssl_bench.registry import get_dataset_class


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lits-phantom-data")
    LiTSPhantom(root).cases()  # generates once for the module
    return root


def test_registered_as_a_lits_stand_in():
    cls = get_dataset_class("lits-phantom")
    assert cls is LiTSPhantom and issubclass(cls, LiTS)
    assert cls.reference_name == "lits" and cls.default_image_size == IMAGE_SIZE == 96
    assert cls.class_names == ["background", "liver", "tumour"] and cls.default_setting == "ratio"


def test_generated_in_the_lits_layout_and_read_by_the_lits_loader(phantom_root):
    folder = phantom_root / PHANTOM_FOLDER
    assert (folder / MARKER).is_file()
    assert (folder / "Training Batch 1" / "volume-0.nii").is_file()
    assert (folder / "Training Batch 2" / f"segmentation-{N_VOLUMES - 1}.nii").is_file()
    assert not [p for p in phantom_root.iterdir() if p.name.startswith(".lits-phantom.tmp")]
    ds = LiTSPhantom(phantom_root)
    refs = ds.cases()
    assert len(refs) == N_VOLUMES
    assert [r.subset for r in refs] == ["train"] * N_TRAIN + ["test"] * (N_VOLUMES - N_TRAIN)
    hu, _, _ = read_nifti(folder / "Training Batch 1" / "volume-3.nii")
    assert hu.dtype == np.int16 and hu.min() < -900 and hu.max() > 500  # air and bone in HU
    case = ds.load_case("lits-003")
    assert case.image.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE) and 24 <= case.image.shape[0] <= 32
    assert 0.0 == case.image.min() and case.image.max() == 1.0


def test_existing_phantom_is_reused_not_regenerated(phantom_root):
    path = phantom_root / PHANTOM_FOLDER / "Training Batch 1" / "volume-0.nii"
    mtime = path.stat().st_mtime_ns
    LiTSPhantom(phantom_root).cases()
    LiTSPhantom(phantom_root / PHANTOM_FOLDER).cases()  # the phantom folder itself as the root
    assert path.stat().st_mtime_ns == mtime


def test_generation_is_deterministic(phantom_root):
    for number in (0, 17, 29):
        hu, label, spacing = draw_volume(number)
        disk_hu, disk_spacing, _ = read_nifti(
            phantom_root / PHANTOM_FOLDER / ("Training Batch 1" if number < 8 else "Training Batch 2")
            / f"volume-{number}.nii")
        np.testing.assert_array_equal(disk_hu, hu)
        assert disk_spacing == pytest.approx(spacing, abs=1e-5)
    a, b, other = draw_volume(5), draw_volume(5), draw_volume(6)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape != other[0].shape or not np.array_equal(a[0], other[0])


def test_liver_everywhere_tumours_rare_and_liver_free_slices_exist():
    labels = [draw_volume(n)[1] for n in range(N_VOLUMES)]
    liver = sum(int((lab == 1).sum()) for lab in labels)
    tumour = sum(int((lab == 2).sum()) for lab in labels)
    with_tumour = [n for n, lab in enumerate(labels) if (lab == 2).any()]
    assert all((lab == 1).any() for lab in labels)
    assert 0 < tumour < liver / 20  # the rare class
    assert 0.25 * N_VOLUMES <= len(with_tumour) <= 0.75 * N_VOLUMES  # only some volumes
    assert any(n >= N_TRAIN for n in with_tumour)  # the test set can score tumours
    for lab in labels:
        has_fg = lab.reshape(len(lab), -1).max(1) > 0
        assert (~has_fg).sum() >= 3  # liver-free slices, which the training rule trims
        tumour_z = np.flatnonzero((lab == 2).reshape(len(lab), -1).any(1))
        assert len(tumour_z) <= 12  # a few slices per lesion


def test_protocol_mimics_lits(phantom_root):
    ds = LiTSPhantom(phantom_root)
    s5, s10 = ds.make_split(ratio=0.05), ds.make_split(ratio=0.1)
    assert (len(s5.labeled), len(s10.labeled)) == (1, 2)
    assert s5.test == [f"lits-{n:03d}" for n in range(N_TRAIN, N_VOLUMES)]
    assert len(s5.val) == 2 and s5.val == s10.val
    train = s10.labeled + s10.unlabeled
    slices = ds.load_slices(train, IMAGE_SIZE)
    assert slices.images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)

    class AllSlices(LiTSPhantom):
        train_z_margin_mm = None

    every = AllSlices(phantom_root).load_slices(train, IMAGE_SIZE)
    assert 0.5 * len(every) < len(slices) < len(every)  # feet-end slices far from the liver are trimmed
    assert set(zip(slices.case_index, slices.slice_index)) < set(zip(every.case_index, every.slice_index))


def test_real_lits_loader_ignores_the_phantom_folder(phantom_root):
    with pytest.raises(DataError, match="no LiTS data found"):
        LiTS(phantom_root).cases()


def test_foreign_folder_with_the_phantom_name_is_not_overwritten(tmp_path):
    (tmp_path / PHANTOM_FOLDER).mkdir()
    (tmp_path / PHANTOM_FOLDER / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="is not an ssl-bench lits-phantom"):
        LiTSPhantom(tmp_path).cases()
    assert (tmp_path / PHANTOM_FOLDER / "mine.txt").read_text() == "keep"


def test_interrupted_generation_leaves_nothing_then_regenerates(tmp_path, monkeypatch):
    from ssl_bench.datasets import phantom_lits

    real_write, calls = phantom_lits.write_nifti, {"n": 0}

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # a killed generation
        return real_write(*args, **kwargs)

    root = tmp_path / "data"
    monkeypatch.setattr(phantom_lits, "write_nifti", failing_write)
    with pytest.raises(KeyboardInterrupt):
        LiTSPhantom(root).cases()
    assert list(root.iterdir()) == []  # neither the phantom folder nor its temporary sibling
    monkeypatch.setattr(phantom_lits, "write_nifti", real_write)
    assert len(LiTSPhantom(root).cases()) == N_VOLUMES
