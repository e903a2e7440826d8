"""ACDC: the Automated Cardiac Diagnosis Challenge (cine-MRI short-axis stacks, 4 classes).

Bernard et al., "Deep Learning Techniques for Automatic MRI Cardiac Multi-Structures
Segmentation and Diagnosis: Is the Problem Solved?", IEEE TMI 37(11), 2018.

Two public layouts are read, found automatically under the data root (the ACDC folder itself,
or a parent holding ``ACDC/``):

``raw``  the challenge release: ``training/patientNNN/patientNNN_frameFF.nii.gz``, its
         ``patientNNN_frameFF_gt.nii.gz`` and ``Info.cfg`` (ED and ES frame numbers); ``testing/``
         with the same structure when present (a ``testing/`` without any ``_gt`` file, as in the
         2017 release, is skipped with a warning). Spacing comes from the NIfTI headers.
``h5``   the preprocessed copy shared by SSL4MIS and the papers that reuse it: volumes
         ``data/patientNNN_frame0F.h5`` (datasets ``image``, ``label``, arrays (Z, Y, X)) and 2D
         slices ``patientNNN_frameFF_slice_K.h5``, with ``train.list``/``val.list``/``test.list``
         beside ``data/``. The slices lie in ``data/slices/`` (SSL4MIS's own copy) or side by side
         with the volumes in ``data/`` (the flattened copy published e.g. in antares0811/3DCardiac,
         ``data/ACDC/``); both are read, and one case's slices in both folders is an error. SSL4MIS
         ships the 70 training patients as slices only and the validation and test patients as
         volumes only: a training case is its slices stacked back in slice order.
         The files do not record the voxel spacing, so it is reported as (1, 1, 1): the paper's
         ASD is in voxels anyway, and the ``*_mm`` metrics of this layout are voxel figures too.

Case ids follow the field's lists: ``patientNNN_frame01`` is the ED frame and
``patientNNN_frame02`` the ES frame, whatever the raw frame numbers (kept in ``Case.meta``).
Images are min-max normalised per volume to [0, 1] (float32), labels are uint8:
0 background, 1 RV (right-ventricle cavity), 2 Myo (left-ventricle myocardium), 3 LV (cavity).

Split ``"field"`` (the default) is SSL4MIS's published partition, shipped in
``ssl_bench.reference/acdc_split_ssl4mis``: 70 training / 10 validation / 20 test patients
(140 / 20 / 40 volumes). The labeled set of N patients is the first N distinct patients of
``train_slices.list`` (3 -> 099, 038, 050; 7 adds 100, 058, 021, 049). Split ``"random"`` draws the
labeled patients from the same 70 with ``split_seed``; validation and test stay the field's.
"""
from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path

import numpy as np

from ssl_bench.registry import register_dataset

from .base import Case, CaseRef, DataError, Dataset, Split, select_count
from .io import check_pair, minmax_normalise, read_h5, read_nifti

ACDC_CLASS_NAMES = ["background", "RV", "Myo", "LV"]
FIELD_SPLIT_PACKAGE = "acdc_split_ssl4mis"
#: folders under the data root that may hold the ACDC files (root itself first)
ROOT_CANDIDATES = (".", "ACDC", "acdc", "database", "ACDC/database", "acdc/database")
LAYOUTS = ("auto", "raw", "h5")

_PATIENT_DIR = re.compile(r"^patient\d{3}$")
_CASE_ID = re.compile(r"^(patient\d{3})_(frame\d{2})$")
_SLICE_FILE = re.compile(r"^(patient\d{3}_frame\d{2})_slice_(\d+)\.h5$")
#: field frame names for the two annotated phases
PHASE_FRAMES = {"ED": "frame01", "ES": "frame02"}


