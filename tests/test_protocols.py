"""Protocols: versioned recipes, resolution order, budget scale, run dirs and tags, the data stream."""
import json

import pytest
import torch
from typer.testing import CliRunner

from ssl_bench import engine
from ssl_bench.cli import app
from ssl_bench.config import ConfigError
from ssl_bench.protocols import PROTOCOLS, VERSIONS, get_protocol, list_protocols
from ssl_bench.registry import get_method_class, list_methods
from ssl_bench.runconfig import RunSpec, resolve

#: a protocol's content is pinned to its version: change a recipe -> bump the version and this line.
#: field v1 changed its text once without changing its meaning: CPS's Kaiming/Xavier init, which
#: v1 always ran, was renamed from variant ssl4mis to ssl4mis-2021 (issue 16; was 2121102efe05).
#: field v2 gained the recipes of ABD, AD-MT and UniMatch (issue 20) in the session that made it
#: (was f3ecdb80c99f); no recipe of a method it had changed. It gained SS-Net's and MC-Net+'s ACDC
#: recipes (issue 20; was 1326cc063d90): no field-v2 run of either existed, no other recipe changed.
#: la-field / la-clean v1: ACTION's recipe gained its 3D scripts' T_t 0.6, 128-d heads and ClassMix
#: when ACTION was ported to 3D (issue 19; were 259cd8b71237 / 3d87e3963e9a); until then every LA
#: dataset refused ACTION, so no run of v1 used that recipe, and no other row changed.
FINGERPRINTS = {("field", 1): "cb54ff805a81", ("field", 2): "5ba47552c2cb", ("paper", 1): "611571f03c72",
                ("equal", 1): "32c9a5f7735f", ("la-field", 1): "2f920f7d8f7a", ("la-clean", 1): "d8b075eb8d80"}

FAST = {"iterations": "4", "labeled_bs": "2", "unlabeled_bs": "2", "val_every": "2",
        "checkpoint_every": "2", "log_every": "1", "eval_batch_size": "4"}


def test_every_protocol_content_is_pinned_to_its_version():
    assert {(p.name, p.version): p.fingerprint() for p in list_protocols()} == FINGERPRINTS


@pytest.mark.parametrize("name", sorted([*PROTOCOLS, *(f"{n}-v{k}" for n, v in VERSIONS.items() for k in v)]))
def test_every_protocol_resolves_for_every_method(name):
    """No recipe names a key its method does not have (unknown keys are errors)."""
    for m in list_methods():
        train, method_cfg = resolve(RunSpec(method=m, dataset="tiny-test", protocol=name), get_method_class(m))
        assert train.report_checkpoint in ("best", "last")
        assert train.total_iterations == round(train.iterations * train.budget_scale)


def test_resolution_order_and_budget_scale():
    field = get_protocol("field")
    preset = {"iterations": "600", "labeled_bs": "6", "unlabeled_bs": "6"}
    merged = field.overrides("bcp", preset, {"lr": "0.02", "method.alpha": "0.3"})
    # protocol train < dataset preset < recipe < user
    assert merged["iterations"] == "600" and merged["labeled_bs"] == "6"
    assert merged["method.variant"] == "lcc" and merged["poly_power"] == "0"
    assert merged["lr"] == "0.02" and merged["method.alpha"] == "0.3"
    assert float(merged["budget_scale"]) == pytest.approx(4 / 3)
    spec = RunSpec(method="bcp", dataset="tiny-test", protocol="field", overrides={"iterations": "30000"})
    train, cfg = resolve(spec, get_method_class("bcp"))
    assert (train.iterations, train.total_iterations, train.poly_power) == (30000, 40000, 0.0)
    assert cfg.pretrain_fraction == 0.25 and cfg.variant == "lcc"  # 10k + 30k
    train, _ = resolve(RunSpec(method="action", dataset="tiny-test", protocol="field"), get_method_class("action"))
    assert (train.total_iterations, train.labeled_bs, train.report_checkpoint) == (90000, 4, "last")
    train, cfg = resolve(RunSpec(method="action", dataset="tiny-test", protocol="field"), get_method_class("action"))
    assert cfg.variant == "released"
    assert resolve(RunSpec(method="em", dataset="tiny-test", protocol="field"), get_method_class("em"))[1].variant == "ssl4mis"
    # the user's --set wins over the recipe, budget scale included
    spec = RunSpec(method="bcp", dataset="tiny-test", protocol="field", overrides={"budget_scale": "1"})
    assert resolve(spec, get_method_class("bcp"))[0].total_iterations == 30000
    # paper = today's defaults
    train, cfg = resolve(RunSpec(method="mt", dataset="tiny-test"), get_method_class("mt"))
    assert (train.iterations, train.budget_scale, train.draw_unlabeled, cfg.variant) == (30000, 1.0, False, "paper")
    train, cfg = resolve(RunSpec(method="mt", dataset="tiny-test", protocol="field"), get_method_class("mt"))
    assert (train.rampup.length, train.rampup.quantum, train.rampup.delay, cfg.variant) == (1.0, 0.005, 0.0333, "ssl4mis")
    assert resolve(RunSpec(method="unet-l", dataset="tiny-test", protocol="equal"),
                   get_method_class("unet-l"))[0].draw_unlabeled
    with pytest.raises(ConfigError, match="unknown protocol 'nope'.*field, paper, equal"):
        get_protocol("nope")


