"""Tiny synthetic Left Atrium data in UA-MT's layout (``2018LA_Seg_Training Set/<ID>/mri_norm2.h5``
with ``train.list`` / ``test.list``), written by the tests that need it."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

#: (x, y, z) as the field stores them; small enough for a CPU test, larger than the test patch
SHAPE_XYZ = (40, 36, 20)


def scan_id(i: int) -> str:
    return f"SCAN{i:016d}"  # 20 characters, like the challenge's ids


def la_scan(seed: int, shape=SHAPE_XYZ) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 z-scored, label uint8) in (x, y, z): a bright ellipsoid (the atrium) in noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    c = np.array(shape) / 2 + rng.integers(-3, 4, size=3)
    r = np.array(shape) / 4
    label = (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1).astype(np.uint8)
    image = label * 2.0 + rng.normal(0, 0.5, size=shape)
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    return image, label


def make_la(root: Path, n_train: int = 20, n_test: int = 4, layout: str = "ua-mt", skip=()) -> Path:
    """Write the layout under ``root``: ``ua-mt`` (root is UA-MT's data/ folder) or ``mc-net``
    (``root/data/LA/...``). Scans in ``skip`` are listed but not written. Returns the data root."""
    base = root if layout == "ua-mt" else root / "data" / "LA"
    ids = [scan_id(i) for i in range(n_train + n_test)]
    for i, sid in enumerate(ids):
        if sid in skip:
            continue
        folder = base / "2018LA_Seg_Training Set" / sid
        folder.mkdir(parents=True, exist_ok=True)
        image, label = la_scan(i)
        with h5py.File(folder / "mri_norm2.h5", "w") as f:
            f.create_dataset("image", data=image, compression="gzip")
            f.create_dataset("label", data=label, compression="gzip")
    (base / "train.list").write_text("\n".join(ids[:n_train]) + "\n")
    (base / "test.list").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def tiny_la_run(tmp_path: Path, method: str, protocol: str, *sets: str):
    """``ssl-bench run`` on the tiny synthetic LA volumes under ``tmp_path/data`` (written on the first
    call; 3 iterations, 32 x 32 x 16 patches, 4 labeled), into ``tmp_path/results`` (several runs of
    different methods may share it); returns (metrics, config, split) of the finished run."""
    from typer.testing import CliRunner

    from ssl_bench.cli import app

    root = tmp_path / "data"
    if not root.exists():
        make_la(root)
    results = tmp_path / "results"
    extra = [a for kv in sets for a in ("--set", kv)]
    res = CliRunner().invoke(app, ["run", "--method", method, "--dataset", "la", "--labeled", "4", "--protocol", protocol,
                                   "--iterations", "3", "--no-progress", "--set", "patch_size=32,32,16",
                                   "--set", "sw_stride=16,16,8", *extra,
                                   "--data-root", str(root), "--results-root", str(results)])
    assert res.exit_code == 0, res.output
    [path] = list(results.glob(f"la/*/*/{method}/*/metrics.json"))
    metrics = json.loads(path.read_text())
    assert metrics["status"] == "finished" and metrics["test"]["last"]["mean"]["n"] == 4
    config = json.loads((path.parent / "config.json").read_text())
    assert config["image_size"] == [16, 32, 32] and config["train"]["backbone"] == "vnet"
    return metrics, config, json.loads((path.parent / "split.json").read_text())
