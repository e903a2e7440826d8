"""The lean step (ssl_bench/step.py, ssl_bench/sampling.py): same losses and weights as the
reference loop, divergence still caught and named, compile falling back, options checked."""
import json
import math

import pytest
import torch

from ssl_bench import engine, step as step_mod
from ssl_bench.runconfig import RunSpec
from ssl_bench.step import StepMonitor, TrainingDiverged

FAST = {"iterations": "6", "labeled_bs": "2", "unlabeled_bs": "2", "val_every": "3",
        "checkpoint_every": "2", "log_every": "2", "eval_batch_size": "4", "eval_workers": "1"}
#: the loop before issue 11: a read-back every step, batches gathered and augmented on the CPU
REFERENCE = {"lean": "false", "sampling": "host"}


def _fit(tmp_path, method="mt", **extra):
    spec = RunSpec(method=method, dataset="tiny-test", labeled=2, seed=0, overrides={**FAST, **extra})
    run = engine.prepare(spec, tmp_path / "data", tmp_path / "results")
    return run, engine.fit(run, progress=False)


def _logged(run_dir):
    """log.jsonl without wall times (they differ from run to run)."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for r in rows:
        r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.startswith("time/")}
    return [r for r in rows if r["metrics"]]


def _weights(run_dir, name="last"):
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=False)["predictor"]


@pytest.mark.parametrize("method", ["mt", "dan", "gcl"])  # plain, an auxiliary optimiser, three stages
def test_lean_step_gives_the_reference_losses_and_weights(tmp_path, method):
    _, lean = _fit(tmp_path / "lean", method)
    _, ref = _fit(tmp_path / "ref", method, **REFERENCE)
    a, b = _logged(lean.run_dir), _logged(ref.run_dir)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    assert [x["metrics"] for x in a] == [x["metrics"] for x in b]  # identical numbers, same steps
    assert any(k.endswith("/loss") for x in a for k in x["metrics"])
    wa, wb = _weights(lean.run_dir), _weights(ref.run_dir)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert lean.metrics["flat"] == ref.metrics["flat"]


def test_losses_are_logged_on_the_cadence_with_the_steps_own_values(tmp_path):
    _, res = _fit(tmp_path, iterations="7", log_every="3")
    train = [x for x in _logged(res.run_dir) if "train/loss" in x["metrics"]]
    assert [x["step"] for x in train] == [1, 4, 7]  # steps 0, 3 and the last (6), counted from 1
    for x in train:
        m = x["metrics"]
        assert set(m) == {"train/loss", "train/sup", "train/consistency", "train/w_cons", "train/lr"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_monitor_reads_back_the_last_step_and_names_the_first_bad_one():
    mon = StepMonitor("ckpts")
    assert mon.read() == {}
    mon.record("train", 0, torch.tensor(1.5), {"sup": torch.tensor(0.5), "w": 0.1})
    mon.record("train", 1, torch.tensor(2.5, requires_grad=True) * 1, {"sup": torch.tensor(0.25), "w": 0.2})
    assert mon.read() == {"loss": 2.5, "sup": 0.25, "w": 0.2}
    assert mon.read() == {"loss": 2.5, "sup": 0.25, "w": 0.2}  # nothing new: the last values
    mon.record("ii", 7, torch.tensor(1.0), {})
    mon.record("ii", 8, torch.tensor(float("inf")), {"sup": torch.tensor(3.0)})
    mon.record("ii", 9, torch.tensor(float("nan")), {})
    with pytest.raises(TrainingDiverged, match=r"loss became inf at stage 'ii', step 8 \(terms: sup=3\)"):
        mon.read()


def test_monitor_keeps_one_record_per_step_when_a_step_is_rerun():
    mon = StepMonitor("ckpts")
    mon.record("train", 4, torch.tensor(float("nan")), {})  # the failed compiled attempt
    mon.record("train", 4, torch.tensor(0.75), {})  # its rerun
    assert mon.read() == {"loss": 0.75}


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


def test_compile_failure_warns_rolls_back_and_trains_like_eager(tmp_path, monkeypatch):
    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", _failing_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile failed in the first step"):
        _, compiled = _fit(tmp_path / "c", compile="true")
    _, eager = _fit(tmp_path / "e")
    assert compiled.status == "finished"
    # the failed first step was rolled back (weights, optimiser, RNG): training is the eager one
    assert [x["metrics"] for x in _logged(compiled.run_dir)] == [x["metrics"] for x in _logged(eager.run_dir)]
    wc, we = _weights(compiled.run_dir), _weights(eager.run_dir)
    assert all(torch.equal(wc[k], we[k]) for k in wc)


class _TrainingOnlyBackend:
    """A dynamo backend that runs training graphs as traced and fails on an inference graph (one
    traced without gradients: for UNet-L, whose step has none, validation's and testing's)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        if not torch.is_grad_enabled():
            raise RuntimeError("this compiler fails on inference graphs")
        self.graphs += 1
        return gm.forward


