"""``acdc-phantom``: a synthetic stand-in for ACDC, written in ACDC's raw layout.

It exists so that the whole pipeline (NIfTI reading, Info.cfg, ED/ES renaming, normalisation,
splits, training, evaluation) can run and be tested without the real data, on a CPU, in
minutes. It is not a substitute for ACDC results: numbers on it only show that a method runs
and learns. The real dataset is Bernard et al., IEEE TMI 2018 (see ``acdc.py``).

What is drawn (per patient, deterministically from ``(PHANTOM_VERSION, patient index)``):
short-axis cine-MRI-like stacks of 8-12 slices of 112 x 112 px, spacing (5-10, 1.3-1.7, 1.3-1.7)
mm; a bright LV blood pool with dark papillary muscles (labelled LV, as in ACDC), a dark
myocardial ring of angularly varying thickness, a bright RV crescent beside it with an unlabelled
dark free wall; patient-specific size, position, orientation, ellipticity and RV shape; along the
stack the heart shrinks toward the apex, drifts, and the RV vanishes in the apical slices.
The ES frame has smaller cavities and a thicker myocardium than the ED frame. Around the heart:
body outline with a bright fat rim, dark lungs, a liver-like blob growing toward the apex, the
spine and a bright descending aorta (an unlabelled LV look-alike). Then partial-volume blur, a
smooth multiplicative bias field, Rician noise and a per-patient intensity scale (int16 on disk).

Split: ``split="random"`` (the default; the field's lists name real ACDC patients and do not
apply) shuffles the 30 patients with ``split_seed`` into 6 test, 4 validation and 20 training
patients; the labeled patients are the first N of the shuffled training patients. For
``split_seed=0`` the partition is (checked by ``tests/test_phantom_acdc.py``): test patients
001, 004, 006, 011, 018, 019; validation 008, 015, 027, 030; 3 labeled: 021, 026, 022.

Generation happens on first use into ``<data root>/acdc-phantom/`` (a temporary sibling folder
renamed into place, so an interrupted generation never leaves half a dataset); an existing
folder is reused as is.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ssl_bench.registry import register_dataset

from .acdc import ACDC
from .base import DataError, Split, select_count
from .generate import ensure_generated
from .io import write_nifti

PHANTOM_VERSION = 2
PHANTOM_FOLDER = "acdc-phantom"
MARKER = ".ssl_bench_phantom"
N_PATIENTS = 30
IMAGE_SIZE = 112
N_VAL, N_TEST = 4, 6


# -- drawing -----------------------------------------------------------------------------------
def _ellipse(xx, yy, cx, cy, rx, ry, angle=0.0):
    """Boolean mask of a rotated ellipse (radii in px)."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 < 1.0


