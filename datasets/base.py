"""The dataset interface: 3D cases in, persisted patient-level splits out.

A dataset knows where its files live under the data root, its class names (index 0 is the
background) and its protocol (the predefined train/test partition of the paper it follows).
It yields 3D cases with an intensity-normalised image, an integer label volume and the voxel
spacing. Training works on 2D slices resized to ``image_size`` (``load_slices``).
"""
from __future__ import annotations

import json
import os
import random
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


class DataError(RuntimeError):
    """Bad or missing input data; the message names the file and the fix."""


#: case ids that name one volume of a patient with several: ACDC's ``patientNNN_frameFF`` (ED and
#: ES of one patient; ``acdc`` and ``acdc-phantom``). Every other dataset here has one volume per
#: patient (LiTS ``lits-N``, nnU-Net identifiers, the LiTS phantom), so its case is its patient.
_MULTI_VOLUME_CASE = re.compile(r"^(patient\d{3})_frame\d{2}$")


def patient_of(case_id: str) -> str:
    """The patient of a case, from its id alone (per-case results name cases, not patients):
    ``patient011_frame01`` -> ``patient011``; any other id is its own patient. It agrees with
    ``CaseRef.patient_id`` of every dataset here (checked in ``tests/test_stats.py``); the
    statistics use it to count patients, not volumes (``ssl_bench.stats``)."""
    m = _MULTI_VOLUME_CASE.match(str(case_id))
    return m.group(1) if m else str(case_id)


@dataclass(frozen=True)
class CaseRef:
    case_id: str
    patient_id: str
    #: the protocol's predefined partition: "train", "val", "test", or "" (free)
    subset: str = "train"


@dataclass
class Case:
    case_id: str
    patient_id: str
    image: np.ndarray  # (Z, Y, X) float32, normalised
    label: np.ndarray  # (Z, Y, X) uint8 class indices
    spacing: tuple[float, float, float]  # (z, y, x) in mm
    #: provenance that does not fit the fields above (e.g. ACDC's raw frame number, source layout)
    meta: dict = field(default_factory=dict)


@dataclass
class SliceSet:
    """2D training slices of some cases, all at one size (what ``Dataset.load_slices`` returns).

    Slice ``i`` is slice ``slice_index[i]`` of volume ``case_ids[case_index[i]]`` (``case_ids`` as
    given to ``load_slices``); ``position[i]`` is its relative height ``z / (Z - 1)`` in [0, 1]
    in the full volume (0 for a one-slice volume).
    """

    images: np.ndarray  # (N, S, S) float32, normalised
    labels: np.ndarray  # (N, S, S) uint8 class indices
    case_index: np.ndarray  # (N,) int32
    position: np.ndarray  # (N,) float32
    slice_index: np.ndarray  # (N,) int32, z of the slice in its volume

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def empty(cls, size: int) -> "SliceSet":
        return cls(np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                   np.zeros((0,), np.int32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))


@dataclass
class Split:
    """Case ids per role. Saved as JSON next to the run (and under the data root)."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str]
    test: list[str]
    meta: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "Split":
        return cls(**json.loads(Path(path).read_text()))


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resize_slices(volume: np.ndarray, size: int, is_label: bool) -> np.ndarray:
    """(Z, Y, X) -> (Z, size, size); bilinear for images, nearest for labels."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(volume)).float()[:, None]
    if t.shape[-2:] == (size, size):
        out = t
    elif is_label:
        out = F.interpolate(t, size=(size, size), mode="nearest")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    out = out[:, 0].numpy()
    return out.astype(np.uint8) if is_label else out.astype(np.float32)