def test_validation_and_test_run_eager_so_a_compile_failure_there_cannot_crash(tmp_path, monkeypatch):
    """Review D5: validation and testing call the networks without gradients, in eval mode, with
    batches of every size up to eval_batch_size; compiled, each was a new graph outside the
    first-step guard, so a compiler failing there crashed the run (reproduced with this backend
    before the change: RuntimeError in the first validation). Now they run eager: the run
    finishes, training compiled and never fell back, and no inference graph was compiled."""
    import warnings

    torch._dynamo.reset()
    backend = _TrainingOnlyBackend()
    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        _, res = _fit(tmp_path / "c", "unet-l", compile="true", eval_batch_size="3")
    assert res.status == "finished" and backend.graphs > 0


def test_compiled_step_runs_compiled_and_matches_eager(monkeypatch):
    """With the ``eager`` backend (dynamo traces the network, no code generation) the step runs
    through the compiled call and computes what the plain step computes."""
    import warnings

    from ssl_bench.testing import tiny_setup

    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", "eager")
    losses = []
    for compile_ in (True, False):
        method, batch = tiny_setup("unet-l", size=32, seed=3)
        method.train(True)
        assert step_mod.prepare_modules(method, channels_last=False, compile=compile_) is compile_
        opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        runner = step_mod.StepRunner(method, opt, {}, scaler, torch.device("cpu"), False, torch.bfloat16,
                                     compiled=compile_)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback
            torch.manual_seed(0)
            losses.append([float(runner(batch, s).loss.detach()) for s in range(2)])
        assert runner.compiled is compile_
        assert (method.student.encoder._compiled_call_impl is not None) is compile_
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def _step_calls_into_compiled_graphs(name: str, backend) -> dict[str, int]:
    """Graphs entered during one step of every stage of ``name``, with ``backend`` counting."""
    from ssl_bench.testing import tiny_setup

    method, batch = tiny_setup(name, size=32, seed=1)
    method.train(True)
    step_mod.prepare_modules(method, channels_last=False, compile=True)
    calls = {}
    for stage in method.stages():
        method.set_stage(stage.name)
        opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01)
        aux = {k: method.make_aux_optimizer(k, v) for k, v in method.aux_parameters().items()}
        runner = step_mod.StepRunner(method, opt, aux, torch.amp.GradScaler("cuda", enabled=False),
                                     torch.device("cpu"), False, torch.bfloat16, compiled=True)
        before = backend.calls
        runner(batch, 5)
        assert runner.compiled, f"{name} {stage.name}: fell back to eager"
        calls[stage.name] = backend.calls - before
    return calls


