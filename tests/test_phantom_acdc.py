"""acdc-phantom: deterministic, atomic generation in ACDC's raw layout, plausible anatomy, a
population of patients that differ from each other (anatomy and appearance), its split."""
from __future__ import annotations

import filecmp

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, generate_binary_structure

from ssl_bench.datasets import phantom
from ssl_bench.datasets.base import DataError
from ssl_bench.datasets.phantom import ACDCPhantom, ensure_phantom, generate_patient, write_phantom
from ssl_bench.datasets.phantom_heart import GROUPS, patient_group
from ssl_bench.registry import get_dataset_class


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> ACDCPhantom:
    return get_dataset_class("acdc-phantom")(tmp_path_factory.mktemp("data"))


def test_generated_in_raw_acdc_layout_on_first_use(ds):
    folder = ds.location[1]
    assert folder == (ds.root / "acdc-phantom").resolve() and ds.location[0] == "raw"
    refs = ds.cases()
    assert len(refs) == 60 and len({r.patient_id for r in refs}) == 30
    assert {r.subset for r in refs} == {""}
    info = (folder / "training" / "patient001" / "Info.cfg").read_text()
    es = int(info.split("ES:")[1].split()[0])
    assert (folder / "training" / "patient001" / f"patient001_frame{es:02d}_gt.nii.gz").is_file()
    case = ds.load_case("patient001_frame02")
    assert case.meta["raw_frame"] == es and case.meta["phase"] == "ES"
    assert 8 <= case.image.shape[0] <= 12 and case.image.shape[1:] == (112, 112)
    assert case.image.min() == 0.0 and case.image.max() == 1.0 and case.image.dtype == np.float32
    assert case.spacing[0] in (5.0, 6.5, 8.0, 10.0) and 0.5 <= case.spacing[1] == case.spacing[2] <= 1.7
    slices = ds.load_slices(["patient002_frame01"], 64)  # through the slice cache
    assert slices.images.shape[1:] == (64, 64) and slices.labels.max() == 3
    assert len(slices) == ds.load_case("patient002_frame01").image.shape[0]


def test_attributes():
    assert ACDCPhantom.reference_name == "acdc" and ACDCPhantom.default_image_size == 112
    assert ACDCPhantom.class_names == ["background", "RV", "Myo", "LV"]
    assert ACDCPhantom.default_setting == "labeled" and ACDCPhantom.default_split == "random"


def test_generation_is_deterministic(tmp_path):
    write_phantom(tmp_path / "a", n_patients=2)
    write_phantom(tmp_path / "b", n_patients=2)
    cmp = filecmp.dircmp(tmp_path / "a" / "training", tmp_path / "b" / "training")
    assert cmp.left_only == cmp.right_only == [] and len(cmp.common_dirs) == 2
    for sub in cmp.common_dirs:
        names = sorted(p.name for p in (tmp_path / "a" / "training" / sub).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a" / "training" / sub,
                                                   tmp_path / "b" / "training" / sub, names, shallow=False)
        assert mismatch == errors == [] and len(match) == 5
    p, q = generate_patient(3), generate_patient(4)
    assert not np.array_equal(p["ED"][1][0], q["ED"][1][0])  # patients differ


def test_all_classes_with_background_dominant(ds):
    counts = np.zeros(4)
    for ref in ds.cases()[::5]:
        counts += np.bincount(ds.load_case(ref.case_id).label.ravel(), minlength=4)
    fractions = counts / counts.sum()
    assert fractions[0] > 0.7  # a cropped field of view around the heart, as at the 64 px preset
    assert all(0.01 < f < 0.15 for f in fractions[1:])


def test_anatomy_es_smaller_cavities_and_rv_gone_at_apex():
    for index in (1, 7, 19):
        p = generate_patient(index)
        (ed_img, ed), (es_img, es) = p["ED"], p["ES"]
        assert (es == 3).sum() < 0.8 * (ed == 3).sum()  # LV cavity shrinks at ES
        assert (es == 1).sum() < (ed == 1).sum()
        assert (ed[-1] == 1).sum() == 0  # no RV in the apical slice
        assert (ed[0] == 3).sum() > (ed[-2] == 3).sum()  # base larger than apex
        assert ed_img.dtype == np.int16 and ed_img.max() > 100  # scanner-like intensity range
        blood, myo = ed_img[ed == 3].mean(), ed_img[ed == 2].mean()
        assert blood > 1.5 * myo  # bright blood pool, dark myocardium


