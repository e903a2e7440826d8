import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets its own data and results roots; nothing leaks into the checkout."""
    monkeypatch.setenv("SSL_BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SSL_BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
