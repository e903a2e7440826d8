"""ABD, AD-MT, UniMatch, SS-Net and MC-Net+ (its ACDC field recipe) through the real loop on the tiny dataset, under paper and field: every stage
runs, checkpoints are written, and a killed run resumes to the same weights (slow: a few loop runs)."""
import pytest
import torch

from ssl_bench import engine
from ssl_bench.runconfig import RunSpec

FAST = {"iterations": "6", "labeled_bs": "4", "unlabeled_bs": "4", "val_every": "3", "checkpoint_every": "3",
        "log_every": "1", "eval_batch_size": "4", "budget_scale": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["abd", "ad-mt", "unimatch", "ssnet", "mcnet"])
@pytest.mark.parametrize("protocol", ["paper", "field"])
def test_trains_through_the_loop(tmp_path, method, protocol):
    spec = RunSpec(method=method, dataset="tiny-test", labeled=2, seed=0, protocol=protocol, overrides=dict(FAST))
    res = engine.fit(engine.prepare(spec, tmp_path / "data", tmp_path / "results"), progress=False)
    assert res.status == "finished" and sum(res.metrics["stages"].values()) == 6
    assert 0.0 <= res.metrics["flat"]["test/best/dice/mean"] <= 1.0
    last = torch.load(res.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert set(last["modules"]) >= {"student"}