class Dataset:
    """Base class; subclasses are registered with ``@register_dataset(name)``."""

    description: str = ""
    paper: str = ""
    class_names: list[str] = ["background"]
    #: image size of training slices for this dataset unless the run overrides it
    default_image_size: int = 256
    #: the labeled-setting vocabulary of the paper's tables ("labeled" patients or "ratio")
    default_setting: str = "labeled"
    #: the ``split`` that ``make_split`` uses unless told otherwise ("random", or e.g. ACDC's "field")
    default_split: str = "random"
    #: training-config defaults for this dataset (``--set`` syntax), applied below the run's ``--set``
    train_defaults: dict = {}

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- to implement -----------------------------------------------------------------------
    def cases(self) -> list[CaseRef]:
        raise NotImplementedError

    def load_case(self, case_id: str) -> Case:
        raise NotImplementedError

    # -- splits -----------------------------------------------------------------------------
    def make_split(self, labeled: int | None = None, ratio: float | None = None,
                   split: str = "random", split_seed: int = 0, val_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> Split:
        """Patient-level split. Cases whose ``subset`` is fixed by the protocol keep it; free
        cases are shuffled with ``split_seed`` into val/test/train. The labeled subset is
        ``labeled`` training patients or ``ratio`` of them (at least one)."""
        refs = self.cases()
        patients: dict[str, list[CaseRef]] = {}
        for r in refs:
            patients.setdefault(r.patient_id, []).append(r)
        rng = random.Random(split_seed)
        fixed = {r.patient_id: r.subset for r in refs if r.subset}
        free = sorted(p for p in patients if p not in fixed)
        rng.shuffle(free)
        n_test = int(round(test_fraction * len(free))) if not any(s == "test" for s in fixed.values()) else 0
        n_val = int(round(val_fraction * len(free))) if not any(s == "val" for s in fixed.values()) else 0
        role = dict(fixed)
        for i, p in enumerate(free):
            role[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        train_p = sorted(p for p, s in role.items() if s == "train")
        if not any(s == "val" for s in role.values()) and len(train_p) > 2:
            # carve a validation set out of train (persisted with the split)
            cand = sorted(train_p)
            rng.shuffle(cand)
            n_val = max(1, int(round(val_fraction * len(cand))))
            for p in cand[:n_val]:
                role[p] = "val"
            train_p = sorted(p for p, s in role.items() if s == "train")
        n_lab = select_count(len(train_p), labeled, ratio)
        order = sorted(train_p)
        rng.shuffle(order)
        lab_p = sorted(order[:n_lab])
        ids = lambda ps: [r.case_id for p in ps for r in patients[p]]  # noqa: E731
        return Split(
            labeled=ids(lab_p),
            unlabeled=ids(sorted(set(train_p) - set(lab_p))),
            val=ids(sorted(p for p, s in role.items() if s == "val")),
            test=ids(sorted(p for p, s in role.items() if s == "test")),
            meta={"dataset": getattr(self, "registry_name", type(self).__name__), "split": split,
                  "split_seed": split_seed, "labeled_patients": lab_p,
                  "labeled": labeled, "ratio": ratio},
        )

    # -- slices -----------------------------------------------------------------------------
    def load_slices(self, case_ids: list[str], size: int) -> SliceSet:
        """The training slices of ``case_ids`` resized to ``size`` x ``size``.

        That is every axial slice, unless the dataset's ``training_slice_mask`` keeps fewer
        (LiTS keeps the liver's z-range plus a margin); evaluation reads whole volumes with
        ``load_case``. Slices come from the slice cache (``ssl_bench.datasets.cache``) when the
        dataset names its ``source_files``, otherwise they are computed in memory each time.
        """
        from .cache import SliceCache

        return SliceCache(self, size).gather(case_ids)

    # -- optional hooks (the slice cache, ``ssl-bench data prepare/info``) ---------------------
    def source_files(self, case_id: str) -> list[Path] | None:
        """The files ``load_case(case_id)`` reads; ``None`` disables the slice cache."""
        return None

    def preprocessing_key(self) -> str:
        """Describes the intensity/label preprocessing; a change invalidates cached slices."""
        return ""

    def training_slice_mask(self, label: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray | None:
        """Which axial slices ``load_slices`` keeps, given a volume's labels at slice size
        (Z, S, S) and its native spacing (z, y, x) mm: a (Z,) bool array, or ``None`` for all."""
        return None

    def protocol_gaps(self) -> list[str]:
        """What the dataset's fixed protocol split needs but the files lack, one line per subset
        (e.g. ``"train: 70 of 70 patients missing: patient001, ..."``); empty when complete or when
        the dataset has no fixed split. ``ssl-bench data prepare`` refuses a layout with gaps
        unless told ``--allow-partial``: a partly understood layout is never a silent subset."""
        return []

    def scan(self) -> tuple[list[CaseRef], list[DataError]]:
        """Every usable case and every problem of the layout (image without label, ...).

        ``cases()`` raises on the first problem; ``ssl-bench data prepare`` lists them all.
        """
        try:
            return self.cases(), []
        except DataError as exc:
            return [], [exc]

    @property
    def cache_name(self) -> str:
        """Folder name of this dataset in the slice cache."""
        return getattr(self, "registry_name", type(self).__name__)


def raise_first_problem(problems: list[DataError]) -> None:
    """Raise the first of ``problems`` (if any), saying how many more ``data prepare`` would list."""
    if problems:
        more = (f" (and {len(problems) - 1} more problem(s); `ssl-bench data prepare` lists them all)"
                if len(problems) > 1 else "")
        raise DataError(f"{problems[0]}{more}")


def select_count(n_train: int, labeled: int | None, ratio: float | None) -> int:
    if labeled is not None and ratio is not None:
        raise ValueError("give either --labeled or --ratio, not both")
    if labeled is not None:
        if not 1 <= labeled <= n_train:
            raise ValueError(f"--labeled {labeled} is out of range: this split has {n_train} training patients")
        return labeled
    if ratio is not None:
        if not 0 < ratio <= 1:
            raise ValueError(f"--ratio {ratio} is out of range: use a fraction in (0, 1]")
        return max(1, int(round(ratio * n_train)))
    return n_train
