"""ACDC loader: both public layouts, the field split, and a DataError for every kind of bad input."""
from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssl_bench.datasets.acdc import ACDC, field_labeled_order, read_field_list
from ssl_bench.datasets.base import DataError
from ssl_bench.datasets.io import check_pair, read_h5, read_nifti, write_nifti
from ssl_bench.registry import get_dataset_class

SHAPE = (3, 16, 12)  # (Z, Y, X), not square so that a transposition would show
SPACING = (10.0, 1.25, 1.5)


def _volume(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An int16 image in a scanner-like range and a label using all four classes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 900, size=shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[:, 2:6, 2:5] = 1
    label[:, 6:10, 4:8] = 2
    label[:, 7:9, 5:7] = 3
    return image, label


def write_raw_patient(folder: Path, index: int, ed: int = 1, es: int = 12, shape=SHAPE) -> Path:
    pdir = folder / f"patient{index:03d}"
    pdir.mkdir(parents=True)
    (pdir / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
    for k, frame in enumerate((ed, es)):
        image, label = _volume(index * 10 + k, shape)
        write_nifti(pdir / f"patient{index:03d}_frame{frame:02d}.nii.gz", image, SPACING, np.int16)
        write_nifti(pdir / f"patient{index:03d}_frame{frame:02d}_gt.nii.gz", label, SPACING, np.uint8)
    return pdir


def write_h5_case(base: Path, case_id: str, seed: int, slices: bool = False) -> None:
    image, label = _volume(seed)
    image = image.astype(np.float32) / 900.0
    (base / "data" / "slices").mkdir(parents=True, exist_ok=True)
    with h5py.File(base / "data" / f"{case_id}.h5", "w") as f:
        f["image"], f["label"] = image, label
    if slices:
        for z in range(image.shape[0]):
            with h5py.File(base / "data" / "slices" / f"{case_id}_slice_{z}.h5", "w") as f:
                f["image"], f["label"] = image[z], label[z]


# -- raw layout ----------------------------------------------------------------------------------
def test_raw_layout_loads_ed_es_as_frame01_frame02(tmp_path):
    write_raw_patient(tmp_path / "training", 1, ed=1, es=12)
    write_raw_patient(tmp_path / "training", 2, ed=4, es=9)
    ds = ACDC(tmp_path)
    assert ds.location == ("raw", tmp_path.resolve())
    assert [r.case_id for r in ds.cases()] == ["patient001_frame01", "patient001_frame02",
                                               "patient002_frame01", "patient002_frame02"]
    es = ds.load_case("patient001_frame02")
    raw_image, raw_label = _volume(11)
    assert es.meta["raw_frame"] == 12 and es.meta["phase"] == "ES"
    assert ds.load_case("patient002_frame01").meta["raw_frame"] == 4
    assert es.image.shape == SHAPE and es.image.dtype == np.float32 and es.label.dtype == np.uint8
    assert es.spacing == SPACING
    expected = (raw_image - raw_image.min()) / (raw_image.max() - raw_image.min())
    np.testing.assert_allclose(es.image, expected, atol=1e-6)
    assert es.image.min() == 0.0 and es.image.max() == 1.0
    np.testing.assert_array_equal(es.label, raw_label)
    assert es.patient_id == "patient001"


def test_raw_layout_under_parent_acdc_folder_with_testing(tmp_path):
    write_raw_patient(tmp_path / "ACDC" / "training", 99)
    write_raw_patient(tmp_path / "ACDC" / "testing", 101)
    ds = get_dataset_class("acdc")(tmp_path)
    refs = {r.case_id: r for r in ds.cases()}
    assert set(refs) == {"patient099_frame01", "patient099_frame02", "patient101_frame01", "patient101_frame02"}
    assert refs["patient099_frame01"].subset == "train"  # in the field's train.list
    assert refs["patient101_frame01"].subset == ""  # the field split does not use testing/ patients
    assert ds.load_case("patient101_frame02").meta["folder"] == "testing"


def test_nothing_found_names_layouts_and_data_root(tmp_path):
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(DataError) as err:
        ACDC(tmp_path).cases()
    msg = str(err.value)
    assert str(tmp_path) in msg and "Info.cfg" in msg and "data/slices" in msg and "--data-root" in msg


def test_unknown_case_id(tmp_path):
    write_raw_patient(tmp_path / "training", 1)
    with pytest.raises(DataError, match="patient001_frame03"):
        ACDC(tmp_path).load_case("patient001_frame03")


# -- h5 layout -----------------------------------------------------------------------------------
def test_h5_layout_volumes_and_lists(tmp_path):
    base = tmp_path / "ACDC"
    for i, cid in enumerate(["patient099_frame01", "patient099_frame02", "patient028_frame01"]):
        write_h5_case(base, cid, i)
    (base / "train.list").write_text("patient099_frame01\npatient099_frame02\n")
    ds = ACDC(tmp_path)
    assert ds.location == ("h5", base.resolve())
    refs = {r.case_id: r.subset for r in ds.cases()}
    assert refs == {"patient099_frame01": "train", "patient099_frame02": "train", "patient028_frame01": "val"}
    case = ds.load_case("patient028_frame01")
    raw = _volume(2)[0].astype(np.float32)
    np.testing.assert_allclose(case.image, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    np.testing.assert_array_equal(case.label, _volume(2)[1])
    assert case.spacing == (1.0, 1.0, 1.0) and case.meta["spacing_known"] is False
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8


def test_h5_slices_only_are_stacked_in_slice_order(tmp_path):
    write_h5_case(tmp_path, "patient001_frame01", 5, slices=True)
    volume = ACDC(tmp_path).load_case("patient001_frame01")
    (tmp_path / "data" / "patient001_frame01.h5").unlink()
    stacked = ACDC(tmp_path, layout="h5").load_case("patient001_frame01")
    np.testing.assert_array_equal(stacked.image, volume.image)
    np.testing.assert_array_equal(stacked.label, volume.label)


def test_raw_layout_is_preferred_over_h5(tmp_path):
    write_raw_patient(tmp_path / "training", 1)
    write_h5_case(tmp_path, "patient001_frame01", 0)
    assert ACDC(tmp_path).location[0] == "raw"
    assert ACDC(tmp_path, layout="h5").location[0] == "h5"


# -- the field split -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_acdc(tmp_path_factory) -> Path:
    """The 100 training patients of ACDC as tiny volumes (only the file index matters)."""
    root = tmp_path_factory.mktemp("acdc100")
    for i in range(1, 101):
        write_raw_patient(root / "training", i, ed=1, es=2 + i % 13, shape=(2, 4, 4))
    return root


def test_field_split_labeled_patients(full_acdc):
    ds = ACDC(full_acdc)
    three = ds.make_split(labeled=3)  # split="field" is ACDC's default
    assert three.meta["labeled_patients"] == ["patient099", "patient038", "patient050"]
    assert three.labeled == ["patient099_frame01", "patient099_frame02", "patient038_frame01",
                             "patient038_frame02", "patient050_frame01", "patient050_frame02"]
    seven = ds.make_split(labeled=7, split="field")
    assert seven.meta["labeled_patients"] == ["patient099", "patient038", "patient050", "patient100",
                                              "patient058", "patient021", "patient049"]
    for s, n in ((three, 3), (seven, 7)):
        assert len(s.labeled) == 2 * n and len(s.unlabeled) == 140 - 2 * n
        assert len(s.val) == 20 and len(s.test) == 40
        assert set(s.labeled) | set(s.unlabeled) == set(read_field_list("train"))
        assert not set(s.labeled) & set(s.unlabeled)
        patients = lambda ids: {i.split("_")[0] for i in ids}  # noqa: E731
        assert len(patients(s.labeled + s.unlabeled)) == 70
        assert len(patients(s.val)) == 10 and len(patients(s.test)) == 20
        assert not patients(s.labeled + s.unlabeled) & (patients(s.val) | patients(s.test))
    # "3 labeled" is exactly the first 68 lines of train_slices.list
    first68 = {line.rsplit("_slice", 1)[0] for line in read_field_list("train_slices")[:68]}
    assert first68 == set(three.labeled)
    assert set(ds.make_split().labeled) == set(read_field_list("train"))  # no count: all labeled


def test_random_split_keeps_field_val_test(full_acdc):
    ds = ACDC(full_acdc)
    field = ds.make_split(labeled=3)
    a, b, c = (ds.make_split(labeled=3, split="random", split_seed=s) for s in (1, 1, 2))
    assert a.labeled == b.labeled and a.labeled != c.labeled
    assert a.val == field.val and a.test == field.test
    assert set(a.meta["labeled_patients"]) <= set(field_labeled_order())
    with pytest.raises(ValueError, match="unknown ACDC split"):
        ds.make_split(labeled=3, split="nope")


def test_field_split_lists_missing_patients(tmp_path):
    write_raw_patient(tmp_path / "training", 99)
    with pytest.raises(DataError) as err:
        ACDC(tmp_path).make_split(labeled=3)
    msg = str(err.value)
    assert "train: 69 of 70 patients missing" in msg and "val: 10 of 10" in msg and "test: 20 of 20" in msg
    listed = [p for part in msg.split("frames): ", 1)[1].split(". Use", 1)[0].split("; ")
              for p in part.split(": ", 1)[1].split(" missing: ", 1)[1].split(", ")]
    assert len(listed) == 99 and "patient038" in listed and "patient100" in listed and "patient099" not in listed


# -- bad input -----------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _break(kind: str, pdir: Path) -> Path:
    """Damage patient001 in one way; return the file the error must name."""
    img, gt = pdir / "patient001_frame12.nii.gz", pdir / "patient001_frame12_gt.nii.gz"
    if kind == "missing Info.cfg":
        (pdir / "Info.cfg").unlink()
        return pdir
    if kind == "image without label":
        gt.unlink()
        return pdir
    if kind == "missing frame":
        img.unlink()
        return pdir
    if kind == "shape mismatch":
        write_nifti(gt, np.zeros((2, 16, 12), np.uint8), SPACING, np.uint8)
        return img
    if kind == "affine mismatch":
        write_nifti(gt, _volume(11)[1], (10.0, 2.0, 1.5), np.uint8)
        return img
    if kind == "label outside map":
        label = _volume(11)[1]
        label[0, 0, 0] = 7
        write_nifti(gt, label, SPACING, np.uint8)
        return gt
    if kind == "truncated nii.gz":
        _truncate(img)
        return img
    if kind == "all-zero volume":
        write_nifti(img, np.zeros(SHAPE, np.int16), SPACING, np.int16)
        return img
    if kind == "not 3D":
        import nibabel as nib
        nib.save(nib.Nifti1Image(np.ones((12, 16, 3, 2), np.int16), np.eye(4)), str(img))
        return img
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing Info.cfg", "image without label", "missing frame",
                                  "shape mismatch", "affine mismatch", "label outside map",
                                  "truncated nii.gz", "all-zero volume", "not 3D"])
def test_bad_raw_input_raises_data_error_naming_the_file(tmp_path, kind):
    pdir = write_raw_patient(tmp_path / "training", 1, ed=1, es=12)
    named = _break(kind, pdir)
    ds = ACDC(tmp_path)
    with pytest.raises(DataError) as err:
        for ref in ds.cases():
            ds.load_case(ref.case_id)
    assert str(named) in str(err.value)


def test_label_outside_map_lists_bad_and_valid_values(tmp_path):
    pdir = write_raw_patient(tmp_path / "training", 1, ed=1, es=12)
    _break("label outside map", pdir)
    with pytest.raises(DataError, match=r"\[7\].*\[0, 1, 2, 3\]"):
        ACDC(tmp_path).load_case("patient001_frame02")


def test_bad_info_cfg(tmp_path):
    pdir = write_raw_patient(tmp_path / "training", 1)
    (pdir / "Info.cfg").write_text("ED: 1\nGroup: NOR\n")
    with pytest.raises(DataError, match="Info.cfg.*'ES:'"):
        ACDC(tmp_path).cases()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "missing key", "all-zero"])
