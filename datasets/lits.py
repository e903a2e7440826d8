"""LiTS: the Liver Tumor Segmentation Benchmark (contrast-enhanced abdominal CT; liver, tumour).

Bilic et al., "The Liver Tumor Segmentation Benchmark (LiTS)", Medical Image Analysis 84, 2023
(arXiv:1901.04056, 2019). The ACTION paper (You et al., IPMI 2023) follows H-DenseUNet
(Li et al., IEEE TMI 2018): the 131 training volumes of the challenge, the first 100 for
training and the last 31 for testing, slices resized to 256 x 256.

Layouts, found automatically under the data root (searched up to 4 folders deep, so the root
may be the LiTS folder or a parent of it; hidden folders and ``lits-phantom/`` are skipped):

``lits``  the challenge release: ``volume-N.nii`` and ``segmentation-N.nii`` (``.nii.gz`` too),
          possibly in subfolders such as ``Training Batch 1/`` and ``Training Batch 2/``.
``msd``   the Medical Segmentation Decathlon's ``Task03_Liver``: ``imagesTr/liver_N.nii.gz`` and
          ``labelsTr/liver_N.nii.gz`` (the same 131 volumes, with some voxel spacings corrected
          by the MSD organisers; ``liver_N`` is taken to be LiTS ``volume-N``, so the protocol
          numbers apply unchanged; ``imagesTs/``, which has no labels, is ignored).

One registered name, ``lits``, reads both: a root holding both layouts is an error (point the
data root at one of them). Case ids are ``lits-NNN`` in either layout.
Labels: 0 background, 1 liver, 2 tumour.
"""
from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ssl_bench.registry import register_dataset

from .base import Case, CaseRef, DataError, Dataset, Split, raise_first_problem, select_count
from .io import check_pair, read_nifti
from .volume import check_ct_hu, normalise_ct, reorient_to_ras

LITS_CLASS_NAMES = ["background", "liver", "tumour"]
#: H-DenseUNet's window (Li et al. 2018, ref. [13] of the ACTION paper, whose LiTS protocol
#: ACTION follows): liver (~60 HU), tumours (hypo/hyperdense) and nearby fat/vessels all fall
#: inside it, air and bone saturate.
HU_WINDOW = (-200.0, 250.0)
#: how far (in mm) beyond the liver's first/last slice training slices are kept
TRAIN_Z_MARGIN_MM = 20.0
MAX_SEARCH_DEPTH = 4
SKIP_FOLDERS = {"lits-phantom"}

_LITS_IMAGE = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_LITS_LABEL = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")
_MSD_FILE = re.compile(r"^liver_(\d+)\.nii(\.gz)?$")


@dataclass
class LitsLayout:
    """What was found under the data root: complete pairs and every problem."""

    layout: str  # "lits" or "msd"
    folder: Path
    pairs: dict[int, tuple[Path, Path]] = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)


def _walk(top: Path, max_depth: int):
    """(folder, file names) under ``top``, skipping hidden and phantom folders."""
    top_depth = len(top.parts)
    for folder, dirs, files in os.walk(top):
        depth = len(Path(folder).parts) - top_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_FOLDERS
                         and depth < max_depth)
        # "._name" files are macOS resource forks shipped inside the MSD tar archives
        yield Path(folder), sorted(f for f in files if not f.startswith("."))


