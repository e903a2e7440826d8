"""LA: the 2018 Atrial Segmentation Challenge (LGE-MRI, left atrium cavity), the field's 3D benchmark.

Xiong et al., "A global benchmark of algorithms for segmenting the left atrium from late
gadolinium-enhanced cardiac magnetic resonance imaging", MedIA 67, 2021. Semi-supervised papers
use the 100 training scans as UA-MT preprocessed them (Yu et al., MICCAI 2019; yulequan/UA-MT,
``code/dataloaders/la_heart_processing.py``) with its fixed 80 / 20 lists, byte-identical in
UA-MT, MC-Net, SS-Net and BCP.

Layouts found under the data root (checked in this order):

* UA-MT's ``data/`` folder itself: ``2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` with
  ``train.list`` (80 ids) and ``test.list`` (20 ids) beside it;
* a folder holding that one as ``data/`` (the UA-MT repository), ``LA/`` or ``data/LA/`` (MC-Net,
  SS-Net and BCP read ``data/LA/2018LA_Seg_Training Set/...`` with the lists in ``data/LA/``).

Each ``mri_norm2.h5`` holds ``image`` (float32, z-scored over the whole scan) and ``label`` (uint8,
1 = left atrium), arrays (x, y, z) with z = 88 slices; they are returned as (Z, Y, X), spacing
0.625 mm isotropic (the challenge's grid, which the preprocessing keeps). **The files are cropped
around the ground-truth bounding box** (x and y, plus a random 10-20 voxel margin), test scans
included: the task is easier than segmenting the raw scan, and every published LA number shares
this. Nothing is renormalised here.

Splits. ``field`` (default): the labeled scans are the first N lines of ``train.list``
(``--labeled 4|8|16``, or ``--ratio`` of the 80), the other training scans unlabeled, the 20 of
``test.list`` the test set. ``random``: N labeled scans drawn with ``--split-seed``. In both, a
validation split of 10 % of the training scans (8 of 80) is carved out of the 80, drawn once with a fixed seed
from lines 17-80 of ``train.list`` (never one of the field's labeled sets of 4, 8 or 16) and
persisted with every run's split: the ``clean`` protocol selects checkpoints on it; under
``--set validation=test`` or ``validation=none`` (the field's LA recipes) those scans return to the
unlabeled pool, as in the published setting that has no validation set.

``la-small`` (the CPU preset): the same files downsampled by 2 on every axis (trilinear image,
labels thresholded at 0.5 after trilinear interpolation of the mask), spacing 1.25 mm, with a
training preset of small patches and a short budget (``train_defaults``); its numbers are not
comparable to published LA rows.
"""
from __future__ import annotations

import random
from functools import cached_property
from pathlib import Path

import numpy as np

from ssl_bench.registry import register_dataset

from .base import Case, CaseRef, DataError, Dataset, Split, raise_first_problem, select_count
from .io import check_pair, read_h5

SCAN_DIR = "2018LA_Seg_Training Set"
FILE = "mri_norm2.h5"
ROOT_CANDIDATES = (".", "data", "LA", "data/LA")
SPACING_MM = 0.625
#: the largest labeled setting of the field; the validation split is carved from lines after it
FIELD_LABELED_MAX = 16
VAL_FRACTION = 0.1  # of train.list: 8 of the field's 80 scans
VAL_SEED = 2018


@register_dataset("la", description="Left Atrium 2018 (UA-MT's h5 files, 80/20 lists; 3D, V-Net)",
                  paper="Xiong et al., MedIA 2021; protocol of Yu et al., MICCAI 2019")