class _Anatomy:
    """Per-patient shape parameters (drawn once, shared by the ED and ES frames)."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.n_slices = int(rng.integers(8, 13))
        pix = round(float(u(1.3, 1.7)), 2)
        self.spacing = (float(rng.choice([5.0, 6.5, 8.0, 10.0])), pix, pix)
        half = IMAGE_SIZE / 2
        self.body = (half + u(-4, 4), half + u(-3, 5), u(46, 54), u(36, 44), u(-0.15, 0.15))
        self.fat = u(2.5, 5.0)
        self.heart = np.array([half + u(-8, 8), half + u(-8, 4)])  # LV centre (x, y) at the base
        self.drift = rng.normal(0, 3, size=2)  # centre shift from base to apex
        self.rv_angle = np.pi + u(-1.0, 1.0)  # direction from LV to RV
        self.lv_radius = u(8, 17)
        self.ellipticity = u(0.8, 1.0)
        self.myo = u(2.5, 5.5)
        self.myo_wave = (u(0.1, 0.35), u(0, 2 * np.pi))  # thickness varies around the ring
        self.rv_shape = (u(0.6, 1.0), u(1.1, 1.6), u(-3, 3), u(0.7, 0.95))  # ra, rb, v shift, offset
        self.rv_reach = u(0.65, 0.9)  # fraction of the stack (from the base) where the RV shows
        self.papillary = [(u(0, 2 * np.pi), u(1.2, 2.2)) for _ in range(int(rng.integers(1, 3)))]
        self.lungs = [(u(16, 24), u(10, 16), u(-0.4, 0.4)) for _ in range(2)]
        self.liver = (u(-22, -10), u(14, 26), u(14, 22), u(10, 16))
        self.aorta = (u(-6, 10), u(22, 28), u(3.5, 5.0))
        # bright fat/vessel blobs beside the heart: unlabelled look-alikes of the blood pools
        self.blobs = [(u(0, 2 * np.pi), u(1.0, 1.6), u(2.0, 5.0)) for _ in range(int(rng.integers(0, 3)))]
        # contrasts vary per patient (scanner, sequence), so a few patients do not cover them all
        self.tissue = {"blood": u(0.8, 1.05), "rv_blood": u(0.7, 0.95), "myo": u(0.12, 0.35),
                       "soft": u(0.2, 0.45), "fat": u(0.55, 0.95), "lung": u(0.02, 0.06),
                       "liver": u(0.3, 0.6), "spine": u(0.12, 0.2)}
        self.scale = u(150, 900)


def _draw_frame(a: _Anatomy, rng: np.random.Generator, es: bool) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (image int16 (Z, Y, X), label uint8 (Z, Y, X))."""
    size, nz = IMAGE_SIZE, a.n_slices
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    shrink = rng.uniform(0.6, 0.75) if es else 1.0  # ES: smaller cavities ...
    thicken = rng.uniform(1.3, 1.6) if es else 1.0  # ... and a thicker wall
    rv_shrink = rng.uniform(0.7, 0.85) if es else 1.0
    t_ = a.tissue
    bx, by, brx, bry, bang = a.body
    image = np.zeros((nz, size, size))
    label = np.zeros((nz, size, size), np.uint8)
    for z in range(nz):
        t = z / (nz - 1)  # 0 at the base, 1 at the apex
        img = np.zeros((size, size))
        body = _ellipse(xx, yy, bx, by, brx, bry, bang)
        img[body] = t_["fat"]
        img[_ellipse(xx, yy, bx, by, brx - a.fat, bry - a.fat, bang)] = t_["soft"]
        for side, (lrx, lry, lang) in zip((-1, 1), a.lungs):
            img[_ellipse(xx, yy, bx + side * 24, by - 8, lrx, lry, lang)] = t_["lung"]
        lx, ly, lrx, lry = a.liver
        grow = 0.5 + 0.7 * t  # the liver shows more toward the apex
        img[_ellipse(xx, yy, bx + lx, by + ly, lrx * grow, lry * grow) & body] = t_["liver"]
        img[_ellipse(xx, yy, bx, by + bry - 8, 6, 5)] = t_["spine"]
        ax, ay, ar = a.aorta
        img[_ellipse(xx, yy, bx + ax, by + ay, ar, ar)] = t_["blood"]

        cx, cy = a.heart + a.drift * t
        c, s = np.cos(a.rv_angle), np.sin(a.rv_angle)
        u = (xx - cx) * c + (yy - cy) * s  # u points from the LV toward the RV
        v = -(xx - cx) * s + (yy - cy) * c
        r = np.sqrt(u ** 2 + (v / a.ellipticity) ** 2)
        phi = np.arctan2(v, u)
        size_z = 1.0 - 0.5 * t ** 2  # smaller toward the apex
        cavity_r = a.lv_radius * size_z * shrink * (0.0 if t == 1.0 and nz > 9 else 1.0)
        wall = a.myo * thicken * (0.8 + 0.2 * size_z) * (1 + a.myo_wave[0] * np.cos(phi - a.myo_wave[1]))
        cavity = r < cavity_r
        epi = r < cavity_r + wall
        rv = np.zeros_like(cavity)
        rv_wall = np.zeros_like(cavity)
        if t < a.rv_reach:
            fade = (1 - (t / a.rv_reach) ** 2) ** 0.5 * rv_shrink
            ra_f, rb_f, v_shift, offset = a.rv_shape
            epi_r = a.lv_radius * size_z + a.myo
            rcx, rcy = epi_r * offset, v_shift
            ra, rb = max(epi_r * ra_f * fade, 1.0), max(epi_r * rb_f * (0.5 + 0.5 * fade), 1.0)
            inside = ((u - rcx) / ra) ** 2 + ((v - rcy) / rb) ** 2
            rv = (inside < 1.0) & ~(r < cavity_r + wall + 0.8)
            rv_wall = (inside < (1.0 + 2.2 / min(ra, rb)) ** 2) & ~rv & ~epi
        img[(r < cavity_r + wall + 3) | rv_wall] = t_["soft"]  # pericardial tissue
        img[rv_wall] = t_["myo"]
        epi_now = cavity_r + a.myo * thicken
        for ang, dist, br in a.blobs:  # placed outside the heart, drawn before it (never over it)
            bxc = cx + dist * (epi_now + br) * np.cos(a.rv_angle + np.pi / 2 + ang)
            byc = cy + dist * (epi_now + br) * np.sin(a.rv_angle + np.pi / 2 + ang)
            img[_ellipse(xx, yy, bxc, byc, br, br * 0.8) & body] = t_["fat"]
        img[rv] = t_["rv_blood"]
        img[epi] = t_["myo"]
        img[cavity] = t_["blood"]
        papillary = np.zeros_like(cavity)
        for ang, pr in a.papillary:
            px = cx + (cavity_r - pr - 0.5) * np.cos(a.rv_angle + ang)
            py = cy + (cavity_r - pr - 0.5) * np.sin(a.rv_angle + ang)
            papillary |= _ellipse(xx, yy, px, py, pr, pr) & cavity
        img[papillary] = t_["myo"]
        lab = np.zeros((size, size), np.uint8)
        lab[rv] = 1
        lab[epi & ~cavity] = 2
        lab[cavity] = 3  # papillary muscles belong to the LV cavity label, as in ACDC
        image[z] = gaussian_filter(img, rng.uniform(0.6, 1.0)) * rng.uniform(0.95, 1.05)
        label[z] = lab

    # smooth multiplicative bias field across the stack
    gx, gy = (xx - size / 2) / size * 2, (yy - size / 2) / size * 2
    coef = rng.normal(0, 0.25, size=5)
    bias = np.exp(coef[0] * gx + coef[1] * gy + coef[2] * gx * gy + coef[3] * gx ** 2 + coef[4] * gy ** 2)
    zbias = 1 + rng.normal(0, 0.04) * np.linspace(-1, 1, nz)
    image = image * bias[None] * zbias[:, None, None]
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels
    sigma = rng.uniform(0.02, 0.09)
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    return np.round(image * a.scale).astype(np.int16), label


