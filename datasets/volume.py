"""Small operations on (Z, Y, X) volumes shared by the CT/NIfTI datasets (LiTS, nnU-Net raw).

* ``reorient_to_ras``: flip/permute the voxel axes (nibabel's orientation code, no resampling)
  so that array axis X points to the patient's Right, Y to Anterior, Z to Superior (RAS+).
  Then ``z / (Z - 1)`` runs feet -> head in every volume and the in-plane orientation is the same
  for all scans (LiTS mixes scanner conventions).
* ``normalise_ct``: HU window clipping then per-scan min-max scaling to [0, 1].
* ``normalise_percentile``: percentile clipping then per-scan min-max scaling to [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DataError

#: a CT in Hounsfield units has air (about -1000 HU) around the body; data without any voxel
#: below this value has been rescaled already (or is not CT) and would be windowed wrongly
CT_AIR_CHECK_HU = -300.0


def reorient_to_ras(arrays: list[np.ndarray], affine: np.ndarray,
                    spacing_zyx: tuple[float, float, float]) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """Reorder/flip the axes of (Z, Y, X) arrays sharing ``affine`` to the closest RAS+ layout.

    Only axis flips and permutations (no interpolation); the spacing follows the axes.
    A degenerate affine (no orientation) leaves the arrays as they are.
    """
    import nibabel.orientations as nio

    affine = np.asarray(affine, dtype=np.float64)
    try:
        ornt = nio.io_orientation(affine)
    except Exception:  # a singular/odd affine: keep the stored order
        return arrays, spacing_zyx
    if np.isnan(ornt).any():
        return arrays, spacing_zyx
    if (ornt[:, 0] == [0, 1, 2]).all() and (ornt[:, 1] == 1).all():
        return arrays, spacing_zyx  # already RAS+
    out = []
    for a in arrays:
        xyz = a.transpose(2, 1, 0)  # NIfTI axis order
        out.append(np.ascontiguousarray(nio.apply_orientation(xyz, ornt).transpose(2, 1, 0)))
    spacing_xyz = (spacing_zyx[2], spacing_zyx[1], spacing_zyx[0])
    new_xyz = [0.0, 0.0, 0.0]
    for axis in range(3):  # input axis `axis` becomes output axis ornt[axis, 0]
        new_xyz[int(ornt[axis, 0])] = spacing_xyz[axis]
    return out, (new_xyz[2], new_xyz[1], new_xyz[0])


def check_ct_hu(image: np.ndarray, path: Path | str) -> None:
    """Reject volumes that are clearly not in Hounsfield units (see ``CT_AIR_CHECK_HU``)."""
    lo = float(image.min())
    if lo > CT_AIR_CHECK_HU:
        raise DataError(f"{path}: the darkest voxel is {lo:g}, but a CT in Hounsfield units has air "
                        f"(about -1000 HU) around the body; this volume was rescaled or is not CT. "
                        f"Use the original LiTS/MSD file")


def normalise_ct(image: np.ndarray, hu_min: float, hu_max: float, path: Path | str = "") -> np.ndarray:
    """Clip to the HU window [hu_min, hu_max], then scale the scan's own min/max to [0, 1]."""
    out = image.astype(np.float32)  # a copy: clipped and scaled in place below (big CT volumes)
    np.clip(out, hu_min, hu_max, out=out)
    lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        raise DataError(f"{path}: no contrast inside the HU window [{hu_min:g}, {hu_max:g}] (every "
                        f"voxel clips to {lo:g}); the file is not an abdominal CT in HU, replace it")
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def normalise_percentile(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip to the scan's [low, high] percentiles, then min-max scale to [0, 1] (float32)."""
    out = image.astype(np.float32)  # a copy: clipped and scaled in place below
    lo, hi = (float(v) for v in np.percentile(out, [low, high]))
    if hi <= lo:  # mostly-constant scan (check_pair rejected truly constant ones): plain min-max
        lo, hi = float(out.min()), float(out.max())
    np.clip(out, lo, hi, out=out)
    out -= lo
    out *= 1.0 / max(hi - lo, 1e-8)
    return out