def test_bad_h5_raises_data_error_naming_the_file(tmp_path, kind):
    write_h5_case(tmp_path, "patient001_frame01", 0)
    path = tmp_path / "data" / "patient001_frame01.h5"
    if kind == "truncated":
        _truncate(path)
    elif kind == "garbage":
        path.write_bytes(b"not an hdf5 file" * 100)
    elif kind == "missing key":
        with h5py.File(path, "w") as f:
            f["image"] = _volume(0)[0].astype(np.float32)
    else:
        with h5py.File(path, "w") as f:
            f["image"], f["label"] = np.zeros(SHAPE, np.float32), _volume(0)[1]
    with pytest.raises(DataError) as err:
        ACDC(tmp_path).load_case("patient001_frame01")
    assert str(path) in str(err.value)


# -- shared I/O ----------------------------------------------------------------------------------
def test_nifti_round_trip_keeps_axes_spacing_and_dtype(tmp_path):
    image = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    path = tmp_path / "sub" / "x.nii.gz"
    write_nifti(path, image, SPACING, np.int16)
    back, spacing, affine = read_nifti(path)
    np.testing.assert_array_equal(back, image)
    assert back.dtype == np.int16 and spacing == SPACING
    np.testing.assert_allclose(np.diag(affine), [1.5, 1.25, 10.0, 1.0])
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.nii.gz"]  # no temp file left
    with gzip.open(path) as f:  # really gzip-compressed NIfTI (the suffix was kept on the temp file)
        assert len(f.read()) > 0
    plain = tmp_path / "y.nii"
    write_nifti(plain, image, SPACING, np.int16)
    assert plain.read_bytes()[344:348] != b"\x1f\x8b\x08\x00" and read_nifti(plain)[0].shape == SHAPE