def _prepare(tmp_path, method, protocol, seed=0, **extra):
    spec = RunSpec(method=method, dataset="tiny-test", labeled=2, seed=seed, protocol=protocol,
                   overrides={**FAST, **extra})
    return engine.prepare(spec, tmp_path / "data", tmp_path / "results")


def test_run_dir_tags_and_run_name_carry_the_protocol(tmp_path):
    run = _prepare(tmp_path, "unet-l", "field-v1")
    assert run.run_dir.relative_to(tmp_path / "results").parts[:4] == ("tiny-test", "2lab", "field-v1", "unet-l")
    res = engine.fit(run, progress=False)
    tags = json.loads((res.run_dir / "tags.json").read_text())
    assert (tags["protocol"], tags["protocol_version"], tags["report_checkpoint"]) == ("field", "1", "best")
    assert tags["run_name"] == "unet-l / tiny-test / 2 labeled / seed0 / field-v1"
    config = json.loads((res.run_dir / "config.json").read_text())
    assert config["protocol"] == "field" and config["protocol_version"] == 1
    assert config["train"]["supervised_whole_batch"] is True
    assert config["train"]["dice_form"] == "linear"  # v1 leaves the v2 switches at their defaults
    # the same run under another protocol lives elsewhere; "field" is the newest version
    assert _prepare(tmp_path, "unet-l", "paper").run_dir != run.run_dir
    v2 = _prepare(tmp_path, "unet-l", "field")
    assert v2.run_dir.relative_to(tmp_path / "results").parts[2] == "field-v2"
    assert _prepare(tmp_path, "unet-l", "field-v2").run_dir == v2.run_dir


ORIGINAL_MAKE_BATCH = engine.make_batch


def _record_batches(monkeypatch):
    seen = []
    original = ORIGINAL_MAKE_BATCH

    def recording(lb, ulb, cfg, aug, g, device, need_unlabeled):
        batch = original(lb, ulb, cfg, aug, g, device, need_unlabeled)
        seen.append((batch.x_lb_raw.clone(), batch.x_ulb_raw.clone()))
        return batch

    monkeypatch.setattr(engine, "make_batch", recording)
    return seen


def test_equal_gives_every_method_the_same_data_stream(tmp_path, monkeypatch):
    streams = {}
    for protocol in ("equal", "paper"):
        for method in ("unet-l", "mt"):
            seen = _record_batches(monkeypatch)
            engine.fit(_prepare(tmp_path / protocol, method, protocol), progress=False)
            streams[protocol, method] = seen
    eq_l, eq_mt = streams["equal", "unet-l"], streams["equal", "mt"]
    assert len(eq_l) == len(eq_mt) == 4
    for (xl_a, xu_a), (xl_b, xu_b) in zip(eq_l, eq_mt):
        assert torch.equal(xl_a, xl_b) and torch.equal(xu_a, xu_b) and len(xu_a) == 2
    # under paper UNet-L draws no unlabeled slices, so its stream drifts from MT's after step 1
    pa_l, pa_mt = streams["paper", "unet-l"], streams["paper", "mt"]
    assert len(pa_l[0][1]) == 0 and torch.equal(pa_l[0][0], pa_mt[0][0])
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(pa_l[1:], pa_mt[1:]))


def test_field_supervised_methods_fill_the_whole_batch_with_labeled_slices(tmp_path, monkeypatch):
    seen = _record_batches(monkeypatch)
    engine.fit(_prepare(tmp_path, "unet-l", "field"), progress=False)
    assert {len(x_lb) for x_lb, _ in seen} == {4}  # labeled_bs 2 + unlabeled_bs 2


def test_budget_scale_multiplies_the_steps_of_every_stage(tmp_path):
    run = _prepare(tmp_path, "bcp", "field", iterations="6", labeled_bs="4")
    res = engine.fit(run, progress=False)
    assert res.metrics["iterations"] == 8 and res.metrics["stages"] == {"pretrain": 2, "self_train": 6}