def generate_patient(index: int) -> dict:
    """Patient ``index`` (1-based): anatomy, ED/ES frame numbers and the two frames."""
    rng = np.random.default_rng([PHANTOM_VERSION, index])
    anatomy = _Anatomy(rng)
    n_frames = int(rng.integers(25, 36))
    es_frame = int(rng.integers(8, 16))
    return {
        "spacing": anatomy.spacing,
        "info": {"ED": 1, "ES": es_frame, "Group": "PHANTOM", "NbFrame": n_frames,
                 "Height": round(float(rng.uniform(150, 195)), 1),
                 "Weight": round(float(rng.uniform(50, 110)), 1)},
        "ED": _draw_frame(anatomy, rng, es=False),
        "ES": _draw_frame(anatomy, rng, es=True),
    }


def write_phantom(folder: Path, n_patients: int | None = None) -> None:
    """Write the phantom (``N_PATIENTS`` patients) in ACDC's raw layout under ``folder/training``."""
    for index in range(1, (n_patients or N_PATIENTS) + 1):
        patient = f"patient{index:03d}"
        pdir = folder / "training" / patient
        pdir.mkdir(parents=True)
        p = generate_patient(index)
        for phase in ("ED", "ES"):
            image, label = p[phase]
            stem = f"{patient}_frame{p['info'][phase]:02d}"
            write_nifti(pdir / f"{stem}.nii.gz", image, p["spacing"], np.int16)
            write_nifti(pdir / f"{stem}_gt.nii.gz", label, p["spacing"], np.uint8)
        (pdir / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in p["info"].items()))
    (folder / "README.txt").write_text(
        f"Synthetic ACDC-like phantom generated by ssl-bench (phantom version {PHANTOM_VERSION}).\n"
        f"Not real patient data; see ssl_bench/datasets/phantom.py.\n")
    (folder / MARKER).write_text(f"{PHANTOM_VERSION}\n")


