"""``lits-phantom``: a synthetic stand-in for LiTS, written in the LiTS release layout.

It lets the whole LiTS path (NIfTI reading, HU windowing, RAS reorientation, the liver z-range
rule, the ratio protocol, training, evaluation) run and be tested on a CPU in minutes, without
the real data. Numbers on it only show that a method runs and learns; they are not LiTS
results. The real dataset is Bilic et al., MedIA 2023 (see ``lits.py``).

What is drawn, per volume, deterministically from ``(PHANTOM_VERSION, volume number)``: an
abdominal CT in Hounsfield units (int16 on disk), 24-32 axial slices of 96 x 96 px, spacing
4-6 mm (z) and 3.6-4.2 mm (in-plane), RAS+ axes (z runs feet -> head): air (-1000 HU) around a
body ellipse with a subcutaneous fat rim (-100 HU) of varying thickness; abdominal soft tissue
(~40 HU) with patches of fat and some bowel loops (fluid ~10 HU, gas ~-800 HU); the spine
(vertebral body ~400 HU with a ~700 HU cortex, spinal canal, posterior process) and ribs
(~700 HU) in the upper slices; aorta (~160 HU) and IVC (~90 HU); a large liver (55-70 HU) on
the patient's right with a lobulated outline that changes along z and a left lobe in its upper
part, present in the upper 50-70 % of the slices only (so liver-free slices exist); the spleen
(~52 HU) and both kidneys (~48 HU), close to the liver in intensity to make the task hard;
small hypodense tumours (25-40 HU below the liver) in about half of the volumes, 1-3 per volume,
a few slices each (the rare class). Then partial-volume blur and Gaussian noise (10-18 HU).
Labels: 0 background, 1 liver, 2 tumour (tumour only inside the liver).

Protocol (mimics LiTS's first-100 / last-31): 30 volumes, numbers 0-23 train, 24-29 test;
``--ratio`` and the validation carve-out as for ``lits``. Files: ``Training Batch 1/`` holds
volumes 0-7, ``Training Batch 2/`` the rest, as ``volume-N.nii`` / ``segmentation-N.nii``.
Generation (about a second) happens on first use into ``<data root>/lits-phantom/`` via a
temporary sibling folder renamed into place; an existing folder is reused as is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ssl_bench.registry import register_dataset

from .generate import ensure_generated
from .io import write_nifti
from .lits import LiTS

PHANTOM_VERSION = 1
PHANTOM_FOLDER = "lits-phantom"
MARKER = ".ssl_bench_lits_phantom"
N_VOLUMES = 30
N_TRAIN = 24
IMAGE_SIZE = 96
#: test volumes that always get tumours, so that the tumour class can be scored
FORCED_TUMOUR = {25, 28}


# -- drawing -----------------------------------------------------------------------------------
def _ellipse(xx, yy, cx, cy, rx, ry):
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0


def _profile(t: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """Cross-section scale of an organ spanning relative heights [lo, hi]: 0 outside, dome inside."""
    u = (np.asarray(t, dtype=float) - lo) / (hi - lo)
    return np.where((u > 0) & (u < 1), np.sqrt(np.clip(np.sin(np.pi * u), 0, 1)), 0.0)


def draw_volume(number: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(HU int16 (Z, Y, X), label uint8 (Z, Y, X), spacing (z, y, x) mm) of phantom volume ``number``."""
    rng = np.random.default_rng([PHANTOM_VERSION, number, 2017])
    n_z, size = int(rng.integers(24, 33)), IMAGE_SIZE
    spacing = (float(rng.uniform(4.0, 6.0)), *(2 * [float(rng.uniform(3.6, 4.2))]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # body (X grows to the patient's right, Y to anterior)
    cx, cy = size / 2 + rng.normal(0, 1.5), size / 2 + rng.normal(0, 1.5)
    ax, ay = rng.uniform(38, 43), rng.uniform(28, 33)
    fat_rim = rng.uniform(2.0, 5.0)
    liver_hu = rng.uniform(55, 70)
    liver_lo, liver_hi = rng.uniform(0.22, 0.4), rng.uniform(0.88, 1.05)
    harmonics = [(k, rng.uniform(0.03, 0.12) / k * 2, rng.uniform(0, 2 * np.pi), rng.normal(0, 1.5))
                 for k in range(2, 6)]
    liver_shift = rng.normal(0, 2, size=2)
    fat_field = gaussian_filter(rng.normal(size=(n_z, size, size)), sigma=(1.5, 4, 4))
    fat_field /= fat_field.std() + 1e-8
    bowel = [(rng.uniform(cx - 0.6 * ax, cx + 0.3 * ax), rng.uniform(cy - 0.2 * ay, cy + 0.7 * ay),
              rng.uniform(3, 6), rng.uniform(0.0, 0.45), rng.random() < 0.4) for _ in range(6)]

    # structures that do not change along z
    body = _ellipse(xx, yy, cx, cy, ax, ay)
    inner = _ellipse(xx, yy, cx, cy, ax - fat_rim, ay - fat_rim)
    spine_y = cy - 0.62 * ay
    vertebra = _ellipse(xx, yy, cx, spine_y, 6.0, 5.5)
    cortex = vertebra & ~_ellipse(xx, yy, cx, spine_y, 4.5, 4.0)
    canal = _ellipse(xx, yy, cx, spine_y - 7.5, 2.5, 2.5)
    process = _ellipse(xx, yy, cx, spine_y - 10.5, 1.8, 3.0)
    muscle = (_ellipse(xx, yy, cx - 7, spine_y - 8, 5, 4) | _ellipse(xx, yy, cx + 7, spine_y - 8, 5, 4)) & inner
    aorta = _ellipse(xx, yy, cx - 0.1 * ax, spine_y + 9, 3.2, 3.2)
    ivc = _ellipse(xx, yy, cx + 0.13 * ax, spine_y + 9.5, 3.0, 3.6)

    hu = np.full((n_z, size, size), -1000.0)
    label = np.zeros((n_z, size, size), np.uint8)
    for z in range(n_z):
        t = z / max(n_z - 1, 1)  # 0 = feet end, 1 = head end
        sl = hu[z]
        sl[body] = -100.0
        sl[inner] = np.where(fat_field[z][inner] > 1.0, -90.0, 40.0)
        for bx, by, br, bt, gas in bowel:  # bowel loops in the lower abdomen
            if t < bt + 0.35:
                m = _ellipse(xx, yy, bx, by, br, br * 0.8) & inner
                sl[m] = 10.0
                if gas:
                    sl[_ellipse(xx, yy, bx, by + br * 0.3, br * 0.5, br * 0.35) & inner] = -800.0
        # solid organs whose size changes along z
        kidneys = np.zeros_like(body)
        for side, (lo, hi) in ((1, (0.05, 0.45)), (-1, (0.12, 0.55))):
            s = _profile(t, lo, hi)
            if s > 0:
                kidneys |= _ellipse(xx, yy, cx + side * 0.36 * ax, spine_y + 3, 0.12 * ax * s + 0.5, 0.17 * ay * s + 0.5)
        s_spleen = _profile(t, 0.45, 0.9)
        spleen = _ellipse(xx, yy, cx - 0.58 * ax, cy - 0.2 * ay, 0.16 * ax * s_spleen + 0.3, 0.27 * ay * s_spleen + 0.3) \
            if s_spleen > 0 else np.zeros_like(body)
        others = vertebra | canal | process | muscle | aorta | ivc | kidneys | spleen
        # the liver: lobulated right lobe (outline drifts with z) + a left lobe in the upper part
        s_liver = float(_profile(t, liver_lo, liver_hi))
        liver = np.zeros_like(body)
        if s_liver > 0:
            lx, ly = cx + 0.30 * ax + liver_shift[0], cy + 0.06 * ay + liver_shift[1]
            rx, ry = 0.50 * ax * s_liver + 1, 0.68 * ay * s_liver + 1
            u, v = (xx - lx) / rx, (yy - ly) / ry
            theta = np.arctan2(v, u)
            radius = 1.0 + sum(a * np.cos(k * theta + ph + drift * t) for k, a, ph, drift in harmonics)
            liver = u ** 2 + v ** 2 < radius ** 2
            if t > liver_lo + 0.4 * (liver_hi - liver_lo):
                liver |= _ellipse(xx, yy, cx - 0.02 * ax, cy + 0.38 * ay, 0.26 * ax * s_liver + 0.5, 0.16 * ay * s_liver + 0.5)
            liver &= inner & ~others
        sl[muscle] = 50.0
        sl[kidneys] = 48.0
        sl[spleen] = 52.0
        sl[liver] = liver_hu
        sl[aorta] = 160.0
        sl[ivc] = 90.0
        sl[vertebra] = 400.0
        sl[cortex | process] = 700.0
        sl[canal] = 20.0
        if t > 0.45:  # ribs along the lateral/anterior wall, crossing the plane every few slices
            ring_x, ring_y = ax - fat_rim - 2.5, ay - fat_rim - 2.5
            for i, ang in enumerate(np.linspace(-0.3 * np.pi, 1.3 * np.pi, 12)):
                if (z + i) % 3 and abs(ang - np.pi / 2) > 0.15 * np.pi:
                    rib = _ellipse(xx, yy, cx + ring_x * np.cos(ang), cy + ring_y * np.sin(ang), 1.6, 1.6)
                    sl[rib & body] = 700.0
        label[z][liver] = 1
    # tumours: rare, small, hypodense, inside the liver only
    if (rng.random() < 0.5 or number in FORCED_TUMOUR) and label.any():
        zz, yv, xv = np.mgrid[0:n_z, 0:size, 0:size]
        liver_voxels = np.argwhere(label == 1)
        for _ in range(int(rng.integers(1, 4))):
            cz, cyt, cxt = liver_voxels[rng.integers(len(liver_voxels))]
            rz, rxy = rng.uniform(1.0, 2.5), rng.uniform(2.5, 6.0)
            ball = ((zz - cz) / rz) ** 2 + ((yv - cyt) / rxy) ** 2 + ((xv - cxt) / (rxy * rng.uniform(0.8, 1.2))) ** 2 < 1
            tumour = ball & (label >= 1)
            hu[tumour] = liver_hu - rng.uniform(25, 40)
            label[tumour] = 2
    hu = gaussian_filter(hu, sigma=(0.3, 0.6, 0.6))  # partial-volume blur
    hu += rng.normal(0, rng.uniform(10, 18), size=hu.shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), label, spacing


def write_phantom(folder: Path) -> None:
    for number in range(N_VOLUMES):
        hu, label, spacing = draw_volume(number)
        batch = folder / ("Training Batch 1" if number < 8 else "Training Batch 2")
        write_nifti(batch / f"volume-{number}.nii", hu, spacing, dtype=np.int16)
        write_nifti(batch / f"segmentation-{number}.nii", label, spacing, dtype=np.uint8)
    (folder / "README.txt").write_text(
        f"Synthetic LiTS-like abdominal CT generated by ssl-bench (phantom version {PHANTOM_VERSION}).\n"
        f"Not patient data; see ssl_bench/datasets/phantom_lits.py.\n")
    (folder / MARKER).write_text(f"{PHANTOM_VERSION}\n")


def ensure_lits_phantom(root: Path) -> Path:
    """The phantom folder under ``root`` (or ``root`` itself), generated atomically if missing."""
    return ensure_generated(root, PHANTOM_FOLDER, MARKER, PHANTOM_VERSION, write_phantom,
                            kind="lits-phantom")


# -- the dataset -------------------------------------------------------------------------------
@register_dataset("lits-phantom", description="Synthetic LiTS-like abdominal CT (30 volumes, generated on first use)",
                  paper="synthetic; stands in for LiTS (Bilic et al., MedIA 2023)")
class LiTSPhantom(LiTS):
    """Synthetic LiTS-like CT in the LiTS release layout: liver and rare tumours, 96 px."""

    description = "Synthetic LiTS-like abdominal CT: 30 volumes x 24-32 slices, 96 px; liver, rare tumours"
    paper = "synthetic (ssl-bench); stands in for LiTS, Bilic et al., Medical Image Analysis 2023"
    reference_name = "lits"
    default_image_size = IMAGE_SIZE
    #: CPU preset (below any --set): small slices and the paper's batch of 6 + 6, so that a run
    #: of every method fits in minutes on a laptop; the field's 12 + 12 at 256 px is for real data
    train_defaults = {"iterations": "600", "image_size": "64", "labeled_bs": "6", "unlabeled_bs": "6",
                      "val_every": "50"}
    train_numbers = range(0, N_TRAIN)
    test_numbers = range(N_TRAIN, N_VOLUMES)

    def _data_folder(self) -> Path:
        return ensure_lits_phantom(self.root)

    def preprocessing_key(self) -> str:
        return f"{super().preprocessing_key()};phantom-v{PHANTOM_VERSION}"