def test_mt_ssl4mis_variant_feeds_the_student_clean_unlabeled_slices():
    from ssl_bench.methods.base import Batch, MethodContext
    from ssl_bench.methods.mt import MeanTeacher, MTConfig

    x = torch.rand(2, 1, 16, 16)
    batch = Batch(x_lb=x[:1], y_lb=torch.zeros(1, 16, 16, dtype=torch.long), x_ulb=x[1:], x_ulb_strong=x[1:],
                  x_ulb_raw=x[1:])
    inputs = {}
    for variant in ("paper", "ssl4mis"):
        m = MeanTeacher(MTConfig(variant=variant, noise_std=1.0, noise_clip=1.0), MethodContext(num_classes=2))
        m.student.forward = lambda t, v=variant: inputs.setdefault(v, t) @ torch.zeros(16, 16) + torch.zeros(
            t.shape[0], 2, 16, 16)  # record the input, return dummy logits
        m.teacher.forward = lambda t: torch.zeros(t.shape[0], 2, 16, 16)
        m.training_step(batch, 0)
    assert torch.equal(inputs["ssl4mis"][1:], x[1:]) and not torch.equal(inputs["paper"][1:], x[1:])
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        MeanTeacher(MTConfig(variant="nope"), MethodContext(num_classes=2))


def test_cli_protocols_lists_and_explains():
    runner = CliRunner()
    res = runner.invoke(app, ["protocols"])
    assert res.exit_code == 0 and all(n in res.output for n in ("field", "paper", "equal"))
    res = runner.invoke(app, ["protocols", "field", "--method", "action", "--method", "cps"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "x3" in res.output and "method.variant=ssl4mis" in res.output
    assert "field-v2" in res.output and "augment.mode=none" in res.output and "dice_form=squared" in res.output
    res = runner.invoke(app, ["protocols", "field-v1", "--method", "cps"], env={"COLUMNS": "250"})
    assert res.exit_code == 0 and "field-v1" in res.output and "ssl4mis-2021" in res.output
    res = runner.invoke(app, ["protocols", "nope"])
    assert res.exit_code == 2 and "unknown protocol 'nope'" in res.output


def test_cli_run_rejects_an_unknown_protocol_and_writes_nothing(tmp_path):
    res = CliRunner().invoke(app, ["run", "--method", "mt", "--dataset", "tiny-test", "--labeled", "2",
                                   "--protocol", "nope", "--results-root", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown protocol 'nope'" in res.output
    assert not (tmp_path / "r").exists()


def test_field_recipes_of_the_methods_after_action():
    """ABD as its release runs BCP (10k + 30k at constant lr), AD-MT's ramp quantised by 150 of 30k,
    UniMatch's medical form with a second unlabeled half to mix from; each names its source file."""
    train, cfg = resolve(RunSpec(method="abd", dataset="tiny-test", protocol="field", overrides={"iterations": "30000"}),
                         get_method_class("abd"))
    assert (train.total_iterations, train.poly_power, cfg.variant, cfg.pretrain_fraction) == (40000, 0.0, "released", 0.25)
    train, cfg = resolve(RunSpec(method="ad-mt", dataset="tiny-test", protocol="field"), get_method_class("ad-mt"))
    assert (train.rampup.quantum, train.rampup.length, cfg.rampup, cfg.consistency) == (0.005, None, 0.25, 2.0)
    train, cfg = resolve(RunSpec(method="unimatch", dataset="tiny-test", protocol="field"), get_method_class("unimatch"))
    assert (train.labeled_bs, train.unlabeled_bs, cfg.variant, train.report_checkpoint) == (12, 24, "medical", "best")
    for m in ("abd", "ad-mt", "unimatch", "ssnet", "mcnet"):
        assert "at " in get_protocol("field").recipe(m).source and ".py" in get_protocol("field").recipe(m).source


def test_field_recipe_of_mcnet_plus_on_acdc():
    """MC-Net+'s train_mcnet_2d.py: lamda 1 on the all-class Dice, consistency 0.1 on SSL4MIS's ramp,
    constant lr, the bilinear decoder tested; field v2 only (v1 keeps the paper defaults)."""
    train, cfg = resolve(RunSpec(method="mcnet", dataset="tiny-test", protocol="field"), get_method_class("mcnet"))
    assert (cfg.variant, cfg.lamda, cfg.consistency, cfg.rampup, cfg.dice_classes, cfg.test_decoder) == \
        ("v2", 1.0, 0.1, 1.0, "all", "linear")
    assert (train.poly_power, train.rampup.quantum, train.dice_form, train.iterations) == (0.0, 0.005, "squared", 30000)
    assert "train_mcnet_2d.py" in get_protocol("field").recipe("mcnet").source
    _, v1 = resolve(RunSpec(method="mcnet", dataset="tiny-test", protocol="field-v1"), get_method_class("mcnet"))
    assert (v1.lamda, v1.dice_classes, v1.test_decoder) == (0.5, "foreground", "transposed")
