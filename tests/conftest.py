import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


# -- guard: never a tensor inside pytest.approx ------------------------------------------------
# pytest 9.2's approx iterates over its expected value, and a 0-d tensor cannot be iterated: a
# test that passed with 9.1 fails with 9.2 (issue 15). Tests compare Python floats (``.item()``,
# ``float(...)``) or use ``torch.testing.assert_close``; this guard makes a tensor there an error
# under every pytest version, so the pattern cannot come back unnoticed.
_pytest_approx = pytest.approx


def _contains_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_tensor(v) for v in value)
    return False


def _approx_without_tensors(expected, *args, **kwargs):
    if _contains_tensor(expected):
        raise TypeError(
            "pytest.approx got a torch.Tensor as its expected value; compare Python floats "
            "(.item() / float(...) / .tolist()) or use torch.testing.assert_close instead"
        )
    return _pytest_approx(expected, *args, **kwargs)


pytest.approx = _approx_without_tensors


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory):
    """An empty, fully migrated MLflow SQLite store, made once per session: creating one costs
    10-20 s of schema migrations, copying it costs milliseconds."""
    from ssl_bench import mlflow_store

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow_store.make_client(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, tmp_path_factory, monkeypatch, mlflow_template_db):
    """Every test gets its own data and results roots and its own MLflow store (a copy of the
    template); nothing leaks into the checkout."""
    import shutil

    monkeypatch.setenv("SSL_BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SSL_BENCH_RESULTS", str(tmp_path / "results"))
    store = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"  # outside tmp_path: tests own it
    shutil.copyfile(mlflow_template_db, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    torch.manual_seed(0)


# -- a tiny in-memory dataset for engine and CLI tests ----------------------------------------
import numpy as np  # noqa: E402

from ssl_bench.datasets.base import Case, CaseRef, Dataset  # noqa: E402
from ssl_bench.registry import DATASETS, register_dataset  # noqa: E402


def _tiny_volume(i: int, size: int = 24, depth: int = 4):
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((depth, size, size), np.uint8)
    image = rng.normal(0, 0.1, (depth, size, size)).astype(np.float32)
    for z in range(depth):
        cy, cx, r = size / 2 + rng.integers(-2, 3), size / 2 + rng.integers(-2, 3), 5 + z % 2
        d = np.hypot(yy - cy, xx - cx)
        label[z][d < r + 3] = 1
        label[z][d < r] = 2
        image[z] += label[z] * 0.5
    return image, label


if "tiny-test" not in DATASETS._entries:
    @register_dataset("tiny-test", description="12 tiny synthetic volumes (tests only)")
    class TinyTestDataset(Dataset):
        class_names = ["background", "ring", "core"]
        default_image_size = 24
        reference_name = None

        def cases(self):
            return [CaseRef(f"case{i:02d}", f"p{i:02d}", "test" if i >= 9 else "") for i in range(12)]

        def load_case(self, case_id):
            i = int(case_id[4:])
            image, label = _tiny_volume(i)
            return Case(case_id, f"p{i:02d}", image, label, (5.0, 1.5, 1.5))


# -- real runs for the figure, report and UI tests ---------------------------------------------
TINY_METHODS = ("unet-l", "mt")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, mlflow_template_db):
    """Finished tiny-test runs made by the real CLI: UNet-L and MT, seeds 0 and 1 with 2 labeled
    patients, seed 0 with 4. Returns (results root, tracking URI)."""
    import shutil

    from typer.testing import CliRunner

    from ssl_bench.cli import app

    root = tmp_path_factory.mktemp("tiny-runs")
    shutil.copyfile(mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = ["--dataset", "tiny-test", "--iterations", "4", "--no-progress", "--results-root", str(root),
              "--tracking-uri", uri, "--set", "labeled_bs=2", "--set", "unlabeled_bs=2", "--set", "val_every=2",
              "--set", "threads=1"]
    for method in TINY_METHODS:
        for labeled, seed in (("2", "0"), ("2", "1"), ("4", "0")):
            res = CliRunner().invoke(app, ["run", "--method", method, "--labeled", labeled, "--seed", seed, *common])
            assert res.exit_code == 0, res.output
    return root, uri