# -- the field's lists -------------------------------------------------------------------------
def read_field_list(name: str) -> list[str]:
    """One of ``train``, ``val``, ``test``, ``train_slices`` from the shipped SSL4MIS split."""
    text = files("ssl_bench.reference").joinpath(FIELD_SPLIT_PACKAGE, f"{name}.list").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def patients_in_order(ids: list[str]) -> list[str]:
    """Distinct ``patientNNN`` prefixes in the order they first appear."""
    return list(dict.fromkeys(i.split("_", 1)[0] for i in ids))


def field_labeled_order() -> list[str]:
    """Training patients in the order the field takes them as labeled (``train_slices.list``)."""
    return patients_in_order(read_field_list("train_slices"))


# -- where each case lives ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    case_id: str
    patient_id: str
    layout: str  # "raw" or "h5"
    image: Path  # raw: frame NIfTI; h5: volume file (may not exist when only slices do)
    label: Path | None = None  # raw only
    phase: str = ""  # "ED" / "ES" (raw only)
    raw_frame: int | None = None  # raw only
    folder: str = ""  # raw: "training" / "testing"
    slices: tuple[Path, ...] = ()  # h5: per-slice files, used when the volume file is absent


def _nifti_in(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _read_info_cfg(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _frame_number(info: dict[str, str], key: str, cfg: Path) -> int:
    try:
        return int(float(info[key]))
    except (KeyError, ValueError):
        raise DataError(f"{cfg}: no valid '{key}:' frame number (found keys {sorted(info)}); "
                        f"restore this file from the ACDC release") from None


def _raw_patient(pdir: Path, folder: str) -> list[_Source]:
    """The ED and ES sources of one patient folder of the raw release."""
    patient = pdir.name
    cfg = pdir / "Info.cfg"
    if not cfg.is_file():
        raise DataError(f"{pdir}: Info.cfg is missing (it names the ED and ES frames); "
                        f"restore the complete patient folder from the ACDC release")
    info = _read_info_cfg(cfg)
    frames = {phase: _frame_number(info, phase, cfg) for phase in PHASE_FRAMES}
    if frames["ED"] == frames["ES"]:
        raise DataError(f"{cfg}: ED and ES name the same frame ({frames['ED']}); "
                        f"restore this file from the ACDC release")
    out = []
    for phase, field_frame in PHASE_FRAMES.items():
        stem = f"{patient}_frame{frames[phase]:02d}"
        image, label = _nifti_in(pdir, stem), _nifti_in(pdir, f"{stem}_gt")
        for what, path, suffix in (("image", image, ""), ("label", label, "_gt")):
            if path is None:
                raise DataError(f"{pdir}: the {phase} {what} {stem}{suffix}.nii.gz is missing "
                                f"(Info.cfg says {phase}: {frames[phase]}); restore the "
                                f"complete patient folder from the ACDC release")
        out.append(_Source(f"{patient}_{field_frame}", patient, "raw", image, label, phase,
                           frames[phase], folder))
    return out


def index_raw(base: Path, errors: list[DataError] | None = None) -> dict[str, _Source]:
    """Index ``<base>/training`` and ``<base>/testing`` (challenge release layout).

    A damaged patient folder raises, or, when ``errors`` is given, is recorded there and skipped.
    """
    sources: dict[str, _Source] = {}
    for folder in ("training", "testing"):
        sub = base / folder
        if not sub.is_dir():
            continue
        if folder == "testing" and not any(sub.glob("patient*/*_gt.nii*")):
            # the 2017 release shipped the test patients without labels: nothing to evaluate on
            warnings.warn(f"{sub}: no ground truth (*_gt.nii.gz) in this folder (the 2017 test "
                          f"release had none); its patients are not used", stacklevel=2)
            continue
        for pdir in sorted(p for p in sub.iterdir() if p.is_dir() and _PATIENT_DIR.match(p.name)):
            try:
                found = _raw_patient(pdir, folder)
                if found[0].case_id in sources:
                    raise DataError(f"{pdir}: {pdir.name} appears in both training/ and testing/ "
                                    f"under {base}; keep one copy")
            except DataError as exc:
                if errors is None:
                    raise
                errors.append(exc)
                continue
            sources.update((s.case_id, s) for s in found)
    return sources


def index_h5(base: Path) -> dict[str, _Source]:
    """Index ``<base>/data/*.h5`` volumes and the slice files in ``<base>/data/slices/`` or beside
    the volumes in ``<base>/data/`` (SSL4MIS layout, nested or flattened)."""
    data = base / "data"
    by_case_slices: dict[str, list[tuple[int, Path]]] = {}
    folder_of: dict[str, Path] = {}
    for folder in (data / "slices", data):
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            m = _SLICE_FILE.match(f.name)
            if not m:
                continue
            cid = m.group(1)
            if folder_of.setdefault(cid, folder) != folder:
                raise DataError(f"slices of {cid} lie both in {folder_of[cid]} and in {folder}; keep "
                                f"one copy (SSL4MIS uses data/slices/, the flattened copy data/)")
            by_case_slices.setdefault(cid, []).append((int(m.group(2)), f))
    volumes = {f.name[:-3]: f for f in data.glob("*.h5") if _CASE_ID.match(f.name[:-3])} if data.is_dir() else {}
    sources = {}
    for cid in sorted(set(volumes) | set(by_case_slices)):
        patient = _CASE_ID.match(cid).group(1)
        slices = tuple(f for _, f in sorted(by_case_slices.get(cid, [])))
        sources[cid] = _Source(cid, patient, "h5", volumes.get(cid, data / f"{cid}.h5"), slices=slices)
    return sources


def _has_raw(base: Path) -> bool:
    return any((base / f).is_dir() and any(_PATIENT_DIR.match(p.name) for p in (base / f).iterdir())
               for f in ("training", "testing"))


def _has_h5(base: Path) -> bool:
    data = base / "data"
    return data.is_dir() and (any(data.glob("patient*.h5")) or any((data / "slices").glob("patient*.h5")))


# -- the dataset -------------------------------------------------------------------------------
@register_dataset("acdc", description="ACDC cardiac cine-MRI (RV, Myo, LV); raw release or SSL4MIS h5",
                  paper="Bernard et al., IEEE TMI 2018")
class ACDC(Dataset):
    """ACDC cardiac cine-MRI: RV, myocardium and LV on short-axis slices."""

    description = "ACDC cardiac cine-MRI, 100+50 patients x ED/ES frames; RV, Myo, LV"
    paper = ("Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-Structures "
             "Segmentation and Diagnosis: Is the Problem Solved?, IEEE TMI 2018")
    reference_name = "acdc"
    class_names = ACDC_CLASS_NAMES
    default_image_size = 256
    default_setting = "labeled"
    default_split = "field"

    def __init__(self, root: Path | str, layout: str = "auto"):
        super().__init__(root)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown ACDC layout {layout!r}; use one of {LAYOUTS}")
        self.layout_request = layout

    # -- discovery ---------------------------------------------------------------------------
    def _data_folder(self) -> Path:
        """Where the layouts are looked for (the phantom overrides this)."""
        return self.root

    @cached_property
    def location(self) -> tuple[str, Path]:
        """(layout, folder) of the files found; raw wins over h5 (it carries the mm spacing)."""
        top = self._data_folder()
        wanted = ("raw", "h5") if self.layout_request == "auto" else (self.layout_request,)
        for cand in (top / c for c in ROOT_CANDIDATES):
            if not cand.is_dir():
                continue
            for layout in wanted:
                if (_has_raw if layout == "raw" else _has_h5)(cand):
                    return layout, cand.resolve()
        looked = ", ".join(str(top / c) for c in ROOT_CANDIDATES)
        what = {"raw": "raw release (training/patientNNN/*.nii.gz + Info.cfg)",
                "h5": "SSL4MIS h5 (data/patientNNN_frameFF.h5, data/slices/*.h5)"}
        raise DataError(f"no ACDC data found under {top}: looked for the "
                        f"{' and the '.join(what[w] for w in wanted)} in {looked}. Pass the folder "
                        f"that holds 'training/' or 'data/' (or its parent with 'ACDC/') as --data-root")

    @cached_property
    def _sources(self) -> dict[str, _Source]:
        layout, base = self.location
        sources = index_raw(base) if layout == "raw" else index_h5(base)
        if not sources:
            raise DataError(f"{base}: the {layout} layout was detected but holds no cases; "
                            f"check the download/extraction")
        return sources

    def scan(self) -> tuple[list[CaseRef], list[DataError]]:
        """Every usable case and every damaged patient folder (``cases()`` stops at the first)."""
        try:
            layout, base = self.location
        except DataError as exc:
            return [], [exc]
        if layout != "raw":  # the h5 index has no per-patient structure to get wrong
            try:
                return self.cases(), []
            except DataError as exc:
                return [], [exc]
        errors: list[DataError] = []
        subsets = self._field_subsets()
        refs = [CaseRef(s.case_id, s.patient_id, subsets.get(s.patient_id, ""))
                for s in index_raw(base, errors).values()]
        return refs, errors

    def source_files(self, case_id: str) -> list[Path] | None:
        """The files ``load_case(case_id)`` reads (keys the slice cache)."""
        src = self._sources.get(case_id)
        if src is None:
            return None
        if src.layout == "raw":
            return [src.image, src.label]
        return [src.image] if src.image.is_file() or not src.slices else list(src.slices)

    def preprocessing_key(self) -> str:
        return "acdc: per-volume min-max to [0, 1] float32, labels uint8 0..3 (v1)"

    def _field_subsets(self) -> dict[str, str]:
        """patient -> its role in the field split (the protocol's fixed partition)."""
        subsets = {}
        for subset in ("train", "val", "test"):
            for p in patients_in_order(read_field_list(subset)):
                subsets[p] = subset
        return subsets

    def protocol_gaps(self) -> list[str]:
        """Patients of the field split (SSL4MIS's train/val/test lists) that the files lack, per
        subset; a patient counts as missing unless both its ED and ES frames are there."""
        available = {r.case_id for r in self.cases()}
        gaps = []
        for subset in ("train", "val", "test"):
            ids = read_field_list(subset)
            patients = patients_in_order(ids)
            missing = sorted({cid.split("_", 1)[0] for cid in ids if cid not in available})
            if missing:
                gaps.append(f"{subset}: {len(missing)} of {len(patients)} patients missing: "
                            f"{', '.join(missing)}")
        return gaps

    def cases(self) -> list[CaseRef]:
        """Every case found; ``subset`` is the field split's role ("" for patients it does not use,
        e.g. the challenge's testing/ patients)."""
        subsets = self._field_subsets()
        return [CaseRef(s.case_id, s.patient_id, subsets.get(s.patient_id, ""))
                for s in self._sources.values()]

    # -- loading -----------------------------------------------------------------------------
    def load_case(self, case_id: str) -> Case:
        src = self._sources.get(case_id)
        if src is None:
            layout, base = self.location
            raise DataError(f"case {case_id!r} is not in the ACDC data at {base} ({layout} layout); "
                            f"ids look like patient001_frame01 (ED) / patient001_frame02 (ES)")
        if src.layout == "raw":
            image, spacing, img_affine = read_nifti(src.image)
            label, _, lab_affine = read_nifti(src.label)
            check_pair(image, label, src.image, src.label, self.num_classes, (img_affine, lab_affine))
            meta = {"layout": "raw", "phase": src.phase, "raw_frame": src.raw_frame,
                    "folder": src.folder, "image_path": str(src.image)}
        else:
            image, label, where = self._read_h5_case(src)
            check_pair(image, label, where, where, self.num_classes)
            spacing = (1.0, 1.0, 1.0)  # not stored in the h5 files (see module docstring)
            meta = {"layout": "h5", "phase": "ED" if case_id.endswith("frame01") else "ES",
                    "raw_frame": None, "spacing_known": False, "image_path": str(where)}
        return Case(case_id, src.patient_id, minmax_normalise(image), label.astype(np.uint8),
                    tuple(float(s) for s in spacing), meta)

    @staticmethod
    def _read_h5_case(src: _Source) -> tuple[np.ndarray, np.ndarray, Path]:
        if src.image.is_file() or not src.slices:
            arrays = read_h5(src.image, ["image", "label"])
            where = src.image
        else:  # only 2D slices were shipped: stack them back in slice order
            parts = [read_h5(f, ["image", "label"]) for f in src.slices]
            for f, p in zip(src.slices, parts):
                if p["image"].ndim != 2 or p["image"].shape != parts[0]["image"].shape:
                    raise DataError(f"{f}: expected a 2D slice of shape {parts[0]['image'].shape}, "
                                    f"found {p['image'].shape}; replace this file")
            arrays = {k: np.stack([p[k] for p in parts]) for k in ("image", "label")}
            where = src.slices[0].parent / f"{src.case_id}_slice_*.h5"
        for key in ("image", "label"):
            if arrays[key].ndim != 3:
                raise DataError(f"{where}: dataset '{key}' has shape {arrays[key].shape}, expected a "
                                f"3D (Z, Y, X) volume; replace this file")
        if np.issubdtype(arrays["image"].dtype, np.floating) and not np.isfinite(arrays["image"]).all():
            raise DataError(f"{where}: the image holds NaN or infinite values; replace this file")
        return arrays["image"], arrays["label"], where

    # -- splits ------------------------------------------------------------------------------
    def make_split(self, labeled: int | None = None, ratio: float | None = None,
                   split: str = "field", split_seed: int = 0, val_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> Split:
        """The field's 70/10/20-patient partition; ``val_fraction``/``test_fraction`` do not apply
        (the partition is fixed by the protocol). ``split="field"`` takes the field's labeled
        patients, ``split="random"`` draws them from the 70 with ``split_seed``."""
        split = split or self.default_split
        if split not in ("field", "random"):
            raise ValueError(f"unknown ACDC split {split!r}; use 'field' (the published SSL4MIS "
                             f"partition) or 'random' (labeled patients drawn with --split-seed)")
        lists = {name: read_field_list(name) for name in ("train", "val", "test")}
        gaps = self.protocol_gaps()
        if gaps:
            layout, base = self.location
            raise DataError(f"the ACDC data at {base} ({layout} layout) lacks patients that the field "
                            f"split needs (both ED and ES frames): {'; '.join(gaps)}. Use the complete "
                            f"ACDC training set (patients 001-100); in the SSL4MIS h5 copy the training "
                            f"patients are slice files, in data/slices/ or beside the volumes in data/")
        train_patients = patients_in_order(lists["train"])
        order = field_labeled_order()
        if set(order) != set(train_patients):
            raise DataError("the shipped train.list and train_slices.list name different patients; "
                            "the package's reference/acdc_split_ssl4mis files are damaged, reinstall")
        n_lab = select_count(len(train_patients), labeled, ratio)
        if split == "random":
            order = sorted(train_patients)
            random.Random(split_seed).shuffle(order)
        lab_p = order[:n_lab]
        lab_set = set(lab_p)
        return Split(
            labeled=[c for p in lab_p for c in (f"{p}_frame01", f"{p}_frame02")],
            unlabeled=[c for c in lists["train"] if c.split("_", 1)[0] not in lab_set],
            val=list(lists["val"]),
            test=list(lists["test"]),
            meta={"dataset": getattr(self, "registry_name", type(self).__name__), "split": split,
                  "split_seed": split_seed, "labeled_patients": lab_p, "labeled": labeled,
                  "ratio": ratio, "protocol": "SSL4MIS ACDC lists: 70/10/20 patients, 140/20/40 volumes",
                  "layout": self.location[0]},
        )
