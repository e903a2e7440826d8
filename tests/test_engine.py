"""The shared training loop: outputs, resume after a crash, divergence, determinism."""
import json
import math

import pytest
import torch

from ssl_bench import engine
from ssl_bench.runconfig import RunSpec

FAST = {"iterations": "6", "labeled_bs": "2", "unlabeled_bs": "2", "val_every": "3",
        "checkpoint_every": "2", "log_every": "1", "eval_batch_size": "4"}


def _prepare(tmp_path, method="mt", seed=0, split_seed=0, labeled=2, **extra):
    spec = RunSpec(method=method, dataset="tiny-test", labeled=labeled, seed=seed, split_seed=split_seed,
                   overrides={**FAST, **extra})
    return engine.prepare(spec, tmp_path / "data", tmp_path / "results")


def test_fit_writes_run_dir_and_tests_best_and_last(tmp_path):
    run = _prepare(tmp_path)
    res = engine.fit(run, progress=False)
    d = res.run_dir
    assert res.status == "finished"
    for name in ("config.json", "split.json", "log.jsonl", "metrics.json", "tags.json",
                 "checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/latest.pt"):
        assert (d / name).exists(), name
    metrics = json.loads((d / "metrics.json").read_text())
    assert set(metrics["test"]) == {"best", "last"}
    assert 0.0 <= metrics["test"]["last"]["mean"]["dice"] <= 1.0
    assert metrics["flat"]["test/best/n/mean"] == 3  # three test cases
    split = json.loads((d / "split.json").read_text())
    assert len(split["labeled"]) == 2 and not set(split["labeled"]) & set(split["unlabeled"])
    config = json.loads((d / "config.json").read_text())
    assert config["train"]["iterations"] == 6 and config["method_config"]["consistency"] == 0.1
    steps = [json.loads(line)["step"] for line in (d / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 6
    again = engine.fit(_prepare(tmp_path), progress=False)
    assert again.skipped


def test_killed_run_resumes_from_checkpoint(tmp_path, monkeypatch):
    from ssl_bench.methods.mt import MeanTeacher

    original = MeanTeacher.training_step
    calls = {"n": 0}

    def crashing(self, batch, step):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original(self, batch, step)

    monkeypatch.setattr(MeanTeacher, "training_step", crashing)
    run = _prepare(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(run, progress=False)
    latest = torch.load(run.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert latest["state"]["step"] == 4  # checkpoint_every=2: steps 2 and 4 were saved
    assert not (run.run_dir / "metrics.json").exists()
    monkeypatch.setattr(MeanTeacher, "training_step", original)
    seen = []
    monkeypatch.setattr(MeanTeacher, "training_step",
                        lambda self, b, s: (seen.append(s), original(self, b, s))[1])
    res = engine.fit(_prepare(tmp_path), progress=False)
    assert res.status == "finished" and seen == [4, 5]


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    full = engine.fit(_prepare(tmp_path / "a"), progress=False)
    from ssl_bench.methods.mt import MeanTeacher

    original = MeanTeacher.training_step

    def crash_at_4(self, batch, step):
        if step == 4:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(MeanTeacher, "training_step", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(_prepare(tmp_path / "b"), progress=False)
    monkeypatch.setattr(MeanTeacher, "training_step", original)
    resumed = engine.fit(_prepare(tmp_path / "b"), progress=False)
    a = torch.load(full.run_dir / "checkpoints" / "last.pt", weights_only=False)["predictor"]
    b = torch.load(resumed.run_dir / "checkpoints" / "last.pt", weights_only=False)["predictor"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


@pytest.mark.parametrize("log_every", ["1", "5"])  # a read-back every step / between two logs
def test_non_finite_loss_fails_the_run_and_keeps_checkpoints(tmp_path, monkeypatch, log_every):
    """The lean loop reads losses back on the log cadence and before every checkpoint: the NaN of
    step 3 is named, and the checkpoint due after it is never written from its weights."""
    from ssl_bench.methods.mt import MeanTeacher

    original = MeanTeacher.training_step

    def nan_at_3(self, batch, step):
        out = original(self, batch, step)
        if step == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MeanTeacher, "training_step", nan_at_3)
    run = _prepare(tmp_path, log_every=log_every, val_every="100")
    with pytest.raises(engine.TrainingDiverged, match=r"loss became nan at stage 'train', step 3 \(terms: sup="):
        engine.fit(run, progress=False)
    failure = json.loads((run.run_dir / "failure.json").read_text())
    assert failure["status"] == "failed"
    latest = torch.load(run.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert latest["state"]["step"] == 2  # written after step 1; the read before step 3's save raised
    assert all(torch.isfinite(t.float()).all() for t in latest["modules"]["student"].values())
    assert not (run.run_dir / "metrics.json").exists()
    assert json.loads((run.run_dir / "tags.json").read_text())["method"] == "mt"


def test_seed_and_split_seed_are_independent(tmp_path):
    a = _prepare(tmp_path, seed=0, split_seed=0)
    b = _prepare(tmp_path, seed=1, split_seed=0)
    c = _prepare(tmp_path, seed=0, split_seed=1)
    assert a.split.labeled == b.split.labeled
    assert a.split.labeled != c.split.labeled or a.split.val != c.split.val
    assert a.run_dir != b.run_dir != c.run_dir


def test_same_seed_gives_identical_results(tmp_path):
    r1 = engine.fit(_prepare(tmp_path / "x"), progress=False)
    r2 = engine.fit(_prepare(tmp_path / "y"), progress=False)
    assert r1.metrics["flat"] == r2.metrics["flat"]


def test_unet_f_trains_on_every_training_case(tmp_path, monkeypatch):
    seen = {}
    original = engine.SlicePool.__init__

    def spy(self, s):
        original(self, s)
        seen.setdefault("sizes", []).append(len(self))

    monkeypatch.setattr(engine.SlicePool, "__init__", spy)
    run = _prepare(tmp_path, method="unet-f")
    engine.fit(run, progress=False)
    n_train = len(run.split.labeled) + len(run.split.unlabeled)
    assert max(seen["sizes"]) == 4 * n_train  # 4 slices per tiny volume


def test_unknown_override_key_is_an_error(tmp_path):
    from ssl_bench.config import ConfigError

    with pytest.raises(ConfigError, match="unknown train config key"):
        _prepare(tmp_path, iterationz="3")
    with pytest.raises(ConfigError, match="unknown method mt config key"):
        _prepare(tmp_path, **{"method.consistancy": "3"})


def test_dataset_train_defaults_sit_below_the_runs_overrides(tmp_path, monkeypatch):
    from ssl_bench.registry import get_dataset_class

    cls = get_dataset_class("tiny-test")
    monkeypatch.setattr(cls, "train_defaults", {"image_size": "16", "lr": "0.5"}, raising=False)
    run = _prepare(tmp_path, lr="0.02")
    assert run.train_cfg.image_size == 16 and run.image_size == 16  # from the dataset
    assert run.train_cfg.lr == 0.02  # the run's --set wins
    assert run.resolved["train"]["image_size"] == 16  # recorded in config.json


def test_amp_run_on_cpu_uses_bfloat16_and_finishes(tmp_path):
    res = engine.fit(_prepare(tmp_path, amp="true", iterations="2"), progress=False)
    assert res.status == "finished"
    assert json.loads((res.run_dir / "config.json").read_text())["train"]["amp"] is True


def test_unsup_weight_rampup_ssl4mis_form_and_delay():
    """The protocol-level ramp: SSL4MIS computes 0.1 * sigmoid_rampup(iter // 150, 200) over 30k
    iterations; with length 1.0 and quantum 150/30000 the factor equals exp(-5 (1 - (iter//150)/200)^2)."""
    import math

    from ssl_bench.schedules import unsup_weight_rampup

    for it in (0, 149, 150, 1000, 7499, 15000, 29999, 30000):
        want = math.exp(-5 * (1 - min(it // 150, 200) / 200) ** 2)
        assert unsup_weight_rampup(it, 30000, 0.4, length=1.0, quantum=0.005) == pytest.approx(want)
    # the method's own length when no override; the delay zeroes without shifting the ramp
    assert unsup_weight_rampup(200, 1000, 0.4) == pytest.approx(math.exp(-5 * (1 - 0.5) ** 2))
    assert unsup_weight_rampup(32, 1000, 0.4, delay=0.0333) == 0.0
    assert unsup_weight_rampup(34, 1000, 0.4, delay=0.0333) == pytest.approx(math.exp(-5 * (1 - 34 / 400) ** 2))


def test_rampup_override_reaches_the_method(tmp_path):
    """--set rampup.length=... changes the weight a method uses (through MethodContext)."""
    from ssl_bench.methods.base import MethodContext
    from ssl_bench.methods.mt import MeanTeacher, MTConfig
    from ssl_bench.runconfig import RampConfig

    ctx = MethodContext(num_classes=3, image_size=16, total_iterations=100)
    own = MeanTeacher(MTConfig(), ctx).ramp(20, 0.4)
    ctx2 = MethodContext(num_classes=3, image_size=16, total_iterations=100, rampup=RampConfig(length=0.2))
    short = MeanTeacher(MTConfig(), ctx2).ramp(20, 0.4)
    assert own == pytest.approx(math.exp(-5 * (1 - 0.5) ** 2)) and short == pytest.approx(1.0)
    with pytest.raises(Exception, match="rampup"):
        RampConfig(delay=2.0)


def _spy_evaluations(monkeypatch, val_dice=None):
    """Record the case lists evaluate_cases is called with; validation dice from ``val_dice``."""
    from ssl_bench import evaluate

    calls, original = [], evaluate.evaluate_cases
    run_split: dict = {}  # the caller sets "test"

    def spy(predictor, dataset, case_ids, *args, **kwargs):
        calls.append(list(case_ids))
        res = original(predictor, dataset, case_ids, *args, **kwargs)
        if val_dice is not None and list(case_ids) != list(run_split["test"]):
            res.summary["mean"]["dice"] = val_dice.pop(0)
        return res

    monkeypatch.setattr(evaluate, "evaluate_cases", spy)
    return calls, run_split


def test_best_and_last_are_scored_once_when_they_are_the_same_weights(tmp_path, monkeypatch):
    calls, split = _spy_evaluations(monkeypatch)
    run = _prepare(tmp_path, val_every="100")  # one validation, at the last step: best = last
    split["test"] = run.split.test
    res = engine.fit(run, progress=False)
    assert res.metrics["best_is_last"] is True
    assert calls.count(list(run.split.test)) == 1
    d = res.run_dir
    assert (d / "test_best_per_case.csv").read_text() == (d / "test_last_per_case.csv").read_text()
    assert res.metrics["test"]["best"] == res.metrics["test"]["last"]


def test_best_and_last_are_scored_apart_when_they_differ(tmp_path, monkeypatch):
    calls, split = _spy_evaluations(monkeypatch, val_dice=[0.9, 0.1])  # the best is step 3's
    run = _prepare(tmp_path)
    split["test"] = run.split.test
    res = engine.fit(run, progress=False)
    assert res.metrics["best_is_last"] is False and res.metrics["best_step"] == 3
    assert calls.count(list(run.split.test)) == 2


def test_cuda_rng_of_every_device_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    """Mocked CUDA API (no GPU here): the checkpoint holds every device's CUDA RNG state, and a
    resume puts each back on its device as a CPU byte tensor."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state))
    g, method_g = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    saved = engine.rng_state(g, method_g)
    engine.atomic_torch_save({"rng": saved}, tmp_path / "latest.pt")
    expected = (torch.rand(3, generator=g), torch.rand(3, generator=method_g), torch.rand(3))

    loaded = torch.load(tmp_path / "latest.pt", weights_only=False)["rng"]
    g2, method_g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.manual_seed(9)
    engine.restore_rng(loaded, g2, method_g2)
    assert sorted(restored) == [0, 1]
    assert all(torch.equal(restored[i], states[i]) and restored[i].device.type == "cpu" for i in (0, 1))
    got = (torch.rand(3, generator=g2), torch.rand(3, generator=method_g2), torch.rand(3))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))

    # a checkpoint from a CPU run resumes on CUDA (nothing to restore there) and the reverse
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in engine.rng_state(g, method_g)
    restored.clear()
    engine.restore_rng(engine.rng_state(g, method_g), g2, method_g2)
    assert restored == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    engine.restore_rng(saved, g2, method_g2)  # CUDA states saved, no CUDA now: the rest resumes
    assert restored == {}


def test_strict_determinism_switch(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: calls.append((on, warn_only)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setenv("SSL_BENCH_DETERMINISTIC", "strict")
    engine.seed_everything(0, True)
    assert calls == [(True, True)] and __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("SSL_BENCH_DETERMINISTIC", "yes please")
    with pytest.raises(ValueError, match="SSL_BENCH_DETERMINISTIC='yes please': use strict"):
        engine.seed_everything(0, True)
    monkeypatch.delenv("SSL_BENCH_DETERMINISTIC")
    engine.seed_everything(0, True)
    assert len(calls) == 1


def test_default_threads_are_the_free_cores_or_omp_num_threads(monkeypatch):
    from ssl_bench.runconfig import TrainConfig

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(8)))
    for load, expected in ((0.2, 8), (2.6, 5), (7.9, 1), (40.0, 1)):
        monkeypatch.setattr(engine.os, "getloadavg", lambda load=load: (load, load, load))
        assert engine.default_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a sweep slot's share
    assert engine.default_threads() == 3 and engine.run_threads(TrainConfig()) == 3
    assert engine.run_threads(TrainConfig(threads=2)) == 2 and engine.eval_workers(TrainConfig()) == 3