def find_lits_files(top: Path, numbers: range) -> LitsLayout:
    """Index the LiTS or MSD files under ``top``; ``numbers`` are the volume numbers the protocol knows."""
    if not top.is_dir():
        raise DataError(f"{top}: the data root does not exist; pass the folder holding the LiTS "
                        f"volumes (or Task03_Liver) as --data-root")
    found: dict[str, dict[str, dict[int, list[Path]]]] = {
        "lits": {"image": {}, "label": {}}, "msd": {"image": {}, "label": {}}}
    msd_files: list[tuple[str, int, Path]] = []
    for folder, names in _walk(top, MAX_SEARCH_DEPTH):
        for name in names:
            if m := _LITS_IMAGE.match(name):
                found["lits"]["image"].setdefault(int(m.group(1)), []).append(folder / name)
            elif m := _LITS_LABEL.match(name):
                found["lits"]["label"].setdefault(int(m.group(1)), []).append(folder / name)
            elif (m := _MSD_FILE.match(name)) and folder.name in ("imagesTr", "labelsTr"):
                msd_files.append(("image" if folder.name == "imagesTr" else "label", int(m.group(1)), folder / name))
    # an MSD task folder has imagesTr/liver_N.nii.gz; an nnU-Net conversion of it (imagesTr/liver_N_0000)
    # shares only the label names, and is not this layout
    msd_tasks = {path.parent.parent for kind, _, path in msd_files if kind == "image"}
    for kind, n, path in msd_files:
        if path.parent.parent in msd_tasks:
            found["msd"][kind].setdefault(n, []).append(path)
    present = [k for k in ("lits", "msd") if found[k]["image"] or found[k]["label"]]
    if not present:
        raise DataError(f"no LiTS data found under {top}: looked (up to {MAX_SEARCH_DEPTH} folders deep) "
                        f"for volume-N.nii[.gz] + segmentation-N.nii[.gz] (LiTS release) and for "
                        f"imagesTr/liver_N.nii.gz + labelsTr/liver_N.nii.gz (MSD Task03_Liver). "
                        f"Pass the folder holding them as --data-root")
    if len(present) == 2:
        some = [found[k]["image"][n][0] for k in present for n in sorted(found[k]["image"])[:1]]
        raise DataError(f"both the LiTS release and the MSD Task03_Liver layout are under {top} "
                        f"(e.g. {', '.join(map(str, some))}); they hold the same volumes, so pass the "
                        f"folder of one of them as --data-root")
    layout = present[0]
    images, labels = found[layout]["image"], found[layout]["label"]
    all_files = [p for d in (images, labels) for ps in d.values() for p in ps]
    folder = Path(os.path.commonpath([str(p.parent) for p in all_files]))
    out = LitsLayout(layout, folder)
    label_name = "segmentation-{n}.nii[.gz]" if layout == "lits" else "labelsTr/liver_{n}.nii.gz"
    image_name = "volume-{n}.nii[.gz]" if layout == "lits" else "imagesTr/liver_{n}.nii.gz"
    for n in sorted(set(images) | set(labels)):
        imgs, labs = images.get(n, []), labels.get(n, [])
        for kind, paths in (("image", imgs), ("label", labs)):
            if len(paths) > 1:
                out.problems.append(DataError(
                    f"{paths[0]}: volume {n} has {len(paths)} {kind} files ({', '.join(map(str, paths))}); "
                    f"keep exactly one"))
        if not labs:
            out.problems.append(DataError(
                f"{imgs[0]}: this image has no label ({label_name.format(n=n)} not found under {top}); "
                f"restore the label file or remove the image"))
        elif not imgs:
            out.problems.append(DataError(
                f"{labs[0]}: this label has no image ({image_name.format(n=n)} not found under {top}); "
                f"restore the image file or remove the label"))
        elif n not in numbers:
            out.problems.append(DataError(
                f"{imgs[0]}: volume number {n} is outside this protocol's volumes "
                f"{numbers.start}-{numbers.stop - 1}; remove it (the challenge's test volumes are named "
                f"test-volume-N and are not used)"))
        elif len(imgs) == 1 and len(labs) == 1:
            out.pairs[n] = (imgs[0], labs[0])
    return out


@register_dataset("lits", description="LiTS liver/tumour CT (131 volumes; LiTS release or MSD Task03_Liver)",
                  paper="Bilic et al., The Liver Tumor Segmentation Benchmark (LiTS), MedIA 2023")