@pytest.fixture(scope="module")
def population(ds) -> list[dict]:
    """Per patient (ED frame, through the loader): LV centre and area in px, contrasts."""
    in_plane = generate_binary_structure(2, 1)[None]  # dilate within each slice only
    grow = lambda mask, n: binary_dilation(mask, in_plane, iterations=n)  # noqa: E731
    out = []
    for index in range(1, 31):
        case = ds.load_case(f"patient{index:03d}_frame01")
        image, label = case.image, case.label
        lv = label >= 2
        # the band 2-3 px outside the LV epicardium, away from the RV (whose free wall is dark)
        around = grow(lv, 3) & ~grow(lv, 1) & ~grow(label == 1, 4)
        ys, xs = np.nonzero((label == 3).any(axis=0))
        out.append({"lv_area": (label == 3).sum(axis=(1, 2)).max(), "centre": (xs.mean(), ys.mean()),
                    "myo": image[label == 2].mean(), "blood": image[label == 3].mean(),
                    "around": np.median(image[around]), "spacing": case.spacing[1]})
    return out


def test_patients_differ_in_anatomy(population):
    """Three patients must not cover the population: hearts differ in size, position and zoom."""
    areas = [p["lv_area"] for p in population]
    assert max(areas) > 4 * min(areas)
    xs, ys = zip(*(p["centre"] for p in population))
    assert np.ptp(xs) > 15 and np.ptp(ys) > 15  # px of 112: the heart is not always central
    spacing = [p["spacing"] for p in population]
    assert max(spacing) > 1.5 * min(spacing)  # field of view (zoom) varies


def test_patients_differ_in_appearance_but_every_myocardium_is_visible(population):
    below = [p for p in population if p["around"] < p["myo"]]
    above = [p for p in population if p["around"] > p["myo"]]
    assert len(below) >= 5 and len(above) >= 5  # tissue around the heart darker or brighter
    blood = [p["blood"] for p in population]
    assert max(blood) > 2 * min(blood)  # after min-max normalisation, bright fat dims some hearts
    for p in population:
        assert p["blood"] > 1.5 * p["myo"] and p["blood"] > p["myo"] + 0.1  # bright blood, dark myocardium
        assert abs(p["around"] - p["myo"]) > 0.1 * p["blood"]  # and the epicardium is never invisible


def test_groups_are_balanced_like_acdc():
    groups = [patient_group(i, phantom.PHANTOM_VERSION) for i in range(1, 31)]
    assert sorted(set(groups)) == sorted(GROUPS) and all(groups.count(g) == 6 for g in GROUPS)
    assert groups[:5] != groups[5:10]  # each run of five is shuffled on its own
    assert generate_patient(7)["info"]["Group"] == groups[6]


def test_split_seed0_partition_is_the_documented_one(ds):
    s = ds.make_split(labeled=3)
    patients = lambda ids: sorted({i.split("_")[0] for i in ids})  # noqa: E731
    assert patients(s.test) == [f"patient{i:03d}" for i in (1, 4, 6, 11, 18, 19)]
    assert patients(s.val) == [f"patient{i:03d}" for i in (8, 15, 27, 30)]
    assert s.meta["labeled_patients"] == ["patient021", "patient026", "patient022"]
    assert len(patients(s.labeled)) == 3 and len(patients(s.unlabeled)) == 17
    assert len(s.labeled) == 6 and len(s.test) == 12 and len(s.val) == 8
    everything = s.labeled + s.unlabeled + s.val + s.test
    assert len(everything) == len(set(everything)) == 60
    other = ds.make_split(labeled=3, split_seed=1)
    assert patients(other.test) != patients(s.test)
    assert ds.make_split(labeled=3).labeled == s.labeled
    with pytest.raises(ValueError, match="field"):
        ds.make_split(labeled=3, split="field")


def test_interrupted_generation_leaves_nothing_then_regenerates(tmp_path, monkeypatch):
    real_write = phantom.write_nifti
    calls = {"n": 0}

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # a killed generation
        return real_write(*args, **kwargs)

    monkeypatch.setattr(phantom, "write_nifti", failing_write)
    with pytest.raises(KeyboardInterrupt):
        ensure_phantom(tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(phantom, "write_nifti", real_write)
    monkeypatch.setattr(phantom, "N_PATIENTS", 2)  # keep this test fast
    folder = ensure_phantom(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acdc-phantom"]
    assert len(list((folder / "training").iterdir())) == 2
    stamp = (folder / phantom.MARKER).stat().st_mtime_ns
    assert ensure_phantom(tmp_path) == folder and (folder / phantom.MARKER).stat().st_mtime_ns == stamp
    assert ensure_phantom(folder) == folder  # the phantom folder itself is accepted as root


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "acdc-phantom").mkdir()
    (tmp_path / "acdc-phantom" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not an ssl-bench phantom"):
        ACDCPhantom(tmp_path).cases()
    assert (tmp_path / "acdc-phantom" / "mine.txt").read_text() == "keep"


def test_phantom_of_another_version_is_not_mixed_in(tmp_path):
    folder = tmp_path / "acdc-phantom"
    folder.mkdir()
    (folder / phantom.MARKER).write_text("2\n")  # the previous, easier phantom
    with pytest.raises(DataError, match="version 2, but this ssl-bench generates version 3.*delete"):
        ensure_phantom(tmp_path)
