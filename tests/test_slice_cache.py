"""The slice cache behind ``Dataset.load_slices``: miss, hit, rebuild on change, atomic files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ct_fakes import SPACING, cache_files, ct_pair, make_lits
from ssl_bench.datasets.base import Case, CaseRef, Dataset, SliceSet
from ssl_bench.datasets.cache import SliceCache
from ssl_bench.datasets.io import write_nifti
from ssl_bench.datasets.lits import LiTS


class AllSlices(LiTS):
    train_z_margin_mm = None  # every slice, to compare with load_case


def test_miss_writes_npy_pairs_and_json_then_hit_reads_without_the_sources(tmp_path, monkeypatch):
    make_lits(tmp_path, [0, 1, 100])
    ds = AllSlices(tmp_path)
    assert SliceCache(ds, 8).status("lits-000") == "missing"
    first = ds.load_slices(["lits-000", "lits-001"], 8)
    assert isinstance(first, SliceSet) and len(first) == 8
    folder = tmp_path / ".ssl_bench_cache" / ds.cache_name / "8"
    assert sorted(p.name for p in folder.iterdir()) == [
        "lits-000.images.npy", "lits-000.json", "lits-000.labels.npy",
        "lits-001.images.npy", "lits-001.json", "lits-001.labels.npy"]
    assert np.load(folder / "lits-000.images.npy", mmap_mode="r").shape == (4, 8, 8)
    meta = json.loads((folder / "lits-000.json").read_text())
    label = ct_pair(0)[1]
    assert meta["class_voxels"] == np.bincount(label.ravel(), minlength=3).tolist()
    assert meta["spacing"] == pytest.approx(list(SPACING)) and meta["shape"] == [4, 16, 16]
    assert SliceCache(ds, 8).status("lits-000") == "fresh"

    def no_reads(case_id):
        raise AssertionError("a cache hit must not read the sources")

    monkeypatch.setattr(ds, "load_case", no_reads)
    again = ds.load_slices(["lits-000", "lits-001"], 8)
    for field in ("images", "labels", "case_index", "position", "slice_index"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))


def test_slices_match_load_case_resized(tmp_path):
    make_lits(tmp_path, [2, 100])
    ds = AllSlices(tmp_path)
    s = ds.load_slices(["lits-002"], 16)  # same size: no resampling
    case = ds.load_case("lits-002")
    np.testing.assert_array_equal(s.images, case.image)
    np.testing.assert_array_equal(s.labels, case.label)


def test_changed_source_is_detected_and_rebuilt(tmp_path):
    make_lits(tmp_path, [0, 100])
    ds = AllSlices(tmp_path)
    before = ds.load_slices(["lits-000"], 16)
    hu, label = ct_pair(0)
    label[:] = 0  # a corrected annotation replaces the file
    path = tmp_path / "Training Batch 1" / "segmentation-0.nii"
    write_nifti(path, label, SPACING, dtype=np.uint8)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse file-system clocks
    assert SliceCache(ds, 16).status("lits-000") == "stale"
    after = ds.load_slices(["lits-000"], 16)
    assert before.labels.any() and not after.labels.any()
    assert SliceCache(ds, 16).status("lits-000") == "fresh"


def test_changed_preprocessing_invalidates(tmp_path):
    make_lits(tmp_path, [0, 100])
    AllSlices(tmp_path).load_slices(["lits-000"], 16)

    class OtherWindow(AllSlices):
        hu_window = (-100.0, 200.0)

    other = OtherWindow(tmp_path)
    other.registry_name = "lits"  # same cache folder, different preprocessing
    assert SliceCache(AllSlices(tmp_path), 16).status("lits-000") == "fresh"
    assert SliceCache(other, 16).status("lits-000") == "stale"


def test_no_temporary_files_are_left(tmp_path):
    make_lits(tmp_path, [0, 1, 100])
    AllSlices(tmp_path).load_slices(["lits-000", "lits-001", "lits-100"], 12)
    assert [p for p in cache_files(tmp_path) if p.name.startswith(".") or p.suffix == ".tmp"] == []
    assert len(cache_files(tmp_path)) == 9


def test_env_var_moves_the_cache(tmp_path, monkeypatch):
    make_lits(tmp_path / "data", [0, 100])
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "elsewhere"))
    AllSlices(tmp_path / "data").load_slices(["lits-000"], 8)
    assert cache_files(tmp_path / "data") == []
    assert len(list((tmp_path / "elsewhere").rglob("lits-000.images.npy"))) == 1


def test_dataset_without_source_files_is_computed_in_memory(tmp_path):
    class InMemory(Dataset):
        class_names = ["background", "thing"]

        def cases(self):
            return [CaseRef("a", "a"), CaseRef("b", "b")]

        def load_case(self, case_id):
            z = 2 if case_id == "a" else 3
            label = np.zeros((z, 8, 8), np.uint8)
            label[:, 2:4, 2:4] = 1
            return Case(case_id, case_id, np.random.rand(z, 8, 8).astype(np.float32), label, (1.0, 1.0, 1.0))

    s = InMemory(tmp_path).load_slices(["b", "a"], 4)
    assert s.images.shape == (5, 4, 4) and s.case_index.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(s.position, [0, 0.5, 1, 0, 1])
    assert not (tmp_path / ".ssl_bench_cache").exists()
    assert len(InMemory(tmp_path).load_slices([], 4)) == 0
