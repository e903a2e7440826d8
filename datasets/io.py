"""Reading and writing medical volumes, with one clear ``DataError`` per kind of bad input.

Every array in ssl-bench is indexed (Z, Y, X), with spacing (z, y, x) in mm. NIfTI stores
(X, Y, Z), so the readers and writers here transpose at the border and nowhere else.
Failures raise :class:`~ssl_bench.datasets.base.DataError` naming the file and what to do,
instead of letting a zlib/h5py/nibabel traceback reach the user.
"""
from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .base import DataError

#: affine entries are in mm; headers written by different tools differ in float rounding
AFFINE_ATOL_MM = 1e-3


def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    raise DataError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")


def read_nifti(path: Path | str) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a 3D NIfTI volume -> (array (Z, Y, X), spacing (z, y, x) in mm, affine 4x4).

    The array keeps the on-disk data type, or is float when the header scales the values.
    A trailing singleton 4th axis (some tools write (X, Y, Z, 1)) is dropped.
    """
    import nibabel as nib

    path = Path(path)
    _nifti_suffix(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the data root (--data-root) and that the "
                        f"download/extraction is complete")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: cannot read this NIfTI file ({_reason(exc)}); it is "
                        f"truncated or corrupt, download or extract it again") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, found shape {tuple(data.shape)}; pass the "
                        f"per-frame 3D files, not a 4D series")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path}: {n_bad} voxels are NaN or infinite; fix or replace this file")
    if len(zooms) < 3 or not all(np.isfinite(z) and z > 0 for z in zooms[:3]):
        raise DataError(f"{path}: invalid voxel spacing {zooms} in the header; fix the header "
                        f"(pixdim) of this file")
    # headers hold float32: round so that 1.54 reads back as 1.54, not 1.5399999618530273
    spacing = tuple(round(z, 6) for z in (zooms[2], zooms[1], zooms[0]))
    return np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, affine


def spacing_affine(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The axis-aligned affine of a volume with the given (z, y, x) spacing."""
    return np.diag([float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0]), 1.0])


def write_nifti(path: Path | str, array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                dtype=np.float32, affine: np.ndarray | None = None) -> None:
    """Write a (Z, Y, X) array as NIfTI, atomically (temp file in the same folder + rename).

    ``affine`` defaults to the axis-aligned one of ``spacing_zyx``.
    """
    import nibabel as nib

    path = Path(path)
    suffix = _nifti_suffix(path)  # the temp file keeps it so nibabel picks the same format
    array_zyx = np.asarray(array_zyx)
    if array_zyx.ndim != 3:
        raise ValueError(f"write_nifti expects a (Z, Y, X) array, got shape {array_zyx.shape}")
    data = np.ascontiguousarray(array_zyx.transpose(2, 1, 0).astype(dtype))
    img = nib.Nifti1Image(data, spacing_affine(spacing_zyx) if affine is None else np.asarray(affine))
    img.header.set_data_dtype(dtype)
    img.header.set_zooms((float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0])))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_h5(path: Path | str, keys: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the named datasets of an HDF5 file into memory."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the data root (--data-root) and that the "
                        f"download/extraction is complete")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {missing}; found {sorted(f.keys())}. "
                                f"This is not a file of the expected layout; regenerate or replace it")
            return {k: np.asarray(f[k][()]) for k in keys}
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot read this HDF5 file ({_reason(exc)}); it is "
                        f"truncated or corrupt, download or extract it again") from exc


def check_pair(image: np.ndarray, label: np.ndarray, image_path: Path | str, label_path: Path | str,
               num_classes: int, affines: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Check that an image and its label volume belong together and that the label is valid."""
    if image.shape != label.shape:
        raise DataError(f"{image_path} has shape {tuple(image.shape)} but its label {label_path} has "
                        f"{tuple(label.shape)} (Z, Y, X); they must match voxel for voxel, "
                        f"replace the mismatched file")
    if affines is not None:
        a_img, a_lab = (np.asarray(a, dtype=np.float64) for a in affines)
        if not np.allclose(a_img, a_lab, rtol=1e-4, atol=AFFINE_ATOL_MM):
            raise DataError(f"{image_path} and its label {label_path} have different affines "
                            f"(image {a_img.round(4).tolist()}, label {a_lab.round(4).tolist()}); "
                            f"they are not aligned, replace the mismatched file")
    values = np.unique(label)
    valid = list(range(num_classes))
    non_integer = values[values != np.round(values)] if np.issubdtype(values.dtype, np.floating) else []
    bad = sorted(set(values.tolist()) - set(valid)) if len(non_integer) == 0 else non_integer.tolist()
    if bad:
        raise DataError(f"{label_path}: label values {bad[:20]} are outside the class map "
                        f"(valid values: {valid}); this is not a label file of this dataset, or it "
                        f"uses another labelling")
    if image.size == 0 or float(image.min()) == float(image.max()):
        raise DataError(f"{image_path}: the image is constant ({float(image.flat[0]) if image.size else 'empty'} "
                        f"everywhere), so it holds no data; download or extract it again")


def minmax_normalise(image: np.ndarray) -> np.ndarray:
    """Per-volume min-max scaling to [0, 1], float32 (the ACDC convention of SSL4MIS).

    A constant volume is rejected by :func:`check_pair` before it gets here.
    """
    image = image.astype(np.float32)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / max(hi - lo, 1e-8)
