"""``nnunet``: any nnU-Net raw dataset folder (single channel, NIfTI), as a benchmark dataset.

Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18, 2021 (the raw-data format read here is nnU-Net v2's).

The data root is the ``DatasetXXX_Name`` folder itself, or a parent (or a parent's
``nnUNet_raw/``) holding exactly one ``Dataset*``/``Task*`` folder with a ``dataset.json``:

* ``dataset.json``: ``channel_names`` (or the older ``modality``) with exactly one channel,
  ``labels`` as ``{"background": 0, "liver": 1, ...}`` (or the older ``{"0": "background"}``;
  values must be 0..K-1, region-based labels and an ``ignore`` label are not supported), and
  ``file_ending`` (``.nii.gz`` or ``.nii``; default ``.nii.gz``). Class names are the label
  names ordered by value.
* ``imagesTr/<case>_0000<ending>`` with ``labelsTr/<case><ending>`` (MSD-style
  ``imagesTr/<case><ending>`` without the channel suffix is accepted too).
* test cases: ``imagesTs/`` + ``labelsTs/`` when ``labelsTs/`` exists (images without labels
  are ignored otherwise: they cannot be scored).

Protocol (``make_split``): with ``splits_final.json`` (in the dataset folder, or in
``$nnUNet_preprocessed/<dataset>/``), fold 0's ``train``/``val`` lists are the training and
validation cases (cases in neither are not used). Without it, validation is carved out of the
training cases with ``split_seed`` (``val_fraction``). The test set is ``labelsTs`` when present,
otherwise carved out of the training cases first (``test_fraction``, ``split_seed``). The
labeled cases are ``--labeled N`` / ``--ratio`` of the training cases, drawn with ``split_seed``.
Every case is its own patient (nnU-Net identifiers carry no patient grouping).

Preprocessing: RAS+ reorientation (axis flips only), then per-scan clipping to the 0.5 and 99.5
percentiles and min-max scaling to [0, 1] (a per-scan stand-in for nnU-Net's dataset-wide CT
clipping, so any modality works without a statistics pass).
"""
from __future__ import annotations

import json
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
from .volume import normalise_percentile, reorient_to_ras

SUPPORTED_ENDINGS = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


@dataclass
class NnUNetInfo:
    folder: Path
    class_names: list[str]
    channel: str
    file_ending: str


@dataclass
class NnUNetLayout:
    pairs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    subsets: dict[str, str] = field(default_factory=dict)  # case -> "train" / "test"
    problems: list[DataError] = field(default_factory=list)


def find_dataset_folder(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: the data root does not exist; pass the nnU-Net raw dataset folder "
                        f"(DatasetXXX_Name, holding dataset.json) as --data-root")
    if (root / "dataset.json").is_file():
        return root
    found = [p for base in (root, root / "nnUNet_raw") if base.is_dir()
             for p in sorted(base.iterdir())
             if p.is_dir() and p.name.startswith(("Dataset", "Task")) and (p / "dataset.json").is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{root}: no dataset.json here and no Dataset*/ folder with one (nor in "
                        f"{root / 'nnUNet_raw'}); pass the nnU-Net raw dataset folder as --data-root")
    raise DataError(f"{root} holds {len(found)} nnU-Net datasets ({', '.join(p.name for p in found)}); "
                    f"pass one of them as --data-root, e.g. {found[0]}")


def read_dataset_json(folder: Path) -> NnUNetInfo:
    path = folder / "dataset.json"
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc}); fix or restore this file") from exc
    channels = spec.get("channel_names", spec.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{path}: 'channel_names' is missing or empty; nnU-Net v2 needs e.g. "
                        f'"channel_names": {{"0": "CT"}}')
    if len(channels) != 1:
        raise DataError(f"{path}: {len(channels)} input channels ({channels}); ssl-bench supports "
                        f"single-channel datasets only, keep one channel (e.g. a new dataset with _0000 only)")
    labels = spec.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: 'labels' is missing or empty; nnU-Net v2 needs e.g. "
                        f'"labels": {{"background": 0, "liver": 1}}')
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        by_value = {v: str(k) for k, v in labels.items()}
    elif all(isinstance(v, str) and str(k).isdigit() for k, v in labels.items()):
        by_value = {int(k): v for k, v in labels.items()}  # the older {"0": "background"} form
    else:
        raise DataError(f"{path}: labels {labels} are not a name -> integer map (region-based labels "
                        f"are not supported); use one integer value per class")
    if "ignore" in by_value.values():
        raise DataError(f"{path}: an 'ignore' label is not supported; relabel those voxels")
    if sorted(by_value) != list(range(len(by_value))):
        raise DataError(f"{path}: label values {sorted(by_value)} must be 0..{len(by_value) - 1} "
                        f"without gaps (0 = background); renumber the labels")
    ending = spec.get("file_ending", ".nii.gz")
    if ending not in SUPPORTED_ENDINGS:
        raise DataError(f"{path}: file_ending {ending!r} is not supported; convert the images to "
                        f"NIfTI ({' or '.join(SUPPORTED_ENDINGS)})")
    return NnUNetInfo(folder, [by_value[v] for v in range(len(by_value))], str(next(iter(channels.values()))),
                      ending)