class LeftAtrium(Dataset):
    class_names = ["background", "LA"]
    spatial_dims = 3
    default_setting = "labeled"
    default_split = "field"
    #: the field's patch and sliding-window strides, (x, y, z) as the papers write them
    default_patch_size = (112, 112, 80)
    default_stride = (18, 18, 4)
    default_image_size = 112  # 2D tools (``data info --size``) only; 3D runs use the patch
    downsample = 1
    train_defaults = {"backbone": "vnet", "augment.weak": "rot90,flip", "labeled_bs": "2", "unlabeled_bs": "2",
                      "eval_batch_size": "4"}

    # -- where the files are ----------------------------------------------------------------
    @cached_property
    def base(self) -> Path:
        for cand in ROOT_CANDIDATES:
            folder = (self.root / cand).resolve()
            if (folder / SCAN_DIR).is_dir() or (folder / "train.list").is_file():
                return folder
        raise DataError(f"no Left Atrium data under {self.root}: expected '{SCAN_DIR}/<ID>/{FILE}' with train.list "
                        f"and test.list beside it (UA-MT's data/ folder; also found under data/, LA/ or data/LA/). "
                        f"Get it from the UA-MT repository (github.com/yulequan/UA-MT, folder data/)")

    def _list(self, name: str) -> list[str]:
        path = self.base / f"{name}.list"
        if not path.is_file():
            raise DataError(f"{path} is missing: the field's {name}.list ({80 if name == 'train' else 20} scan ids, "
                            f"one a line) must sit beside '{SCAN_DIR}'; copy it from UA-MT's data/ folder")
        ids = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:  # some copies hold paths: keep the scan id
                ids.append(Path(line.replace(f"/{FILE}", "")).name)
        if len(set(ids)) != len(ids):
            raise DataError(f"{path} names a scan twice; restore the field's list")
        return ids

    def path(self, case_id: str) -> Path:
        return self.base / SCAN_DIR / case_id / FILE

    @cached_property
    def lists(self) -> dict[str, list[str]]:
        lists = {"train": self._list("train"), "test": self._list("test")}
        both = sorted(set(lists["train"]) & set(lists["test"]))
        if both:
            raise DataError(f"{self.base}: train.list and test.list share scans {', '.join(both)}; restore the field's lists")
        return lists

    def scan(self) -> tuple[list[CaseRef], list[DataError]]:
        try:
            lists = self.lists
        except DataError as exc:
            return [], [exc]
        problems = []
        for subset, ids in lists.items():
            missing = [i for i in ids if not self.path(i).is_file()]
            if missing:
                problems.append(DataError(
                    f"{self.base / SCAN_DIR}: {len(missing)} scan(s) of {subset}.list are missing "
                    f"(<ID>/{FILE}): {', '.join(missing)}; copy the complete folder from UA-MT's data/"))
        refs = [CaseRef(i, i, subset) for subset, ids in lists.items() for i in ids if self.path(i).is_file()]
        return refs, problems

    def cases(self) -> list[CaseRef]:
        refs, problems = self.scan()
        raise_first_problem(problems)
        return refs

    # -- loading -----------------------------------------------------------------------------
    def load_case(self, case_id: str) -> Case:
        path = self.path(case_id)
        if not path.is_file():
            raise DataError(f"{path} is missing (case {case_id!r}); copy it from UA-MT's data/ folder")
        arrays = read_h5(path, ["image", "label"])
        image, label = arrays["image"], arrays["label"]
        if image.ndim != 3:
            raise DataError(f"{path}: image of shape {image.shape}, expected a 3D (x, y, z) volume; replace this file")
        if not np.isfinite(image).all():
            raise DataError(f"{path}: the image holds NaN or infinite values; replace this file")
        check_pair(image, label, path, path, self.num_classes)
        if not label.any():
            raise DataError(f"{path}: the label is empty; replace this file")
        image = np.ascontiguousarray(image.transpose(2, 1, 0), np.float32)  # (x, y, z) -> (z, y, x)
        label = np.ascontiguousarray(label.transpose(2, 1, 0), np.uint8)
        spacing = (SPACING_MM,) * 3
        if self.downsample > 1:
            image, label = downsample(image, label, self.downsample)
            spacing = tuple(SPACING_MM * self.downsample for _ in range(3))
        return Case(case_id, case_id, image, label, spacing,
                    {"layout": "ua-mt h5", "image_path": str(path), "cropped_around_label": True,
                     "downsample": self.downsample})

    def load_slices(self, case_ids: list[str], size):
        """Whole volumes for 3D training (``ssl_bench.volumetric.VolumeSet``); ``size`` is the patch."""
        from ssl_bench.volumetric import VolumeSet

        cases = [self.load_case(c) for c in case_ids]
        return VolumeSet([c.image for c in cases], [c.label for c in cases], tuple(size))

    def preprocessing_key(self) -> str:
        return f"la: UA-MT mri_norm2.h5 as stored, (x, y, z) -> (z, y, x), downsample {self.downsample} (v1)"

    # -- splits ------------------------------------------------------------------------------
    def validation_scans(self) -> list[str]:
        """The carved validation split: ``VAL_FRACTION`` of ``train.list`` (8 of 80) drawn with a fixed
        seed from its lines after the first ``FIELD_LABELED_MAX`` (module docstring)."""
        train = self.lists["train"]
        pool = sorted(train[FIELD_LABELED_MAX:])
        random.Random(VAL_SEED).shuffle(pool)
        return sorted(pool[:max(1, round(VAL_FRACTION * len(train)))])

    def make_split(self, labeled: int | None = None, ratio: float | None = None, split: str = "field",
                   split_seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> Split:
        split = split or self.default_split
        if split not in ("field", "random"):
            raise ValueError(f"unknown LA split {split!r}; use 'field' (the first N lines of train.list) or "
                             f"'random' (N labeled scans drawn with --split-seed)")
        self.cases()  # every listed scan present, or one error naming the missing ones
        train, test = self.lists["train"], self.lists["test"]
        val = self.validation_scans()
        n_lab = select_count(len(train), labeled, ratio)
        if split == "field":
            lab = train[:n_lab]
            if set(lab) & set(val):
                raise ValueError(f"--labeled {n_lab}: the field's first {n_lab} scans overlap the carved validation "
                                 f"split (drawn after line {FIELD_LABELED_MAX}); use at most {FIELD_LABELED_MAX} "
                                 "or --split random")
        else:
            order = sorted(set(train) - set(val))
            random.Random(split_seed).shuffle(order)
            if n_lab > len(order):
                raise ValueError(f"--labeled {n_lab}: only {len(order)} training scans lie outside the validation split")
            lab = sorted(order[:n_lab])
        taken = set(lab) | set(val)
        return Split(
            labeled=list(lab), unlabeled=[c for c in train if c not in taken], val=list(val), test=list(test),
            meta={"dataset": getattr(self, "registry_name", type(self).__name__), "split": split,
                  "split_seed": split_seed, "labeled_patients": list(lab), "labeled": labeled, "ratio": ratio,
                  "val_carved_from_train": True,
                  "protocol": f"UA-MT lists: 80 train / 20 test; validation = {len(val)} of the {len(train)} (seed {VAL_SEED})"},
        )


def downsample(image: np.ndarray, label: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(Z, Y, X) image and binary label at 1 / ``factor`` of each side (trilinear; label > 0.5)."""
    import torch
    import torch.nn.functional as F

    size = [max(1, s // factor) for s in image.shape]
    img = F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="trilinear", align_corners=False)
    lab = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=size, mode="trilinear",
                        align_corners=False)
    return img[0, 0].numpy().astype(np.float32), (lab[0, 0].numpy() > 0.5).astype(np.uint8)


@register_dataset("la-small", description="Left Atrium downsampled x2 with a CPU training preset (not the field's scale)",
                  paper="Xiong et al., MedIA 2021")
class LeftAtriumSmall(LeftAtrium):
    """The CPU preset of ``la``: volumes downsampled by 2, small patches, a short budget."""

    downsample = 2
    default_patch_size = (64, 64, 32)
    default_stride = (32, 32, 16)  # half the patch: 8 windows per scan on the CPU
    default_image_size = 64
    # sized on the 2-core development machine (README "The 3D track"): one training step takes about
    # 2.0 (V-Net-L/F), 2.5 (MT) and 5.1 (UA-MT) CPU-seconds at 64 x 64 x 32, so those four rows at 3
    # seeds take about 5 CPU-hours with testing (2.5-3 hours on 2 free cores) at 450 iterations
    train_defaults = {**LeftAtrium.train_defaults, "iterations": "450", "val_every": "150",
                      "checkpoint_every": "50", "log_every": "10"}
