"""``acdc-phantom``: a synthetic stand-in for ACDC, written in ACDC's raw layout.

It exists so that the whole pipeline (NIfTI reading, Info.cfg, ED/ES renaming, normalisation,
splits, training, evaluation) can run and be tested without the real data, on a CPU, in
minutes. It is not a substitute for ACDC results: numbers on it only show that a method runs
and learns. The real dataset is Bernard et al., IEEE TMI 2018 (see ``acdc.py``).

What is drawn (per patient, deterministically from ``(PHANTOM_VERSION, patient index)``; the
drawing is in ``phantom_heart.py``): short-axis cine-MRI-like stacks of 8-12 slices of 112 x 112
px, spacing (5-10, 0.6-1.6, 0.6-1.6) mm; a bright LV blood pool with dark papillary muscles
(labelled LV, as in ACDC), a dark myocardial ring, a bright RV crescent beside it with an
unlabelled dark free wall; along the stack the heart shrinks toward the apex, drifts, and the RV
vanishes in the apical slices; the ES frame has smaller cavities and a thicker myocardium. Around
the heart: body outline with a fat rim, lungs, liver, spine, aorta. Then partial-volume blur, a
smooth multiplicative bias field, Rician noise and a per-patient intensity scale (int16 on disk).

Version 3 makes the patients a population that 3 labeled patients do not cover, as on real
ACDC (UNet-L 51.7 vs UNet-F 91.5 Dice in You et al., IPMI 2023): ACDC's five diagnostic groups
(6 patients each, written as ``Group`` in ``Info.cfg``), heart size on screen, position and
orientation, RV shape, tissue contrasts (surroundings darker or brighter than the myocardium,
fat up to 2.5 times as bright as blood), gamma, blur, bias and noise, and from none to about ten
unlabelled look-alikes of the LV and RV per patient; every image stays readable. At the CPU
preset UNet-F - UNet-L measured 25.4 Dice points (74.9 vs 49.5, seeds 0-2, split seed 0;
``results/phantom/acdc-phantom_v3_gap.md``); on version 2 it was 10 (500 iterations) to 11
(1500 iterations).

Split: ``split="random"`` (the default; the field's lists name real ACDC patients and do not
apply) shuffles the 30 patients with ``split_seed`` into 6 test, 4 validation and 20 training
patients; the labeled patients are the first N of the shuffled training patients. For
``split_seed=0`` the partition is (checked by ``tests/test_phantom_acdc.py``): test patients
001, 004, 006, 011, 018, 019; validation 008, 015, 027, 030; 3 labeled: 021, 026, 022.

Generation happens on first use into ``<data root>/acdc-phantom/`` (a temporary sibling folder
renamed into place, so an interrupted generation never leaves half a dataset); an existing
folder is reused as is, and one of another version (a v2 folder) is refused with a message that
names it and asks to delete it, after which it is generated again.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ssl_bench.registry import register_dataset

from .acdc import ACDC
from .base import DataError, Split, select_count
from .generate import ensure_generated
from .io import write_nifti
from .phantom_heart import IMAGE_SIZE, Anatomy, Appearance, draw_frame, patient_group

PHANTOM_VERSION = 3
PHANTOM_FOLDER = "acdc-phantom"
MARKER = ".ssl_bench_phantom"
N_PATIENTS = 30
N_VAL, N_TEST = 4, 6


def generate_patient(index: int) -> dict:
    """Patient ``index`` (1-based): anatomy, ED/ES frame numbers and the two frames.

    Each aspect has its own generator seeded by ``(PHANTOM_VERSION, index, aspect)``, so that a
    change to how one aspect is drawn does not reshuffle the others."""
    rng = {aspect: np.random.default_rng([PHANTOM_VERSION, index, k])
           for k, aspect in enumerate(("anatomy", "lookalikes", "appearance", "acquisition", "info"))}
    anatomy = Anatomy(rng["anatomy"], patient_group(index, PHANTOM_VERSION), rng["lookalikes"])
    look = Appearance(rng["appearance"])
    info = rng["info"]
    return {
        "spacing": anatomy.spacing,
        "info": {"ED": 1, "ES": int(info.integers(8, 16)), "Group": anatomy.group,
                 "NbFrame": int(info.integers(25, 36)), "Height": round(float(info.uniform(150, 195)), 1),
                 "Weight": round(float(info.uniform(50, 110)), 1)},
        "ED": draw_frame(anatomy, look, rng["acquisition"], es=False),
        "ES": draw_frame(anatomy, look, rng["acquisition"], es=True),
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

    def protocol_gaps(self) -> list[str]:
        return []  # no fixed partition to be incomplete for (see make_split)

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