def _index_images(folder: Path, ending: str) -> tuple[dict[str, Path], list[DataError]]:
    """case -> channel-0 image in ``folder``; other channels are problems."""
    images: dict[str, Path] = {}
    problems: list[DataError] = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.name.endswith(ending) or not f.is_file():
            continue
        stem = f.name[: -len(ending)]
        m = _CHANNEL.match(stem)
        case, channel = (m.group(1), m.group(2)) if m else (stem, None)
        if channel not in (None, "0000"):
            problems.append(DataError(f"{f}: channel {channel} of case {case}; ssl-bench supports "
                                      f"single-channel datasets only (_0000)"))
            continue
        if case in images:
            problems.append(DataError(f"{f}: case {case} has two images ({images[case].name}, {f.name}); "
                                      f"keep one"))
            continue
        images[case] = f
    return images, problems


def index_cases(info: NnUNetInfo) -> NnUNetLayout:
    out = NnUNetLayout()
    for img_dir, lab_dir, subset in (("imagesTr", "labelsTr", "train"), ("imagesTs", "labelsTs", "test")):
        images_dir, labels_dir = info.folder / img_dir, info.folder / lab_dir
        if subset == "train" and not images_dir.is_dir():
            out.problems.append(DataError(f"{images_dir}: folder missing; an nnU-Net raw dataset has "
                                          f"imagesTr/ and labelsTr/"))
            continue
        if subset == "test" and not (images_dir.is_dir() and labels_dir.is_dir()):
            continue  # no labelled test set
        images, problems = _index_images(images_dir, info.file_ending)
        out.problems += problems
        labels = {f.name[: -len(info.file_ending)]: f for f in sorted(labels_dir.glob(f"*{info.file_ending}"))
                  if not f.name.startswith(".")} if labels_dir.is_dir() else {}
        for case in sorted(set(images) | set(labels)):
            if case not in labels:
                out.problems.append(DataError(
                    f"{images[case]}: this image has no label ({labels_dir / (case + info.file_ending)} "
                    f"not found); add the label or remove the image"))
            elif case not in images:
                out.problems.append(DataError(
                    f"{labels[case]}: this label has no image ({images_dir / (case + '_0000' + info.file_ending)} "
                    f"not found); add the image or remove the label"))
            elif case in out.pairs:
                out.problems.append(DataError(f"{images[case]}: case {case} is in both imagesTr and "
                                              f"imagesTs; keep it in one"))
            else:
                out.pairs[case] = (images[case], labels[case])
                out.subsets[case] = subset
    return out


class _ClassNamesFromJson:
    """``class_names`` read from dataset.json on an instance; ``[]`` on the class (no folder yet),
    so that code listing registered datasets can still slice it."""

    def __get__(self, obj, objtype=None) -> list[str]:
        return [] if obj is None else obj.info.class_names


@register_dataset("nnunet", description="Any nnU-Net raw dataset folder (single channel, NIfTI)",
                  paper="Isensee et al., nnU-Net, Nature Methods 2021 (raw data format)")
