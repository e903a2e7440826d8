"""The slice cache: each volume's axial slices at one training size, computed once.

Layout, per dataset and slice size::

    <data root>/.ssl_bench_cache/<dataset cache_name>/<size>/
        <case_id>.images.npy   (Z, S, S) float32, normalised (np.load(mmap_mode="r") friendly)
        <case_id>.labels.npy   (Z, S, S) uint8
        <case_id>.json         fingerprint of the sources + shape, spacing, class counts

``$SSL_BENCH_CACHE`` moves the cache elsewhere (e.g. when the data root is read-only):
``$SSL_BENCH_CACHE/<cache_name>-<hash of the data root>/<size>/``.

An entry is *fresh* when its JSON exists, its fingerprint equals the current one and both
arrays are present. The fingerprint lists every source file (path relative to the data root,
size in bytes, mtime in ns), the dataset's ``preprocessing_key()``, the slice size and the cache
format, so an edited/replaced source or a change of preprocessing is rebuilt. Every file is
written atomically (temporary file + rename) and the JSON last: it is the commit marker, so a
crash never leaves an entry that reads as fresh. Datasets whose ``source_files`` is ``None``
are not cached: their slices are computed in memory on every call.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DataError, SliceSet, atomic_write_text, resize_slices

CACHE_DIRNAME = ".ssl_bench_cache"
#: bump when the content or layout of cache entries changes (invalidates every entry)
CACHE_FORMAT = 1


@dataclass
class CachedVolume:
    """One volume's slices at the cache size and what ``data info`` reports about it."""

    case_id: str
    images: np.ndarray  # (Z, S, S) float32 (a read-only memmap when read from the cache)
    labels: np.ndarray  # (Z, S, S) uint8
    meta: dict  # fingerprint, shape, spacing, class_voxels, class_slices (native resolution)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.meta["spacing"])

    @property
    def n_slices(self) -> int:
        return int(self.images.shape[0])


def cache_base(dataset) -> Path:
    """The folder holding every size of this dataset's cache."""
    env = os.environ.get("SSL_BENCH_CACHE")
    if env:
        root_hash = hashlib.sha256(str(Path(dataset.root).resolve()).encode()).hexdigest()[:10]
        return Path(env).expanduser() / f"{dataset.cache_name}-{root_hash}"
    return Path(dataset.root) / CACHE_DIRNAME / dataset.cache_name