class _CountingBackend:
    """A dynamo backend that runs the traced graph as it is and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, gm, example_inputs):
        def run(*args):
            self.calls += 1
            return gm.forward(*args)
        return run


def test_urpc_which_calls_forward_features_runs_through_compiled_graphs(monkeypatch):
    backend = _CountingBackend()
    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    assert all(n > 0 for n in _step_calls_into_compiled_graphs("urpc", backend).values())


@pytest.mark.slow  # dynamo traces every method's networks: minutes on 2 shared cores
def test_every_stage_of_every_method_runs_through_compiled_graphs(monkeypatch):
    """``compile=true`` compiles what the step calls (issue 18): ACTION, CCT, URPC, GCL and SCS
    reach the backbone through ``forward_features``/``encode``/``decode``, never ``forward``, so
    compiling the networks' ``__call__`` left every one of their steps eager. One dynamo cache
    for all methods (their U-Nets share the traced graphs), so this stays a few seconds a method."""
    from ssl_bench.registry import list_methods

    backend = _CountingBackend()
    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    calls = {name: _step_calls_into_compiled_graphs(name, backend) for name in list_methods()}
    eager = {name: stages for name, stages in calls.items() if not all(n > 0 for n in stages.values())}
    assert not eager, f"stages that entered no compiled graph: {eager}"
    assert {"action", "cct", "urpc"} <= set(calls)


@pytest.mark.slow
def test_inductor_compiles_graphs_for_a_method_that_calls_features_outside_forward(monkeypatch):
    """CPU inductor (C++ code generation) on URPC, which calls ``forward_features``, never
    ``forward``: dynamo's graph counter moves and nothing falls back. A forward pass without
    gradients keeps the compile to inference graphs (the training step compiles the same units
    with their backward: over 10 minutes on the shared 2-core machine). Skipped, saying why,
    without a C compiler."""
    import shutil

    from ssl_bench.testing import tiny_setup

    if not (shutil.which("gcc") or shutil.which("g++") or shutil.which("cc")):
        pytest.skip("no C/C++ compiler on PATH: CPU inductor cannot generate code here")
    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", "inductor")
    torch._dynamo.reset()
    method, batch = tiny_setup("urpc", size=32, seed=1)
    method.train(True)
    step_mod.prepare_modules(method, channels_last=False, compile=True)
    before = step_mod.compiled_graphs()
    with torch.no_grad():
        out = method.training_step(batch, 5)
    assert torch.isfinite(out.loss)
    assert step_mod.compiled_graphs() - before >= 2  # the encoder and the decoder


def test_compile_units_find_the_backbone_parts_and_the_heads():
    from ssl_bench.testing import tiny_setup

    method, _ = tiny_setup("action", size=16)
    units = [u for m in method.modules().values() for u in step_mod.compile_units(m)]
    student = method.net
    for part in (student.backbone.encoder, student.backbone.decoder, student.global_head, student.local_head,
                 method.rep_head.mlp, method.teacher.backbone.encoder):
        assert any(u is part for u in units), type(part).__name__
    assert not any(u is student or u is student.backbone for u in units)  # called through other entry points


def test_channels_last_networks_compute_the_same_and_a_run_finishes(tmp_path):
    """Channels-last changes the memory layout only: the same outputs up to the rounding of other
    convolution kernels (in eval mode: dropout draws its masks in memory order, so training
    steps draw other masks from the same distribution)."""
    import copy

    from ssl_bench.testing import tiny_setup

    method, batch = tiny_setup("mt", size=32)
    plain = copy.deepcopy(method.student).eval()
    step_mod.prepare_modules(method, channels_last=True, compile=False)
    cl = method.student.eval()
    assert cl.encoder.levels[0].body[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(cl(batch.x_lb), plain(batch.x_lb), atol=1e-5)
    _, res = _fit(tmp_path, channels_last="true")
    assert res.status == "finished"
    assert all(math.isfinite(v) for r in _logged(res.run_dir) for v in r["metrics"].values())


def test_amp_float16_on_a_cpu_is_refused_with_the_fix_before_any_write(tmp_path):
    with pytest.raises(ValueError, match="amp_dtype=float16 needs a CUDA device; use amp_dtype=bfloat16"):
        _fit(tmp_path, amp="true", amp_dtype="float16", device="cpu")
    assert not (tmp_path / "results").exists()


def test_unknown_sampling_is_a_config_error(tmp_path):
    from ssl_bench.config import ConfigError

    with pytest.raises(ConfigError, match="sampling"):
        _fit(tmp_path, sampling="gpu")


def test_multi_tensor_ema_is_the_per_tensor_update_bit_for_bit():
    """ssl_bench.ema.ema_update (foreach ops) against the plain loop, parameters and buffers."""
    import copy

    from ssl_bench.ema import ema_update
    from ssl_bench.nets import create_backbone

    torch.manual_seed(0)
    student = create_backbone("unet", 1, 4)
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        for b in student.buffers():
            b.add_(1) if b.dtype.is_floating_point else b.fill_(7)  # running stats and step counts
    expected = copy.deepcopy(teacher)
    with torch.no_grad():
        for t, s in zip(list(expected.parameters()) + list(expected.buffers()),
                        list(student.parameters()) + list(student.buffers())):
            t.mul_(0.99).add_(s, alpha=0.01) if t.dtype.is_floating_point else t.copy_(s)
    ema_update(teacher, student, 0.99)
    for (name, a), b in zip(teacher.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name