def ensure_phantom(root: Path) -> Path:
    """The phantom folder under ``root`` (or ``root`` itself), generated atomically if missing."""
    return ensure_generated(root, PHANTOM_FOLDER, MARKER, PHANTOM_VERSION, write_phantom,
                            kind="phantom")


# -- the dataset -------------------------------------------------------------------------------
@register_dataset("acdc-phantom", description="Synthetic ACDC-like cardiac MRI (30 patients, generated on first use)",
                  paper="synthetic; stands in for ACDC (Bernard et al., IEEE TMI 2018)")
class ACDCPhantom(ACDC):
    """Synthetic ACDC-like cardiac cine-MRI in ACDC's raw layout (RV, Myo, LV)."""

    description = "Synthetic ACDC-like short-axis cardiac MRI: 30 patients x ED/ES, 112 px, RV/Myo/LV"
    paper = "synthetic (ssl-bench); stands in for ACDC, Bernard et al., IEEE TMI 2018"
    reference_name = "acdc"
    default_image_size = IMAGE_SIZE
    #: CPU preset (below any --set): small slices and the paper's batch of 6 + 6, so that a run
    #: of every method fits in minutes on a laptop; the field's 12 + 12 at 256 px is for real data
    train_defaults = {"iterations": "600", "image_size": "64", "labeled_bs": "6", "unlabeled_bs": "6",
                      "val_every": "50"}
    default_setting = "labeled"
    default_split = "random"

    def __init__(self, root: Path | str):
        super().__init__(root, layout="raw")

    def _data_folder(self) -> Path:
        return ensure_phantom(self.root)

    def _field_subsets(self) -> dict[str, str]:
        return {}  # no fixed partition: every patient is free (see make_split)

    def preprocessing_key(self) -> str:
        return f"{super().preprocessing_key()}; phantom v{PHANTOM_VERSION}"

    def make_split(self, labeled: int | None = None, ratio: float | None = None,
                   split: str = "random", split_seed: int = 0, val_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> Split:
        """6 test / 4 val / 20 train patients shuffled by ``split_seed``; the fractions do not
        apply (the partition sizes are fixed so that settings compare across seeds)."""
        split = split or self.default_split
        if split != "random":
            raise ValueError(f"acdc-phantom has no {split!r} split: the field's lists name real ACDC "
                             f"patients; use split='random' (with --split-seed)")
        refs = self.cases()
        patients = sorted({r.patient_id for r in refs})
        if len(patients) < N_TEST + N_VAL + 1:
            raise DataError(f"{self.location[1]}: the phantom has {len(patients)} patients, fewer than "
                            f"{N_TEST + N_VAL + 1}; delete the folder so that it is generated again")
        random.Random(split_seed).shuffle(patients)
        test, val, train = patients[:N_TEST], patients[N_TEST:N_TEST + N_VAL], patients[N_TEST + N_VAL:]
        lab_p = train[:select_count(len(train), labeled, ratio)]
        by_patient: dict[str, list[str]] = {}
        for r in refs:
            by_patient.setdefault(r.patient_id, []).append(r.case_id)
        ids = lambda ps: [c for p in sorted(ps) for c in sorted(by_patient[p])]  # noqa: E731
        return Split(
            labeled=ids(lab_p), unlabeled=ids(set(train) - set(lab_p)), val=ids(val), test=ids(test),
            meta={"dataset": getattr(self, "registry_name", type(self).__name__), "split": split,
                  "split_seed": split_seed, "labeled_patients": lab_p, "labeled": labeled,
                  "ratio": ratio, "protocol": f"phantom v{PHANTOM_VERSION}: {N_TEST} test / {N_VAL} val / "
                  f"{len(train)} train patients drawn with split_seed", "layout": "raw"},
        )