def safe_name(case_id: str) -> str:
    """A file-name-safe form of a case id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", case_id).lstrip(".") or "_"


def native_statistics(label: np.ndarray, num_classes: int) -> dict:
    """Voxels of each class and slices containing it, on the label's own grid."""
    per_slice = np.stack([np.bincount(sl.ravel(), minlength=num_classes)[:num_classes] for sl in label]) \
        if label.shape[0] else np.zeros((0, num_classes), np.int64)
    return {"class_voxels": per_slice.sum(0).astype(int).tolist(),
            "class_slices": (per_slice > 0).sum(0).astype(int).tolist()}


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class SliceCache:
    """The cache of one dataset at one slice size."""

    def __init__(self, dataset, size: int):
        if int(size) < 1:
            raise ValueError(f"slice size must be positive, got {size}")
        self.dataset = dataset
        self.size = int(size)

    @property
    def folder(self) -> Path:
        return cache_base(self.dataset) / str(self.size)

    def paths(self, case_id: str, folder: Path | None = None) -> tuple[Path, Path, Path]:
        base = (folder or self.folder) / safe_name(case_id)
        return (base.with_name(base.name + ".images.npy"), base.with_name(base.name + ".labels.npy"),
                base.with_name(base.name + ".json"))

    # -- freshness ---------------------------------------------------------------------------
    def fingerprint(self, case_id: str) -> dict | None:
        """What the entry of ``case_id`` must have been built from; None if not cacheable."""
        files = self.dataset.source_files(case_id)
        if files is None:
            return None
        root = Path(self.dataset.root).resolve()
        sources = []
        for f in files:
            f = Path(f)
            try:
                st = f.stat()
            except OSError as exc:
                raise DataError(f"{f}: cannot read this source file of case {case_id!r} "
                                f"({exc.strerror or exc}); restore it") from exc
            try:
                shown = str(f.resolve().relative_to(root))
            except ValueError:
                shown = str(f.resolve())
            sources.append([shown, int(st.st_size), int(st.st_mtime_ns)])
        return {"format": CACHE_FORMAT, "dataset": self.dataset.cache_name,
                "preprocessing": self.dataset.preprocessing_key(), "size": self.size,
                "sources": sources}

    def _read_meta(self, case_id: str) -> dict | None:
        _, _, meta_path = self.paths(case_id)
        try:
            return json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None

    def status(self, case_id: str) -> str:
        """"fresh", "stale" (sources or preprocessing changed), "missing", or "uncached"."""
        fp = self.fingerprint(case_id)
        if fp is None:
            return "uncached"
        meta = self._read_meta(case_id)
        if meta is None:
            return "missing"
        img, lab, _ = self.paths(case_id)
        if meta.get("fingerprint") != fp or not img.is_file() or not lab.is_file():
            return "stale"
        return "fresh"

    # -- reading and building ----------------------------------------------------------------
    def read(self, case_id: str) -> CachedVolume | None:
        """The cached entry of ``case_id`` if it is fresh (arrays memory-mapped), else None."""
        if self.status(case_id) != "fresh":
            return None
        meta = self._read_meta(case_id)
        img_path, lab_path, _ = self.paths(case_id)
        try:
            images = np.load(img_path, mmap_mode="r")
            labels = np.load(lab_path, mmap_mode="r")
        except (OSError, ValueError):
            return None  # damaged entry: rebuilt by the caller
        z = int(meta["n_slices"])
        if images.shape != (z, self.size, self.size) or labels.shape != images.shape:
            return None
        return CachedVolume(case_id, images, labels, meta)

    def build(self, case_id: str) -> CachedVolume:
        """Load, validate (``load_case`` raises DataError) and resize one volume, in memory."""
        fp = self.fingerprint(case_id)  # before reading, so an edit during the read is rebuilt
        case = self.dataset.load_case(case_id)
        images = resize_slices(case.image, self.size, is_label=False)
        labels = resize_slices(case.label, self.size, is_label=True)
        meta = {"case_id": case_id, "fingerprint": fp, "n_slices": int(case.image.shape[0]),
                "shape": [int(s) for s in case.image.shape],
                "spacing": [float(s) for s in case.spacing],
                **native_statistics(case.label, self.dataset.num_classes)}
        return CachedVolume(case_id, images, labels, meta)

    def write(self, volume: CachedVolume, folder: Path | None = None) -> None:
        """Write one entry atomically (arrays first, the JSON commit marker last)."""
        folder = folder or self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            img_path, lab_path, meta_path = self.paths(volume.case_id, folder)
            _save_npy_atomic(img_path, volume.images.astype(np.float32, copy=False))
            _save_npy_atomic(lab_path, volume.labels.astype(np.uint8, copy=False))
            atomic_write_text(meta_path, json.dumps(volume.meta))
        except OSError as exc:
            raise DataError(f"cannot write the slice cache in {folder} ({exc.strerror or exc}); make "
                            f"the data root writable or set $SSL_BENCH_CACHE to a writable folder") from exc

    def commit(self, staging: Path, case_ids: list[str]) -> None:
        """Move entries written into ``staging`` (same file system) into the cache folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for cid in case_ids:
            for src, dst in zip(self.paths(cid, staging), self.paths(cid)):
                os.replace(src, dst)  # the JSON comes last in paths(): the commit marker

    def get(self, case_id: str) -> CachedVolume:
        """The entry of ``case_id``: read when fresh, else built (and written if cacheable)."""
        volume = self.read(case_id)
        if volume is not None:
            return volume
        volume = self.build(case_id)
        if volume.meta["fingerprint"] is not None:
            self.write(volume)
        return volume

    def gather(self, case_ids: list[str]) -> SliceSet:
        """The training slices of ``case_ids`` (``dataset.training_slice_mask``) as one SliceSet."""
        kept: list[tuple[int, CachedVolume, np.ndarray]] = []
        for i, cid in enumerate(case_ids):
            vol = self.get(cid)
            mask = self.dataset.training_slice_mask(np.asarray(vol.labels), vol.spacing)
            z_keep = np.arange(vol.n_slices) if mask is None else np.flatnonzero(np.asarray(mask))
            kept.append((i, vol, z_keep))
        n = sum(len(z) for _, _, z in kept)
        if n == 0:
            return SliceSet.empty(self.size)
        # preallocate and fill: no second copy of the whole set in memory
        out = SliceSet(np.empty((n, self.size, self.size), np.float32),
                       np.empty((n, self.size, self.size), np.uint8),
                       np.empty(n, np.int32), np.empty(n, np.float32), np.empty(n, np.int32))
        at = 0
        for i, vol, z_keep in kept:
            k = len(z_keep)
            out.images[at:at + k] = vol.images[z_keep]
            out.labels[at:at + k] = vol.labels[z_keep]
            out.case_index[at:at + k] = i
            out.position[at:at + k] = z_keep / max(vol.n_slices - 1, 1)
            out.slice_index[at:at + k] = z_keep
            at += k
        return out