class NnUNetRaw(Dataset):
    """An nnU-Net raw dataset (``DatasetXXX_Name``): classes from its dataset.json."""

    description = "nnU-Net raw dataset folder (dataset.json, imagesTr/labelsTr), single channel"
    paper = "Isensee et al., nnU-Net, Nature Methods 2021"
    reference_name = None
    default_image_size = 256
    default_setting = "labeled"
    default_split = "random"

    @cached_property
    def info(self) -> NnUNetInfo:
        return read_dataset_json(find_dataset_folder(self.root))

    class_names = _ClassNamesFromJson()  # type: ignore[assignment]

    @property
    def cache_name(self) -> str:
        return f"nnunet/{self.info.folder.name}"

    @cached_property
    def layout(self) -> NnUNetLayout:
        return index_cases(self.info)

    def splits_final_path(self) -> Path | None:
        candidates = [self.info.folder / "splits_final.json"]
        if os.environ.get("nnUNet_preprocessed"):
            candidates.append(Path(os.environ["nnUNet_preprocessed"]) / self.info.folder.name / "splits_final.json")
        return next((p for p in candidates if p.is_file()), None)

    def fold0(self) -> tuple[list[str], list[str]] | None:
        """Fold 0's (train, val) case lists from splits_final.json, or None."""
        path = self.splits_final_path()
        if path is None:
            return None
        try:
            folds = json.loads(path.read_text())
            train, val = list(folds[0]["train"]), list(folds[0]["val"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise DataError(f"{path}: not an nnU-Net splits file (a list of {{'train': [...], 'val': [...]}}); "
                            f"fix or delete it ({type(exc).__name__}: {exc})") from exc
        unknown = sorted(c for c in train + val if self.layout.subsets.get(c) != "train")
        if unknown:
            raise DataError(f"{path}: fold 0 names cases that are not in imagesTr/labelsTr: "
                            f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}; fix or delete it")
        return train, val

    # -- discovery ---------------------------------------------------------------------------
    def scan(self) -> tuple[list[CaseRef], list[DataError]]:
        try:
            layout = self.layout
            fold = self.fold0()
        except DataError as exc:
            return [], [exc]
        roles = dict(layout.subsets)
        if fold is not None:
            train, val = set(fold[0]), set(fold[1])
            roles = {c: ("test" if s == "test" else "train" if c in train else "val" if c in val else "")
                     for c, s in roles.items()}
        return [CaseRef(c, c, roles[c]) for c in sorted(layout.pairs)], list(layout.problems)

    def cases(self) -> list[CaseRef]:
        refs, problems = self.scan()
        raise_first_problem(problems)
        return refs

    def _pair(self, case_id: str) -> tuple[Path, Path]:
        if case_id not in self.layout.pairs:
            raise DataError(f"case {case_id!r} is not in {self.info.folder} (imagesTr/labelsTr"
                            f"{'/imagesTs/labelsTs' if 'test' in self.layout.subsets.values() else ''})")
        return self.layout.pairs[case_id]

    def source_files(self, case_id: str) -> list[Path]:
        return list(self._pair(case_id))

    def preprocessing_key(self) -> str:
        return f"percentile0.5-99.5;minmax;ras;classes={','.join(self.class_names)};v1"

    # -- loading -----------------------------------------------------------------------------
    def load_case(self, case_id: str) -> Case:
        image_path, label_path = self._pair(case_id)
        image, spacing, img_affine = read_nifti(image_path)
        label, _, lab_affine = read_nifti(label_path)
        check_pair(image, label, image_path, label_path, self.num_classes, (img_affine, lab_affine))
        (image, label), spacing = reorient_to_ras([image, label], img_affine, spacing)
        return Case(case_id, case_id, normalise_percentile(image), label.astype(np.uint8),
                    tuple(float(s) for s in spacing),
                    meta={"image_path": str(image_path), "label_path": str(label_path),
                          "affine": img_affine.tolist(), "channel": self.info.channel})

    # -- splits ------------------------------------------------------------------------------
    def make_split(self, labeled: int | None = None, ratio: float | None = None,
                   split: str = "random", split_seed: int = 0, val_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> Split:
        """See the module docstring (fold 0 of splits_final.json, labelsTs, or carved out)."""
        split = split or self.default_split
        if split != "random":
            raise ValueError(f"unknown nnunet split {split!r}; use 'random' (fold 0 of splits_final.json "
                             f"when present, otherwise drawn with --split-seed)")
        refs = self.cases()
        rng = random.Random(split_seed)
        test = sorted(r.case_id for r in refs if r.subset == "test")
        train = sorted(r.case_id for r in refs if r.subset == "train")
        val = sorted(r.case_id for r in refs if r.subset == "val")
        has_fold = self.fold0() is not None
        sources = {"test": "labelsTs" if test else "carved", "val": "splits_final fold 0" if has_fold else "carved"}
        if not test:
            order = list(train)
            rng.shuffle(order)
            n_test = max(1, int(round(test_fraction * len(order)))) if len(order) >= 3 else 0
            test, train = sorted(order[:n_test]), sorted(order[n_test:])
        if not has_fold:
            order = list(train)
            rng.shuffle(order)
            n_val = max(1, int(round(val_fraction * len(order)))) if len(order) >= 3 and val_fraction > 0 else 0
            val, train = sorted(order[:n_val]), sorted(order[n_val:])
        if not train:
            raise DataError(f"{self.info.folder}: no training case is left after the test/validation "
                            f"split ({len(refs)} cases); add cases")
        n_lab = select_count(len(train), labeled, ratio)
        order = list(train)
        rng.shuffle(order)
        lab = sorted(order[:n_lab])
        return Split(
            labeled=lab, unlabeled=sorted(set(train) - set(lab)), val=val, test=test,
            meta={"dataset": getattr(self, "registry_name", type(self).__name__), "split": split,
                  "split_seed": split_seed, "labeled_patients": lab, "labeled": labeled, "ratio": ratio,
                  "nnunet_dataset": self.info.folder.name, "test_source": sources["test"],
                  "val_source": sources["val"],
                  "unused": sorted(r.case_id for r in refs if r.subset == "")},
        )