class LiTS(Dataset):
    """LiTS abdominal CT: liver and liver tumours; volumes 0-99 train, 100-130 test.

    Preprocessing (``load_case``): the volume is reoriented to RAS+ (axis flips only), clipped
    to the HU window [-200, 250] (H-DenseUNet's window, see ``HU_WINDOW``) and min-max scaled per
    scan to [0, 1] (the paper normalises each 3D scan, following Chaitanya et al. 2020).

    Liver-free slices: a LiTS volume covers much more than the liver (often the whole trunk),
    so most axial slices are background only. As is common for LiTS, *training* uses the slices
    within the liver's z-range plus ``train_z_margin_mm`` (20 mm) above and below
    (``training_slice_mask``, applied by ``load_slices``); this uses the z-extent of the liver
    annotation of unlabeled training volumes too (a weak use of their labels, which the usual
    preprocessing also makes; set ``train_z_margin_mm = None`` in a subclass to keep all slices).
    A training volume without liver keeps all its slices. *Evaluation* (``load_case``) always
    uses the whole volume.

    Split (``make_split``): test = volumes 100-130; train = volumes 0-99. ``--ratio`` applies to
    the training volumes (5% of 100 = 5, 10% = 10); ``--labeled N`` takes N volumes. The labeled
    volumes are the first of the training volumes shuffled with ``split_seed`` (so the 5% set is
    inside the 10% set); the validation volumes (``val_fraction`` x 100 = 10) are the last of that
    order, i.e. carved out of the unlabeled remainder, and the same for every ratio.
    """

    description = "LiTS abdominal CT, 131 volumes; liver and tumour"
    paper = "Bilic et al., The Liver Tumor Segmentation Benchmark (LiTS), Medical Image Analysis 2023"
    reference_name = "lits"
    class_names = LITS_CLASS_NAMES
    default_image_size = 256
    default_setting = "ratio"
    default_split = "random"
    hu_window = HU_WINDOW
    train_z_margin_mm: float | None = TRAIN_Z_MARGIN_MM
    #: the protocol: volume numbers of the training and test parts
    train_numbers = range(0, 100)
    test_numbers = range(100, 131)

    # -- discovery ---------------------------------------------------------------------------
    def _data_folder(self) -> Path:
        """Where the files are looked for (the phantom overrides this)."""
        return self.root

    @property
    def all_numbers(self) -> range:
        return range(self.train_numbers.start, self.test_numbers.stop)

    @cached_property
    def layout(self) -> LitsLayout:
        return find_lits_files(self._data_folder(), self.all_numbers)

    def scan(self) -> tuple[list[CaseRef], list[DataError]]:
        try:
            layout = self.layout
        except DataError as exc:
            return [], [exc]
        refs = [CaseRef(self.case_id(n), self.case_id(n), "train" if n in self.train_numbers else "test")
                for n in sorted(layout.pairs)]
        return refs, list(layout.problems)

    def cases(self) -> list[CaseRef]:
        refs, problems = self.scan()
        raise_first_problem(problems)
        return refs

    def missing_numbers(self) -> list[int]:
        """Protocol volumes that are not present (the protocol wants all of them)."""
        return [n for n in self.all_numbers if n not in self.layout.pairs]

    @staticmethod
    def case_id(number: int) -> str:
        return f"lits-{number:03d}"

    def _pair(self, case_id: str) -> tuple[int, Path, Path]:
        m = re.fullmatch(r"lits-(\d+)", case_id)
        n = int(m.group(1)) if m else -1
        if n not in self.layout.pairs:
            raise DataError(f"case {case_id!r} is not in the {self.layout.layout} data at "
                            f"{self.layout.folder}; ids look like lits-000 ... lits-130")
        return (n, *self.layout.pairs[n])

    def source_files(self, case_id: str) -> list[Path]:
        _, image, label = self._pair(case_id)
        return [image, label]

    def preprocessing_key(self) -> str:
        return f"ct-window{self.hu_window[0]:g},{self.hu_window[1]:g};minmax;ras;v1"

    # -- loading -----------------------------------------------------------------------------
    def load_case(self, case_id: str) -> Case:
        n, image_path, label_path = self._pair(case_id)
        image, spacing, img_affine = read_nifti(image_path)
        label, _, lab_affine = read_nifti(label_path)
        check_pair(image, label, image_path, label_path, self.num_classes, (img_affine, lab_affine))
        check_ct_hu(image, image_path)
        (image, label), spacing = reorient_to_ras([image, label], img_affine, spacing)
        image = normalise_ct(image, *self.hu_window, path=image_path)
        return Case(case_id, case_id, image, label.astype(np.uint8), tuple(float(s) for s in spacing),
                    meta={"layout": self.layout.layout, "number": n, "image_path": str(image_path),
                          "label_path": str(label_path), "affine": img_affine.tolist()})

    def training_slice_mask(self, label: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray | None:
        """The liver's z-range plus ``train_z_margin_mm`` on both sides (see the class docstring)."""
        if self.train_z_margin_mm is None:
            return None
        has_liver = np.asarray(label).reshape(label.shape[0], -1).max(axis=1) > 0
        if not has_liver.any():
            return None
        z = np.flatnonzero(has_liver)
        margin = int(math.ceil(self.train_z_margin_mm / float(spacing[0])))
        keep = np.zeros(label.shape[0], dtype=bool)
        keep[max(0, z[0] - margin): z[-1] + margin + 1] = True
        return keep

    # -- splits ------------------------------------------------------------------------------
    def make_split(self, labeled: int | None = None, ratio: float | None = None,
                   split: str = "random", split_seed: int = 0, val_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> Split:
        """The protocol's train/test volumes; labeled and validation volumes drawn from train
        with ``split_seed`` (see the class docstring). ``test_fraction`` does not apply."""
        split = split or self.default_split
        if split != "random":
            raise ValueError(f"unknown {self.registry_name} split {split!r}; LiTS has one protocol "
                             f"(volumes {self.train_numbers.start}-{self.train_numbers.stop - 1} train, "
                             f"{self.test_numbers.start}-{self.test_numbers.stop - 1} test): use 'random'")
        refs = self.cases()
        train = sorted(r.case_id for r in refs if r.subset == "train")
        test = sorted(r.case_id for r in refs if r.subset == "test")
        where = f"the {self.layout.layout} data at {self.layout.folder}"
        if not train or not test:
            raise DataError(f"{where} has {len(train)} training and {len(test)} test volumes; the "
                            f"protocol needs volumes {self.train_numbers.start}-{self.train_numbers.stop - 1} "
                            f"(train) and {self.test_numbers.start}-{self.test_numbers.stop - 1} (test)")
        n_lab = select_count(len(train), labeled, ratio)
        order = list(train)
        random.Random(split_seed).shuffle(order)
        lab = order[:n_lab]
        n_val = min(max(1, int(round(val_fraction * len(train)))), len(train) - n_lab) if val_fraction > 0 else 0
        val = order[len(order) - n_val:] if n_val else []
        unlabeled = order[n_lab:len(order) - n_val]
        missing = self.missing_numbers()
        return Split(
            labeled=sorted(lab), unlabeled=sorted(unlabeled), val=sorted(val), test=test,
            meta={"dataset": getattr(self, "registry_name", type(self).__name__), "split": split,
                  "split_seed": split_seed, "labeled_patients": sorted(lab), "labeled": labeled,
                  "ratio": ratio, "layout": self.layout.layout,
                  "protocol": (f"volumes {self.train_numbers.start}-{self.train_numbers.stop - 1} train, "
                               f"{self.test_numbers.start}-{self.test_numbers.stop - 1} test; ratio of "
                               f"the training volumes; validation carved from the unlabeled rest"),
                  "missing_volumes": missing},
        )