def test_read_nifti_rejects_non_finite_and_missing(tmp_path):
    image = np.ones(SHAPE, np.float32)
    image[1, 2, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", image, SPACING)
    with pytest.raises(DataError, match="nan.nii.gz.*NaN"):
        read_nifti(tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match="absent.nii.gz.*not found"):
        read_nifti(tmp_path / "absent.nii.gz")


def test_read_h5_missing_key_lists_found_keys(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["image"] = np.ones(3)
    assert read_h5(tmp_path / "a.h5", ["image"])["image"].tolist() == [1, 1, 1]
    with pytest.raises(DataError, match=r"a.h5.*\['label'\].*\['image'\]"):
        read_h5(tmp_path / "a.h5", ["image", "label"])


def test_check_pair_affine_tolerance():
    image, label = _volume(0)
    a = np.diag([1.5, 1.25, 10.0, 1.0])
    check_pair(image, label, "i", "l", 4, (a, a + 1e-5))  # float rounding between tools is fine
    with pytest.raises(DataError, match="different affines"):
        check_pair(image, label, "i", "l", 4, (a, a + np.eye(4) * 0.01))


def test_scan_lists_every_damaged_patient_and_keeps_the_rest(tmp_path):
    for i in (1, 2, 3):
        write_raw_patient(tmp_path / "training", i)
    (tmp_path / "training" / "patient001" / "Info.cfg").unlink()
    (tmp_path / "training" / "patient003" / "patient003_frame12_gt.nii.gz").unlink()
    ds = ACDC(tmp_path)
    refs, errors = ds.scan()
    assert [r.case_id for r in refs] == ["patient002_frame01", "patient002_frame02"]
    assert len(errors) == 2 and "patient001" in str(errors[0]) and "patient003_frame12_gt" in str(errors[1])
    with pytest.raises(DataError, match="patient001"):
        ds.cases()
    assert ACDC(tmp_path / "nowhere").scan()[0] == []


def test_source_files_name_what_load_case_reads(tmp_path):
    pdir = write_raw_patient(tmp_path / "training", 1, ed=1, es=12)
    ds = ACDC(tmp_path)
    assert ds.source_files("patient001_frame02") == [pdir / "patient001_frame12.nii.gz",
                                                     pdir / "patient001_frame12_gt.nii.gz"]
    assert ds.source_files("patient009_frame01") is None
    assert "min-max" in ds.preprocessing_key()


def test_testing_folder_without_any_ground_truth_is_skipped_with_a_warning(tmp_path):
    write_raw_patient(tmp_path / "training", 1)
    pdir = write_raw_patient(tmp_path / "testing", 101)
    for gt in pdir.glob("*_gt.nii.gz"):
        gt.unlink()
    with pytest.warns(UserWarning, match="no ground truth"):
        refs = ACDC(tmp_path).cases()
    assert {r.patient_id for r in refs} == {"patient001"}
    (pdir.parent / "patient102").mkdir()  # but one labelled patient makes a missing _gt an error
    write_raw_patient(tmp_path / "testing", 103)
    with pytest.raises(DataError, match="patient101"):
        ACDC(tmp_path).cases()


# -- the flattened SSL4MIS copy (slices beside the volumes) ---------------------------------------
def write_flat_ssl4mis(root: Path, train_patients: list[str] | None = None, shape=(2, 6, 6)) -> Path:
    """SSL4MIS's h5 copy as published flattened: val/test patients as volumes and training
    patients as slice files, all side by side in ``data/`` (no ``data/slices/``)."""
    (root / "data").mkdir(parents=True)
    train = read_field_list("train")
    if train_patients is not None:
        train = [c for c in train if c.split("_")[0] in train_patients]
    for cid in read_field_list("val") + read_field_list("test"):
        image, label = _volume(int(cid[7:10]), shape)
        with h5py.File(root / "data" / f"{cid}.h5", "w") as f:
            f["image"], f["label"] = image.astype(np.float32) / 900, label
    for cid in train:
        image, label = _volume(int(cid[7:10]) + 1000, shape)
        for z in range(shape[0]):
            with h5py.File(root / "data" / f"{cid}_slice_{z + 1}.h5", "w") as f:
                f["image"], f["label"] = image[z].astype(np.float32) / 900, label[z]
    return root


def test_flattened_h5_layout_reads_training_patients_from_slices_beside_volumes(tmp_path):
    write_flat_ssl4mis(tmp_path)
    ds = ACDC(tmp_path)
    assert ds.location == ("h5", tmp_path.resolve())
    ids = {r.case_id for r in ds.cases()}
    assert len(ids) == 200 and set(read_field_list("train")) <= ids
    assert ds.protocol_gaps() == []
    case = ds.load_case("patient099_frame01")  # training patient: stacked from its two slices
    image, label = _volume(99 + 1000, (2, 6, 6))
    np.testing.assert_array_equal(case.label, label)
    assert ds.source_files("patient099_frame01") == [tmp_path / "data" / f"patient099_frame01_slice_{z}.h5"
                                                     for z in (1, 2)]
    split = ds.make_split(labeled=3)
    assert split.meta["labeled_patients"] == ["patient099", "patient038", "patient050"]
    assert len(split.unlabeled) == 134 and len(split.val) == 20 and len(split.test) == 40


def test_slices_in_both_folders_are_an_error(tmp_path):
    write_h5_case(tmp_path, "patient001_frame01", 5, slices=True)
    with h5py.File(tmp_path / "data" / "patient001_frame01_slice_0.h5", "w") as f:
        f["image"], f["label"] = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8)
    with pytest.raises(DataError, match="both in .* and in .*keep one copy"):
        ACDC(tmp_path).cases()


def test_protocol_gaps_name_the_missing_training_patients(tmp_path):
    write_flat_ssl4mis(tmp_path, train_patients=["patient099", "patient038"])
    gaps = ACDC(tmp_path).protocol_gaps()
    assert len(gaps) == 1 and gaps[0].startswith("train: 68 of 70 patients missing: ")
    missing = gaps[0].split("missing: ")[1].split(", ")
    assert len(missing) == 68 and "patient050" in missing and "patient099" not in missing
