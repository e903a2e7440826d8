"""The switches of protocol ``field`` v2 (issue 16), each against a hand-computed value or a
distribution: squared soft Dice, nearest test resampling, the ``ssl4mis`` augmentation mode, the
empty-prediction ASD policy, CPS init, and the protocol that sets them."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_bench.losses import dice_loss, supervised_loss
from ssl_bench.registry import list_methods
from ssl_bench.testing import tiny_setup


# -- dice_form ----------------------------------------------------------------------------------
def _two_pixel_logits():
    """B=1, C=2, H=1, W=2: p(class 1) = [0.8, 0.4], p(class 0) = [0.2, 0.6]; labels [1, 0]."""
    p1 = torch.tensor([0.8, 0.4])
    probs = torch.stack([1 - p1, p1])[None, :, None, :]  # (1, 2, 1, 2)
    return probs.log(), torch.tensor([[[1, 0]]])


def test_dice_forms_against_hand_computed_values():
    logits, y = _two_pixel_logits()
    # class 1: 2 * 0.8 / (1.2 + 1) linear, / (0.64 + 0.16 + 1) squared
    # class 0: 2 * 0.6 / (0.8 + 1) linear, / (0.04 + 0.36 + 1) squared
    linear = 1 - (1.6 / 2.2 + 1.2 / 1.8) / 2
    squared = 1 - (1.6 / 1.8 + 1.2 / 1.4) / 2
    assert float(dice_loss(logits, y)) == pytest.approx(linear, abs=1e-5)
    assert float(dice_loss(logits, y, form="linear")) == pytest.approx(linear, abs=1e-5)
    assert float(dice_loss(logits, y, form="squared")) == pytest.approx(squared, abs=1e-5)
    ce = -(math.log(0.8) + math.log(0.6)) / 2
    assert float(supervised_loss(logits, y, dice_form="squared")) == pytest.approx(0.5 * (ce + squared), abs=1e-5)
    with pytest.raises(ValueError, match="dice_form"):
        dice_loss(logits, y, form="cubed")


def test_bcp_masked_dice_squared_against_hand_computed_value():
    from ssl_bench.methods.bcp import masked_supervised_loss

    logits, y = _two_pixel_logits()
    region = torch.tensor([[1.0, 0.0]])  # only the first pixel: p1 = 0.8, label 1
    # class 1: 2 * 0.8 / (0.64 + 1); class 0: (0 + eps) / (0.04 + 0 + eps) ~ 0
    dice = (1.6 / 1.64 + 1e-5 / (0.04 + 1e-5)) / 2
    want = 0.5 * (-math.log(0.8) + 1 - dice)
    got = masked_supervised_loss(logits, y, region, dice_form="squared")
    assert float(got) == pytest.approx(want, abs=1e-5)
    lin = 0.5 * (-math.log(0.8) + 1 - (1.6 / 1.8 + 1e-5 / (0.2 + 1e-5)) / 2)
    assert float(masked_supervised_loss(logits, y, region)) == pytest.approx(lin, abs=1e-5)


def test_dice_form_reaches_every_method():
    """Every registered method's supervised term goes through the run's ``dice_form``: in at
    least one stage the same step (same seed, same batch) gives a different loss."""
    for name in list_methods():
        method, batch = tiny_setup(name)
        stages = [s.name for s in method.stages()]
        differs = False
        for stage in stages:
            losses = {}
            for form in ("linear", "squared"):
                m, b = tiny_setup(name)
                m.ctx.dice_form = form
                m.set_stage(stage)
                m.train(True)
                torch.manual_seed(1)
                losses[form] = float(m.training_step(b, m.ctx.total_iterations - 1).loss.detach())
            differs |= not math.isclose(losses["linear"], losses["squared"], rel_tol=1e-6)
        assert differs, f"{name}: dice_form does not change any stage's loss"


# -- eval_resample ------------------------------------------------------------------------------
def test_nearest_resampling_against_hand_computed_case():
    """2x2 slice -> 4x4 training size -> back. scipy zoom(order=0) samples input coordinate
    i (n_in - 1) / (n_out - 1), rounded half up: 2 -> 4 takes rows/cols [0, 0, 1, 1], 4 -> 2 takes
    [0, 3]. Bilinear (align_corners False) averages each 2x2 block on the way back."""
    from ssl_bench.evaluate import predict_volume, zoom_index

    assert zoom_index(2, 3).tolist() == [0, 1, 1]
    assert zoom_index(3, 5).tolist() == [0, 1, 1, 2, 2]
    assert zoom_index(2, 4).tolist() == [0, 0, 1, 1]
    assert zoom_index(4, 2).tolist() == [0, 3]
    seen = []
    pattern = torch.zeros(4, 4)  # class 1 where set: 3 of the top-left block, one corner pixel
    pattern[0, 1] = pattern[1, 0] = pattern[1, 1] = pattern[3, 3] = 1

    def predictor(x):
        seen.append(x.clone())
        return torch.stack([1 - pattern, pattern])[None].expand(x.shape[0], -1, -1, -1) * 10

    image = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]).numpy()
    out = predict_volume(predictor, image, 4, "cpu", resample="nearest")
    assert seen[0][0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert out[0].tolist() == [[0, 0], [0, 1]]  # the pattern at rows/cols [0, 3]
    # the default: a blended input, probabilities averaged per block (0.75 top-left, 0.25 bottom-right)
    seen.clear()
    out_b = predict_volume(predictor, image, 4, "cpu")
    assert seen[0][0, 0, 0, 1].item() not in (0.0, 1.0)
    assert out_b[0].tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match="eval_resample"):
        predict_volume(predictor, image, 4, "cpu", resample="cubic")


# -- augment.mode -------------------------------------------------------------------------------
def _geometry_fractions(aug, n_draws=1000, size=64):
    """Classify ``n_draws`` weak views of one random (asymmetric) slice: identity, one of the 4
    reflections of the square, a proper 90/180/270 rotation, a rotation by an integer angle in
    [-20, 20] (within 5 % of the pixels of scipy's ``rotate(order=0, reshape=False)``), or
    something else (a crop, a zoom, a composed warp). Labels must follow the image pixel for pixel."""
    import numpy as np
    import scipy.ndimage as nd

    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] * 1000).long()  # every pixel its own label value
    xw, yw = aug.weak(x.expand(n_draws, -1, -1, -1).contiguous(), y.expand(n_draws, -1, -1).contiguous(),
                      torch.Generator().manual_seed(1))
    a = x[0, 0].numpy()
    reflections = [np.flip(np.rot90(a, k), ax) for k in range(4) for ax in (0, 1)]
    rotations90 = [np.rot90(a, k) for k in range(1, 4)]
    rotations = np.stack([nd.rotate(a, d, order=0, reshape=False) for d in range(-20, 21)])
    counts = dict.fromkeys(("identity", "reflection", "rot90", "rotation", "other"), 0)
    labels_follow = True
    for o, lab in zip(xw[:, 0].numpy(), yw.numpy()):
        labels_follow &= bool(np.array_equal((o * 1000).astype(np.int64), lab))
        if np.array_equal(o, a):
            counts["identity"] += 1
        elif any(np.array_equal(o, r) for r in reflections):
            counts["reflection"] += 1
        elif any(np.array_equal(o, r) for r in rotations90):
            counts["rot90"] += 1
        elif (rotations != o).mean(axis=(1, 2)).min() < 0.05:
            counts["rotation"] += 1
        else:
            counts["other"] += 1
    return {k: v / n_draws for k, v in counts.items()}, labels_follow


def _is_ssl4mis_distribution(fr) -> bool:
    """p 0.5 a reflection, p 0.25 a small rotation (angle 0 of 40 counts as identity), p 0.25
    nothing; never a proper 90-degree rotation, a crop or a zoom (0.04 is 4 standard deviations at 1000 draws)."""
    return (abs(fr["identity"] - 0.25) < 0.04 and abs(fr["reflection"] - 0.5) < 0.05
            and abs(fr["rotation"] - 0.25) < 0.04 and fr["rot90"] == 0 and fr["other"] == 0)


def test_ssl4mis_augmentation_distribution_with_negative_control():
    from ssl_bench.augment import Augmenter, AugmentConfig

    fr, labels_follow = _geometry_fractions(Augmenter(AugmentConfig(mode="ssl4mis")))
    assert _is_ssl4mis_distribution(fr), fr
    assert labels_follow  # nearest for image and label: the same pixel moves in both
    # negative control: today's default (8 symmetries, rotation, crop-zoom, bilinear) fails it
    fr_default, _ = _geometry_fractions(Augmenter(AugmentConfig()), n_draws=200)
    assert not _is_ssl4mis_distribution(fr_default), fr_default
    assert fr_default["other"] > 0.5


def test_augment_mode_none_and_unknown():
    from ssl_bench.augment import Augmenter, AugmentConfig

    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 4, (3, 8, 8))
    xw, yw = Augmenter(AugmentConfig(mode="none")).weak(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(xw, x) and torch.equal(yw, y)
    with pytest.raises(ValueError, match="augment.mode"):
        Augmenter(AugmentConfig(mode="random"))


# -- the protocol -------------------------------------------------------------------------------
def test_field_v2_sets_every_switch_and_v1_none():
    from ssl_bench.protocols import get_protocol
    from ssl_bench.registry import get_method_class
    from ssl_bench.runconfig import RunSpec, resolve

    assert get_protocol("field").version == 2 and get_protocol("field-v2") is get_protocol("field")
    assert get_protocol("field-v1").version == 1
    for m in list_methods():
        v2, cfg2 = resolve(RunSpec(method=m, dataset="tiny-test", protocol="field"), get_method_class(m))
        assert (v2.dice_form, v2.eval_resample, v2.empty_asd) == ("squared", "nearest", "zero"), m
        assert v2.augment.mode == ("none" if m == "action" else "ssl4mis"), m
        v1, cfg1 = resolve(RunSpec(method=m, dataset="tiny-test", protocol="field-v1"), get_method_class(m))
        assert (v1.dice_form, v1.eval_resample, v1.empty_asd, v1.augment.mode) == \
            ("linear", "bilinear", "diagonal", "harness"), m
        if m == "cps":
            assert (cfg2.variant, cfg1.variant) == ("ssl4mis", "ssl4mis-2021")


# -- empty_asd ----------------------------------------------------------------------------------
def test_empty_prediction_asd_policy():
    import numpy as np

    from ssl_bench.metrics import case_metrics

    label = np.zeros((2, 4, 4), dtype=np.int64)
    label[:, 1:3, 1:3] = 1  # class 1 present in the label
    label[0, 0, 0] = 2      # class 2 too
    pred = np.zeros_like(label)
    pred[0, 0, 0] = 2       # class 1 missed entirely, class 2 exact
    diag = case_metrics(pred, label, ["bg", "a", "b"], (1.0, 1.0, 1.0))["classes"]
    zero = case_metrics(pred, label, ["bg", "a", "b"], (1.0, 1.0, 1.0), empty_asd="zero")["classes"]
    assert diag["a"]["rule"] == "pred_empty" and diag["a"]["dice"] == zero["a"]["dice"] == 0.0
    assert diag["a"]["asd_vox"] == pytest.approx(math.sqrt(2 ** 2 + 4 ** 2 + 4 ** 2))  # volume diagonal
    assert zero["a"]["asd_vox"] == zero["a"]["hd95_mm"] == zero["a"]["assd_vox"] == 0.0
    assert zero["b"] == diag["b"] and zero["b"]["asd_vox"] == 0.0 and zero["b"]["dice"] == 1.0
    # a hallucinated class (label empty) keeps the diagonal under both: upstream has no value there
    pred2 = pred.copy()
    pred2[1, 3, 3] = 2
    label2 = label.copy()
    label2[0, 0, 0] = 0
    z2 = case_metrics(pred2, label2, ["bg", "a", "b"], (1.0, 1.0, 1.0), empty_asd="zero")["classes"]
    assert z2["b"]["rule"] == "label_empty" and z2["b"]["asd_vox"] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="empty_asd"):
        case_metrics(pred, label, ["bg", "a", "b"], (1.0, 1.0, 1.0), empty_asd="nan")


def test_table_footnote_names_the_empty_asd_policy():
    import pandas as pd

    from ssl_bench.table.model import empty_asd_line

    assert "volume diagonal" in empty_asd_line(pd.DataFrame({"method": ["mt"]}))  # runs before the key
    assert "0, as the ACTION and BCP" in empty_asd_line(pd.DataFrame({"as_run.empty_asd": ["zero", "zero"]}))
    assert "mixed" in empty_asd_line(pd.DataFrame({"as_run.empty_asd": ["zero", "diagonal"]}))


# -- CPS init -----------------------------------------------------------------------------------
def test_cps_ssl4mis_keeps_default_init_and_2021_reinitialises():
    """``ssl4mis`` (SSL4MIS since 9a74d15): both nets equal a default-initialised backbone under
    the same seeds; ``ssl4mis-2021``: conv weights re-drawn Kaiming-normal (net1, std sqrt(2/fan_in))
    and Xavier-normal (net2), BatchNorm weight 1 and bias 0."""
    from torch import nn

    from ssl_bench.nets import create_backbone

    new, _ = tiny_setup("cps", {"variant": "ssl4mis"})
    torch.manual_seed(0)
    reference = create_backbone("unet", 1, 4)
    assert all(torch.equal(a, b) for a, b in zip(new.net1.state_dict().values(), reference.state_dict().values()))
    old, _ = tiny_setup("cps", {"variant": "ssl4mis-2021"})
    assert not torch.equal(old.net1.state_dict()[next(iter(old.net1.state_dict()))],
                           new.net1.state_dict()[next(iter(new.net1.state_dict()))])
    convs1 = [m for m in old.net1.modules() if isinstance(m, nn.Conv2d) and m.weight[0].numel() >= 256]
    convs2 = [m for m in old.net2.modules() if isinstance(m, nn.Conv2d) and m.weight[0].numel() >= 256]
    for c in convs1:  # kaiming_normal_, fan_in mode, gain sqrt(2)
        want = math.sqrt(2 / c.weight[0].numel())
        assert float(c.weight.std()) == pytest.approx(want, rel=0.15)
    for c in convs2:  # xavier_normal_: sqrt(2 / (fan_in + fan_out))
        rf = c.weight[0, 0].numel()
        want = math.sqrt(2 / (c.weight.shape[1] * rf + c.weight.shape[0] * rf))
        assert float(c.weight.std()) == pytest.approx(want, rel=0.15)
    for m in old.net1.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    # the default (uniform, kaiming_uniform_ with a = sqrt(5)) has std sqrt(1 / (3 fan_in)): not Kaiming-normal's
    c = [m for m in new.net1.modules() if isinstance(m, nn.Conv2d) and m.weight[0].numel() >= 256][0]
    assert float(c.weight.std()) == pytest.approx(math.sqrt(1 / (3 * c.weight[0].numel())), rel=0.15)


# -- ACTION released strong view ----------------------------------------------------------------
def test_release_perturbation_distribution():
    from ssl_bench.methods.action_mix import gaussian_blur, release_perturbation

    g = torch.Generator().manual_seed(0)
    n = 2000
    # constant slices: blur and contrast keep them, brightness scales them by b in [0.75, 1.25]
    const = torch.full((n, 1, 12, 12), 2.0)
    out = release_perturbation(const, g)
    ratio = out[:, 0, 0, 0] / 2.0
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out), atol=1e-5)  # still constant
    assert float(ratio.min()) >= 0.75 - 1e-5 and float(ratio.max()) <= 1.25 + 1e-5
    assert abs(float(((ratio - 1).abs() > 1e-6).float().mean()) - 0.5) < 0.05  # jitter p 0.5
    # random slices: untouched with p 0.25 (no jitter, no blur)
    x = torch.rand(n, 1, 12, 12, generator=g)
    same = (release_perturbation(x, g) == x).flatten(1).all(1).float().mean()
    assert abs(float(same) - 0.25) < 0.04
    # the blur: an interior delta keeps its mass and spreads more for a larger sigma
    delta = torch.zeros(2, 1, 15, 15)
    delta[:, :, 7, 7] = 1
    b = gaussian_blur(delta, torch.tensor([0.15, 1.15]))
    assert torch.allclose(b.sum((1, 2, 3)), torch.ones(2), atol=1e-5)
    assert float(b[0, 0, 7, 7]) > 0.99 and float(b[1, 0, 7, 7]) < 0.2


def test_action_released_strong_view_mixes_the_weak_view_then_perturbs(monkeypatch):
    import ssl_bench.methods.action as action_mod

    method, batch = tiny_setup("action", {"variant": "released", "strong_view": "released"})
    method.set_stage("iii")
    seen = {}
    original = action_mod.release_perturbation

    def spy(x, g):
        seen["in"] = x.clone()
        return original(x, g)

    monkeypatch.setattr(action_mod, "release_perturbation", spy)
    out = method.training_step(batch, 0)
    assert torch.isfinite(out.loss)
    # the perturbed input is a CutMix of the *weak* view (each pixel from image i or i + 1)
    x = batch.x_ulb
    mixed = seen["in"]
    from_self, from_next = mixed == x, mixed == x.roll(-1, 0)
    assert bool((from_self | from_next).all()) and bool((~from_self).any())
    with pytest.raises(Exception, match="strong_view"):
        tiny_setup("action", {"strong_view": "fancy"})


# -- end to end ---------------------------------------------------------------------------------
def test_field_v2_run_end_to_end(tmp_path):
    """A tiny run under ``field`` (v2): its config, eval summary and optimiser carry the switches."""
    import json

    from ssl_bench import engine
    from ssl_bench.runconfig import RunSpec

    fast = {"iterations": "2", "labeled_bs": "2", "unlabeled_bs": "2", "val_every": "2",
            "checkpoint_every": "2", "log_every": "1", "eval_batch_size": "4", "nesterov": "true"}
    spec = RunSpec(method="unet-l", dataset="tiny-test", labeled=2, protocol="field", overrides=fast)
    run = engine.prepare(spec, tmp_path / "data", tmp_path / "results")
    res = engine.fit(run, progress=False)
    config = json.loads((res.run_dir / "config.json").read_text())
    train = config["train"]
    assert (config["protocol"], config["protocol_version"]) == ("field", 2)
    assert (train["dice_form"], train["eval_resample"], train["empty_asd"], train["augment"]["mode"]) == \
        ("squared", "nearest", "zero", "ssl4mis")
    summary = json.loads((res.run_dir / "test_best_summary.json").read_text())
    assert summary["policy"]["empty_asd"] == "zero"
    latest = torch.load(res.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert latest["optimizer"]["param_groups"][0]["nesterov"] is True


def test_field_v2_action_sets_nesterov_only_for_action():
    from ssl_bench.config import ConfigError
    from ssl_bench.registry import get_method_class
    from ssl_bench.runconfig import RunSpec, TrainConfig, resolve

    for m in ("action", "mt"):
        train, _ = resolve(RunSpec(method=m, dataset="tiny-test", protocol="field"), get_method_class(m))
        assert train.nesterov is (m == "action")
    with pytest.raises(ConfigError, match="nesterov"):
        TrainConfig(nesterov=True, momentum=0.0)
