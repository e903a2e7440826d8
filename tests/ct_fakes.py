"""Tiny fake CT datasets (a few volumes of 3-4 slices of 16 x 16) in the LiTS, MSD Task03_Liver
and nnU-Net raw layouts, for the dataset, cache and ``ssl-bench data`` tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssl_bench.datasets.io import write_nifti

SIZE = 16
SPACING = (2.5, 0.8, 0.8)  # (z, y, x) mm


def ct_pair(seed: int, n_z: int = 4, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(HU int16, label uint8) (Z, Y, X): air, body (40 HU), bone (700), liver (60), tumour (20)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    hu = np.full((n_z, size, size), -1000, np.int16)
    label = np.zeros((n_z, size, size), np.uint8)
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2 - 1) ** 2
    liver = (yy - size / 2) ** 2 / 16 + (xx - size / 2 - 2 - seed % 2) ** 2 / 9 < 1
    for z in range(n_z):
        hu[z][body] = 40
        hu[z, 2, size // 2] = 700  # bone
        if 0 < z < n_z - 1 or n_z <= 2:
            hu[z][liver] = 60
            label[z][liver] = 1
    label[n_z // 2, size // 2, size // 2 + 2] = 2
    hu[n_z // 2, size // 2, size // 2 + 2] = 20
    hu = hu + rng.integers(-3, 4, size=hu.shape).astype(np.int16)
    return hu, label


def make_lits(root: Path, numbers, gz: bool = False, n_z: int = 4, batches: bool = True) -> Path:
    """LiTS release layout: ``Training Batch k/volume-N.nii`` + ``segmentation-N.nii``."""
    ext = ".nii.gz" if gz else ".nii"
    for n in numbers:
        hu, label = ct_pair(n, n_z)
        folder = root / ("Training Batch 1" if n < 28 else "Training Batch 2") if batches else root
        write_nifti(folder / f"volume-{n}{ext}", hu, SPACING, dtype=np.int16)
        write_nifti(folder / f"segmentation-{n}{ext}", label, SPACING, dtype=np.uint8)
    return root


def make_msd_liver(root: Path, numbers, n_z: int = 4) -> Path:
    """MSD ``Task03_Liver`` layout (with a macOS ``._`` file and an unlabeled imagesTs)."""
    task = root / "Task03_Liver"
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "dataset.json").write_text(json.dumps({
        "name": "Liver", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": f"./imagesTr/liver_{n}.nii.gz", "label": f"./labelsTr/liver_{n}.nii.gz"}
                     for n in numbers]}))
    for n in numbers:
        hu, label = ct_pair(n, n_z)
        write_nifti(task / "imagesTr" / f"liver_{n}.nii.gz", hu, SPACING, dtype=np.int16)
        write_nifti(task / "labelsTr" / f"liver_{n}.nii.gz", label, SPACING, dtype=np.uint8)
    (task / "imagesTr" / f"._liver_{numbers[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    hu, _ = ct_pair(999, n_z)
    write_nifti(task / "imagesTs" / "liver_131.nii.gz", hu, SPACING, dtype=np.int16)
    return task


def make_nnunet(root: Path, cases: list[str], name: str = "Dataset501_Toy", labels: dict | None = None,
                test_cases: list[str] = (), splits: list[dict] | None = None, n_z: int = 3,
                channels: dict | None = None, file_ending: str = ".nii.gz") -> Path:
    """nnU-Net v2 raw layout: ``dataset.json``, ``imagesTr/<case>_0000``, ``labelsTr/<case>``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels or {"liver": 1, "background": 0, "tumour": 2}  # deliberately not in value order
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": channels or {"0": "CT"}, "labels": labels,
        "numTraining": len(cases), "file_ending": file_ending}))
    for i, case in enumerate(cases):
        hu, label = ct_pair(i, n_z)
        write_nifti(folder / "imagesTr" / f"{case}_0000.nii.gz", hu, SPACING, dtype=np.int16)
        write_nifti(folder / "labelsTr" / f"{case}.nii.gz", label, SPACING, dtype=np.uint8)
    for i, case in enumerate(test_cases):
        hu, label = ct_pair(100 + i, n_z)
        write_nifti(folder / "imagesTs" / f"{case}_0000.nii.gz", hu, SPACING, dtype=np.int16)
        write_nifti(folder / "labelsTs" / f"{case}.nii.gz", label, SPACING, dtype=np.uint8)
    if splits is not None:
        (folder / "splits_final.json").write_text(json.dumps(splits))
    return folder


def cache_files(root: Path) -> list[Path]:
    """Every file under the data root's slice cache (empty when none was written)."""
    base = root / ".ssl_bench_cache"
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []
