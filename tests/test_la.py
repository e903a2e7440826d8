"""The 3D Left Atrium track (issue 19): dataset layouts and splits, the V-Net, patches and their
augmentation, sliding-window inference, LCC, 3D metrics against medpy, the LA protocols, methods
on 3D patches, and a run end to end on tiny synthetic volumes in UA-MT's layout."""
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from la_fakes import make_la, scan_id, tiny_la_run
from ssl_bench import engine
from ssl_bench.cli import app
from ssl_bench.config import ConfigError
from ssl_bench.datasets.base import DataError
from ssl_bench.registry import get_dataset_class, get_method_class
from ssl_bench.runconfig import RunSpec, config_hash, resolve, resolved_dict
from ssl_bench.schedules import learning_rate
from ssl_bench.volumetric import (NOT_IN_3D, RUNS_IN_3D, PatchPool, SlidingWindow, VolumeSet, largest_component,
                                  rot_flip, window_starts)

runner = CliRunner()


# -- dataset --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout, sub", [("ua-mt", ""), ("mc-net", "data/LA")])
def test_both_layouts_and_the_field_split(tmp_path, layout, sub):
    root = make_la(tmp_path / "d", layout=layout)
    ds = get_dataset_class("la")(root)
    assert ds.base == (root / sub).resolve()
    train = (ds.base / "train.list").read_text().split()
    split = ds.make_split(labeled=4)
    assert split.labeled == train[:4]  # the first N lines of train.list
    assert split.test == [scan_id(i) for i in range(20, 24)]
    assert len(split.val) == 2 and not set(split.val) & set(train[:16])  # carved after line 16
    assert sorted(split.labeled + split.unlabeled + split.val) == sorted(train)
    assert split.meta["val_carved_from_train"]
    assert ds.make_split(ratio=0.1).labeled == train[:2]


def test_random_split_and_the_persisted_validation(tmp_path):
    ds = get_dataset_class("la")(make_la(tmp_path / "d"))
    a, b = ds.make_split(labeled=4, split="random", split_seed=1), ds.make_split(labeled=4, split="random", split_seed=2)
    assert a.labeled != b.labeled and a.val == b.val == ds.make_split(labeled=4).val
    assert not set(a.labeled) & set(a.val)
    # validation=test / none (the field's LA recipes): carved scans return to the unlabeled pool
    on_test = engine.with_validation(a, "test")
    assert on_test.val == a.test and set(a.val) <= set(on_test.unlabeled)
    assert engine.with_validation(a, "none").val == [] and engine.with_validation(a, "split") is a


def test_a_partial_layout_names_the_missing_scans(tmp_path):
    root = make_la(tmp_path / "d", skip=(scan_id(3), scan_id(21)))
    ds = get_dataset_class("la")(root)
    refs, problems = ds.scan()
    text = " ".join(str(p) for p in problems)
    assert len(refs) == 22 and scan_id(3) in text and scan_id(21) in text
    with pytest.raises(DataError, match=scan_id(3)):
        ds.make_split(labeled=4)
    res = runner.invoke(app, ["data", "prepare", "la", str(root)])
    assert res.exit_code == 1 and scan_id(3) in res.output and scan_id(21) in res.output
    with pytest.raises(DataError, match="no Left Atrium data"):
        get_dataset_class("la")(tmp_path).base


def test_data_prepare_and_info_validate_la(tmp_path):
    root = make_la(tmp_path / "d")
    res = runner.invoke(app, ["data", "prepare", "la", str(root)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "info", "la", str(root), "--json"])
    info = json.loads(res.stdout[res.stdout.index("{"):])
    assert info["cases"] == 24 and info["subsets"] == {"train": 20, "test": 4} and not info["problems"]
    assert info["spacing_mm"]["z"]["min"] == 0.625


def test_cases_come_back_as_zyx_and_la_small_halves_them(tmp_path):
    root = make_la(tmp_path / "d")
    case = get_dataset_class("la")(root).load_case(scan_id(0))
    assert case.image.shape == (20, 36, 40) and case.label.dtype == np.uint8 and case.spacing == (0.625,) * 3
    small = get_dataset_class("la-small")(root).load_case(scan_id(0))
    assert small.image.shape == (10, 18, 20) and small.spacing == (1.25,) * 3
    assert 0 < small.label.sum() < case.label.sum()


# -- V-Net ----------------------------------------------------------------------------------------
def test_vnet_has_the_fields_parameter_count_and_shape():
    from ssl_bench.nets import create_backbone

    net = create_backbone("vnet", 1, 2)
    assert sum(p.numel() for p in net.parameters()) == 9_448_866  # UA-MT networks/vnet.py, 1 channel, 2 classes
    assert net(torch.zeros(1, 1, 16, 32, 16)).shape == (1, 2, 16, 32, 16)
    assert sum(isinstance(m, torch.nn.Dropout3d) for m in net.modules()) == 1  # one module, applied twice
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.zeros(1, 1, 16, 24, 16))


def test_vnet_dropout_acts_in_train_mode_only():
    from ssl_bench.nets.vnet import VNet

    torch.manual_seed(0)
    net, x = VNet(), torch.randn(2, 1, 16, 16, 16)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


# -- patches, augmentation --------------------------------------------------------------------------
def test_patch_pool_crops_and_pads_like_the_field():
    img = np.arange(10 * 12 * 8, dtype=np.float32).reshape(10, 12, 8)
    pool = PatchPool(VolumeSet([img], [np.ones_like(img, np.uint8)], (4, 12, 4)))
    # y (12) <= patch 12, so every axis is padded by max((patch - side) // 2 + 3, 0) on both sides:
    # z (10 vs 4) by 0, y by 3, x (8 vs 4) by 1, as the field's RandomCrop does
    assert tuple(pool.images[0].shape) == (10, 18, 10)
    x, y, _, which = pool.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 4, 12, 4) and y.shape == (5, 4, 12, 4) and which.tolist() == [0] * 5
    for xi in x[:, 0]:  # every patch is a contiguous block of the padded volume
        flat = pool.images[0].numpy()
        hits = [(a, b, c) for a in range(7) for b in range(7) for c in range(7)
                if np.array_equal(flat[a:a + 4, b:b + 12, c:c + 4], xi.numpy())]
        assert hits


def test_rot_flip_moves_labels_with_images_and_gives_the_fields_four_mirror_poses():
    x = torch.arange(4 * 4 * 2, dtype=torch.float32).reshape(1, 1, 2, 4, 4).repeat(64, 1, 1, 1, 1)
    y = x[:, 0].long()
    g = torch.Generator().manual_seed(0)
    xa, ya = rot_flip(x, y, g)
    assert torch.equal(xa[:, 0].long(), ya)
    # the field always flips after rotating: flip o rot90^k is one of the 4 mirror images of the
    # square (never the identity or a pure rotation), each reached
    poses = {tuple(v.flatten().tolist()) for v in xa}
    rotations = {tuple(torch.rot90(x[0], k, dims=(-1, -2)).flatten().tolist()) for k in range(4)}
    assert len(poses) == 4 and not poses & rotations
    assert torch.equal(xa[:, :, 0].sort(-1).values.flatten(1).sort(1).values, x[:, :, 0].flatten(1).sort(1).values)
    with pytest.raises(ValueError, match="2D only"):
        rot_flip(x, y, g, ("rot90", "rotate"))


# -- inference and metrics ---------------------------------------------------------------------------
class _Fixed(torch.nn.Module):
    """Logits whose softmax is a known function of the window content: p1 = sigmoid(2 x)."""

    def forward(self, x):
        return torch.cat([-x, x], 1)


def test_sliding_window_equals_a_hand_computed_average():
    image = np.random.default_rng(0).normal(size=(5, 6, 3)).astype(np.float32)
    sw = SlidingWindow(patch=(4, 4, 2), stride=(2, 3, 1))
    assert window_starts(5, 4, 2) == [0, 1] and window_starts(6, 4, 3) == [0, 2] and window_starts(3, 2, 1) == [0, 1]
    probs = sw.probabilities(_Fixed(), image, "cpu")
    # each window's softmax depends on its voxels only, so the average of identical values is that value
    expected = 1 / (1 + np.exp(-2 * image))
    np.testing.assert_allclose(probs[1], expected, rtol=1e-5)
    # a window-dependent predictor: + the window's own mean; average by hand over the 8 windows
    class Offset(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(2, 3, 4), keepdim=True)
            return torch.cat([torch.zeros_like(x), x * 0 + m], 1)
    total, count = np.zeros_like(image), np.zeros_like(image)
    for a in (0, 1):
        for b in (0, 2):
            for c in (0, 1):
                win = image[a:a + 4, b:b + 4, c:c + 2]
                p = 1 / (1 + np.exp(-win.mean()))
                total[a:a + 4, b:b + 4, c:c + 2] += p
                count[a:a + 4, b:b + 4, c:c + 2] += 1
    np.testing.assert_allclose(sw.probabilities(Offset(), image, "cpu")[1], total / count, rtol=1e-5)
    # a volume smaller than the patch is padded (centred) and cropped back
    assert sw.probabilities(_Fixed(), image[:3, :3, :1], "cpu").shape == (2, 3, 3, 1)


def test_largest_component_and_the_lcc_switch():
    pred = np.zeros((6, 6, 6), np.uint8)
    pred[0:3, 0:3, 0:3] = 1
    pred[5, 5, 5] = 1
    pred[4, 4, 4] = 1  # touches (5, 5, 5) only by a corner: 26-connected, one component of 2
    out = largest_component(pred, 2)
    assert out.sum() == 27 and out[5, 5, 5] == 0
    image = np.full((4, 4, 4), -1.0, np.float32)
    image[0, 0, 0] = image[3, 3, 3] = image[0, 1, 0] = 5.0
    on, off = SlidingWindow((4, 4, 4), (4, 4, 4), lcc=True), SlidingWindow((4, 4, 4), (4, 4, 4))
    assert off(_Fixed(), image, "cpu").sum() == 3 and on(_Fixed(), image, "cpu").sum() == 2


def test_3d_metrics_equal_medpy_in_voxels_and_mm():
    from medpy.metric import binary

    from ssl_bench.metrics import case_metrics

    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[0:20, 0:24, 0:22]
    label = ((z - 10) ** 2 / 36 + (y - 12) ** 2 / 64 + (x - 11) ** 2 / 49 < 1).astype(np.uint8)
    pred = ((z - 9) ** 2 / 30 + (y - 13) ** 2 / 64 + (x - 11) ** 2 / 60 < 1).astype(np.uint8)
    pred[rng.random(pred.shape) < 0.01] = 1
    spacing = (1.25, 0.625, 0.625)
    rec = case_metrics(pred, label, ["background", "LA"], spacing)["classes"]["LA"]
    assert rec["dice"] == pytest.approx(binary.dc(pred, label), abs=1e-12)
    for unit, sp in (("vox", None), ("mm", spacing)):
        assert rec[f"asd_{unit}"] == pytest.approx(binary.asd(pred, label, voxelspacing=sp), abs=1e-9)
        assert rec[f"hd95_{unit}"] == pytest.approx(binary.hd95(pred, label, voxelspacing=sp), abs=1e-9)
    jaccard = rec["dice"] / (2 - rec["dice"])
    assert jaccard == pytest.approx(binary.jc(pred, label), abs=1e-12)


# -- schedules, protocols -----------------------------------------------------------------------------
def test_step_lr_is_ua_mts_schedule():
    train, _ = resolve(RunSpec(method="uamt", dataset="la", protocol="la-field"), get_method_class("uamt"))
    assert [learning_rate(train, s, 6000) for s in (0, 2499, 2500, 4999, 5000)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001])
    assert (train.rampup.length, train.rampup.quantum) == (1.0, pytest.approx(150 / 6000))
    with pytest.raises(ConfigError, match="lr_step"):
        resolve(RunSpec(method="mt", dataset="la", overrides={"lr_step": "2"}), get_method_class("mt"))


def test_la_protocols_set_each_rows_recipe_and_selection():
    def res(method, protocol):
        return resolve(RunSpec(method=method, dataset="la", protocol=protocol), get_method_class(method),
                       get_dataset_class("la").train_defaults)[0]
    t = res("uamt", "la-field")
    assert (t.total_iterations, t.labeled_bs, t.unlabeled_bs, t.validation, t.report_checkpoint, t.lcc) == \
        (6000, 2, 2, "none", "last", False)
    assert (t.backbone, t.augment.weak) == ("vnet", ["rot90", "flip"])
    t = res("bcp", "la-field")
    assert (t.total_iterations, t.labeled_bs, t.validation, t.report_checkpoint, t.lcc) == (17000, 4, "test", "best", True)
    t = res("bcp", "la-clean")
    assert (t.validation, t.lcc, t.report_checkpoint) == ("split", False, "best")
    assert res("unet-l", "la-clean").supervised_whole_batch
    small = resolve(RunSpec(method="uamt", dataset="la-small", protocol="la-field"), get_method_class("uamt"),
                    get_dataset_class("la-small").train_defaults)[0]
    assert small.iterations == 450 and small.lr_step == pytest.approx(2500 / 6000)  # the preset keeps proportions


def test_new_keys_at_their_defaults_keep_old_config_hashes():
    spec = RunSpec(method="mt", dataset="acdc", labeled=3)
    train, cfg = resolve(spec, get_method_class("mt"))
    d = resolved_dict(spec, train, cfg)
    assert not {"patch_size", "sw_stride", "lcc", "lr_step", "validation"} & set(d["train"])
    train2, _ = resolve(RunSpec(method="mt", dataset="acdc", labeled=3, overrides={"lcc": "true"}), get_method_class("mt"))
    assert config_hash(resolved_dict(spec, train2, cfg)) != config_hash(d)


def test_guards_protocols_methods_and_2d_keys(tmp_path):
    root = make_la(tmp_path / "d")
    with pytest.raises(ConfigError, match="la-field"):
        engine.prepare(RunSpec(method="mt", dataset="la", labeled=4, protocol="field"), root, tmp_path / "r")
    with pytest.raises(ValueError, match="cct cannot run on a 3D dataset"):
        engine.prepare(RunSpec(method="cct", dataset="la", labeled=4), root, tmp_path / "r")
    with pytest.raises(ConfigError, match="Left Atrium recipe"):
        engine.prepare(RunSpec(method="mt", dataset="tiny-test", labeled=2, protocol="la-clean"), root, tmp_path / "r")
    with pytest.raises(ValueError, match="apply to 3D datasets"):
        engine.prepare(RunSpec(method="mt", dataset="tiny-test", labeled=2, overrides={"lcc": "true"}), root, tmp_path / "r")
    with pytest.raises(ValueError, match="divisible by 16"):
        engine.prepare(RunSpec(method="mt", dataset="la", labeled=4, overrides={"patch_size": "24,32,16"}), root,
                       tmp_path / "r")


def test_reproduce_la_dry_run_lists_the_grid_and_published_rows(tmp_path):
    res = runner.invoke(app, ["reproduce", "la", "--dry-run", "--results-root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "la-field-v1" in res.output and "= 42 runs" in res.output  # 7 methods x 2 settings x 3 seeds
    assert "84.25" in res.output and "best on" in res.output and "not ported" not in res.output
    res = runner.invoke(app, ["reproduce", "la", "--budget", "smoke", "--protocol", "la-clean", "--dry-run",
                              "--seeds", "0", "--methods", "unet-l", "--results-root", str(tmp_path)])
    assert res.exit_code == 0 and "la-small" in res.output and "= 2 runs" in res.output


# -- methods in 3D ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RUNS_IN_3D)
def test_method_contract_on_3d_patches(name):
    from ssl_bench.testing import run_contract

    for rep in run_contract(name, dims=3):
        stage = rep["stage"]
        assert math.isfinite(rep["loss"]), f"{name}/{stage}"
        assert not rep["missing"], f"{name}/{stage}: no gradient for {rep['missing'][:3]}"
        if rep["out"].unsup is not None:
            assert rep["unsup_grad"] > 0
        assert not rep["teacher_grads"]
        assert all(rep["ema_ok"].values())
        assert rep["out"].loss.dim() == 0


def test_uamt_3d_loss_values_by_hand():
    """UA-MT's LA loss on a 3D batch: 0.5 (CE + Dice) + w x masked MSE / (2 sum mask), ln 2 threshold."""
    from ssl_bench.losses import dice_loss
    from ssl_bench.testing import tiny_setup

    method, batch = tiny_setup("uamt", {"variant": "ln2", "mc_passes": 2}, size=16, num_classes=2, dims=3)
    torch.manual_seed(0)
    out = method.training_step(batch, 10)
    torch.manual_seed(0)
    logits = method.student(torch.cat([batch.x_lb, batch.x_ulb]))
    p = logits[:2].softmax(1)
    onehot = torch.nn.functional.one_hot(batch.y_lb, 2).movedim(-1, 1).float()
    dice = 1 - ((2 * (p * onehot).sum((0, 2, 3, 4)) + 1e-5) / (p.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1e-5)).mean()
    assert float(dice_loss(logits[:2], batch.y_lb).detach()) == pytest.approx(float(dice.detach()), abs=1e-6)
    sup = 0.5 * (torch.nn.functional.cross_entropy(logits[:2], batch.y_lb) + dice)
    assert float(out.terms["sup"]) == pytest.approx(float(sup), rel=1e-5)
    assert 0 <= float(out.terms["mask_fraction"]) <= 1 and out.terms["threshold"] < math.log(2) + 1e-9


def test_bcp_in_3d_pastes_a_cuboid_of_two_thirds_of_every_side():
    from ssl_bench.methods.bcp import box_mask_nd, largest_components, paste

    g = torch.Generator().manual_seed(0)
    m = box_mask_nd((12, 9, 6), 2 / 3, g)
    zero = (m == 0).nonzero()
    assert (m == 0).sum() == 8 * 6 * 4 and (zero.max(0).values - zero.min(0).values + 1).tolist() == [8, 6, 4]
    a, b = torch.zeros(2, 1, 12, 9, 6), torch.ones(2, 1, 12, 9, 6)
    assert torch.equal(paste(a, b, m)[0, 0], 1 - m) and torch.equal(paste(a[:, 0].long(), b[:, 0].long(), m)[1], (1 - m).long())
    lab = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    lab[0, :2, :2, :2] = 1
    lab[0, 2, 2, 2] = 1  # 26-connected to the cube through a corner
    lab[0, 5, 5, 0] = 1
    assert largest_components(lab, 2).sum() == 9


@pytest.mark.parametrize("dims", [2, 3])
def test_mcnet_losses_by_hand(dims):
    """lamda sum_d Dice_fg(p_d) + w sum_{i != j} MSE(p_i, sharpen(p_j)); decoders up-sample differently."""
    from ssl_bench.methods.mcnet import foreground_dice_loss, sharpen
    from ssl_bench.testing import tiny_setup

    size = 32 if dims == 3 else 16
    method, batch = tiny_setup("mcnet", size=size, num_classes=2, dims=dims)
    assert len(method.student.extra) == 2
    ups = [type(m) for d in method.student.extra for m in d.modules() if isinstance(m, torch.nn.Upsample)]
    assert ups and {m.mode for d in method.student.extra for m in d.modules() if isinstance(m, torch.nn.Upsample)} == \
        {"trilinear" if dims == 3 else "bilinear", "nearest"}
    method.train(False)  # no dropout: the hand computation sees the same outputs
    out = method.training_step(batch, method.ctx.total_iterations - 1)
    outs = method.student.forward_all(torch.cat([batch.x_lb, batch.x_ulb]))
    p = [o.softmax(1) for o in outs]
    y = batch.y_lb
    fg = p[0][:2, 1]
    dice0 = 1 - (2 * (fg * (y == 1)).sum() + 1e-8) / (fg.sum() + (y == 1).sum() + 1e-8)
    assert float(foreground_dice_loss(p[0][:2], y)) == pytest.approx(float(dice0), rel=1e-6)
    assert float(sharpen(torch.tensor(0.6), 0.1)) == pytest.approx(0.6 ** 10 / (0.6 ** 10 + 0.4 ** 10))
    sup = 0.5 * sum(float(foreground_dice_loss(q[:2], y)) for q in p)
    cons = sum(float(((p[i] - sharpen(p[j], 0.1)) ** 2).mean()) for i in range(3) for j in range(3) if i != j)
    assert float(out.terms["sup"]) == pytest.approx(sup, rel=1e-5)
    assert float(out.terms["consistency"]) == pytest.approx(cons, rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(sup + out.terms["w_cons"] * cons, rel=1e-5)
    torch.testing.assert_close(method.student(batch.x_lb), outs[0][:2], rtol=1e-4, atol=1e-5)  # the first decoder predicts


def test_mcnet_acdc_release_keys_all_class_dice_and_the_bilinear_decoder_tested():
    """dice_classes=all averages the Dice over every class (SSL4MIS DiceLoss); test_decoder=linear
    predicts with the bilinear decoder (MC-Net+'s ACDC release); a decoder the variant lacks is refused."""
    from ssl_bench.methods.mcnet import foreground_dice_loss
    from ssl_bench.testing import tiny_setup

    method, batch = tiny_setup("mcnet", {"dice_classes": "all", "test_decoder": "linear", "lamda": "1.0"},
                               size=16, num_classes=3)
    method.train(False)
    out = method.training_step(batch, 0)
    outs = method.student.forward_all(torch.cat([batch.x_lb, batch.x_ulb]))
    y = batch.y_lb
    sup = 0.0
    for o in outs:
        p = o[:2].softmax(1)
        onehot = torch.nn.functional.one_hot(y, 3).movedim(-1, 1).float()
        dice = (2 * (p * onehot).sum((0, 2, 3)) + 1e-8) / (p.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-8)
        sup += float((1 - dice).mean())
    assert float(out.terms["sup"]) == pytest.approx(sup, rel=1e-5)
    assert float(foreground_dice_loss(outs[0][:2].softmax(1), y, background=True)) != \
        pytest.approx(float(foreground_dice_loss(outs[0][:2].softmax(1), y)))
    torch.testing.assert_close(method.student(batch.x_lb), outs[1][:2], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="test_decoder"):
        tiny_setup("mcnet", {"variant": "v1", "test_decoder": "nearest"})
    with pytest.raises(ValueError, match="dice_classes"):
        tiny_setup("mcnet", {"dice_classes": "some"})


def test_ssnet_in_3d_perturbs_every_patch_by_epsilon_and_contrasts_voxel_features():
    """SS-Net on V-Net patches: the adversarial perturbation has norm epsilon per patch, the heads read
    the 16 channels of the last decoder block per voxel, and the loss composes as in 2D."""
    import ssl_bench.methods.ssnet as ss
    from ssl_bench.testing import tiny_setup

    method, batch = tiny_setup("ssnet", {"memory_correct_only": "false", "epsilon": "10"}, size=16,
                               num_classes=2, dims=3)
    assert method.heads.projection[0].in_features == 16 and set(method.heads.selector) == {"1"}
    x = torch.cat([batch.x_lb, batch.x_ulb])
    with torch.no_grad():
        p = method.student(x).softmax(1)
    _, r = ss.vat_loss(method.student, x, p, 10.0, 10.0, method.distance, 1, torch.Generator().manual_seed(0))
    assert r.shape == x.shape and torch.allclose(r.flatten(1).norm(dim=1), torch.full((4,), 10.0), rtol=0.05)
    out = method.training_step(batch, method.ctx.total_iterations - 1)
    assert method.memory[1] is not None and method.memory[1].shape == (32, 32) and method.memory[0] is None
    unsup = out.terms["lds"] + 0.1 * (out.terms["contrast_lb"] + out.terms["contrast_ulb"])
    assert float(out.loss.detach()) == pytest.approx(float(out.terms["sup"] + out.terms["w_cons"] * unsup), rel=1e-5)
    assert float(out.terms["contrast_lb"]) > 0 and math.isfinite(float(out.loss.detach()))


# -- ACTION in 3D (its release's train_3D_*.py on the V-Net) -------------------------------------------
def test_action_3d_linear_at_equals_trilinear_upsample_then_read():
    from ssl_bench.methods.action_heads import linear_at

    g = torch.Generator().manual_seed(0)
    out = (8, 12, 16)
    b = torch.randint(0, 2, (60,), generator=g)
    coords = tuple(torch.randint(0, n, (60,), generator=g) for n in out)
    for side in ((1, 3, 2), (2, 3, 4), (4, 6, 8), (8, 12, 16)):
        feat = torch.randn(2, 3, *side, generator=g)
        dense = torch.nn.functional.interpolate(feat, size=out, mode="trilinear", align_corners=False)
        want = dense[b, :, coords[0], coords[1], coords[2]]
        assert torch.allclose(linear_at(feat, b, coords, out), want, atol=1e-5), side


def test_action_3d_cutmix_cuts_a_cuboid_through_a_quarter_of_the_slices():
    from ssl_bench.methods.action_mix import cutmix_mask_3d, mix_masks

    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        m = cutmix_mask_3d(16, 32, 32, g)
        z, y, x = torch.nonzero(m == 0, as_tuple=True)
        d, h, w = (int(v.max() - v.min() + 1) for v in (z, y, x))
        assert len(z) == d * h * w and d == 4  # one filled cuboid, 16 / 4 slices deep
        assert 16 < w < 32 and h == round(512 / w)
    assert mix_masks("cutmix", torch.zeros(3, 16, 32, 32, dtype=torch.long), g).shape == (3, 16, 32, 32)
    assert mix_masks("classmix", torch.zeros(3, 4, 4, 4, dtype=torch.long), g).shape == (3, 4, 4, 4)


def test_action_3d_reco_weighted_ce_weights_each_patch():
    """ReCo's compute_unsupervised_loss as train_3D_action.py has it: weighting[:, None, None, None]."""
    from ssl_bench.methods.action_losses import reco_weighted_ce

    g = torch.Generator().manual_seed(0)
    logits, probs = torch.randn(2, 2, 3, 4, 5, generator=g), torch.rand(2, 2, 3, 4, 5, generator=g).softmax(1)
    conf, pseudo = probs.max(1)
    weight = (conf >= 0.6).flatten(1).float().mean(1)
    ce = torch.nn.functional.cross_entropy(logits, pseudo, reduction="none")
    want = (ce * weight.view(2, 1, 1, 1))[ce > 0].mean()
    assert float(reco_weighted_ce(logits, probs, 0.6)[0]) == pytest.approx(float(want), rel=1e-6)


def test_action_3d_gradients_stay_in_each_stages_parameters():
    """Stage i trains the V-Net's down path + H^g + H^g_p, ii the V-Net + H^l + H^l_p, iii the V-Net +
    H_r: every trainable parameter gets a gradient and no other one does (the teacher none)."""
    from ssl_bench.testing import tiny_setup

    method, batch = tiny_setup("action", size=32, num_classes=2, dims=3)
    assert method.net.spatial_dims == 3 and isinstance(method.net.local_head.proj, torch.nn.Conv3d)
    decoder = {id(p) for p in method.net.backbone.decoder.parameters()}
    for stage in ("i", "ii", "iii"):
        method.set_stage(stage)
        method.train(True)
        for m in method.modules().values():
            m.zero_grad(set_to_none=True)
        out = method.training_step(batch, 19)
        assert math.isfinite(float(out.loss.detach()))
        out.loss.backward()
        trainable = {id(p) for p in method.trainable_parameters()}
        assert bool(decoder & trainable) == (stage != "i")
        for name, module in method.modules().items():
            for pn, p in module.named_parameters():
                assert (p.grad is not None) == (id(p) in trainable), f"stage {stage}: {name}.{pn}"


def test_action_3d_stage_ii_loss_by_hand():
    """0.5 (CE + Dice) + KL(p_t || p_s) over the 8 octant regions (local_grid 2) of each patch's logits,
    projected by H^l (and H^l_p for the student), against the anchors of the bank (here 4 patches of
    random region embeddings, as the release's queues start), tau_t 0.01, tau_s 0.1."""
    from ssl_bench.testing import tiny_setup

    F = torch.nn.functional
    method, batch = tiny_setup("action", {"local_grid": 2}, size=32, num_classes=2, dims=3)
    method.set_stage("ii")
    method.local_bank.push(torch.randn(4, 8, 512, generator=torch.Generator().manual_seed(1)))
    anchors = F.normalize(method.local_bank.items.reshape(-1, 512), dim=1)
    method.train(False)  # no dropout: the hand computation sees the same outputs
    out = method.training_step(batch, 5)
    n = batch.x_lb.shape[0]
    with torch.no_grad():
        logits = method.net.backbone(torch.cat([batch.x_lb, batch.x_ulb_strong]))  # student: strong view
        t_logits = method.teacher.backbone(batch.x_ulb)  # teacher: weak view

        def octants(lg):  # (B, C, 32, 32, 32) -> (B, 8, C), z-major
            return torch.stack([lg[:, :, a:a + 16, b:b + 16, c:c + 16].mean((2, 3, 4))
                                for a in (0, 16) for b in (0, 16) for c in (0, 16)], 1)

        def conv(e, layer):  # a 1x1x1 convolution as a matrix product
            return e @ layer.weight.flatten(1).T + layer.bias

        body = method.predictors["local"].body
        e_s = conv(torch.relu(conv(conv(octants(logits[n:]), method.net.local_head.proj), body[0])), body[2])
        e_t = conv(octants(t_logits), method.teacher.local_head.proj)
        z_s, z_t = F.normalize(e_s.reshape(-1, 512), dim=1), F.normalize(e_t.reshape(-1, 512), dim=1)
        p_t = (z_t @ anchors.T / 0.01).softmax(1)
        log_p_s = (z_s @ anchors.T / 0.1).log_softmax(1)
        kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
        p = logits[:n].softmax(1)
        onehot = F.one_hot(batch.y_lb, 2).movedim(-1, 1).float()
        dims = (0, 2, 3, 4)
        dice = 1 - ((2 * (p * onehot).sum(dims) + 1e-5) / (p.sum(dims) + onehot.sum(dims) + 1e-5)).mean()
        sup = 0.5 * (F.cross_entropy(logits[:n], batch.y_lb) + dice)
    assert float(out.terms["sup"]) == pytest.approx(float(sup), rel=1e-5)
    assert float(kl) > 0.01 and float(out.terms["local_kl"]) == pytest.approx(float(kl), rel=1e-3, abs=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(sup + kl), rel=1e-3)
    assert method.local_bank.items.shape == (6, 8, 512)  # the teacher's 2 patches enqueued after the 4


def test_action_3d_released_variant_and_what_is_not_ported():
    from ssl_bench.testing import run_contract, tiny_setup

    for rep in run_contract("action", {"variant": "released", "mix": "cutmix"}, dims=3):
        assert math.isfinite(rep["loss"]) and not rep["missing"] and not rep["teacher_grads"], rep["stage"]
        assert all(rep["ema_ok"].values())
    with pytest.raises(ConfigError, match="not ported to 3D"):
        tiny_setup("action", {"variant": "released", "strong_view": "released"}, size=32, num_classes=2, dims=3)
    t, cfg = resolve(RunSpec(method="action", dataset="la", protocol="la-field"), get_method_class("action"),
                     get_dataset_class("la").train_defaults)
    assert (t.total_iterations, t.labeled_bs, t.unlabeled_bs, t.report_checkpoint) == (90000, 1, 1, "last")
    assert (cfg.variant, cfg.tau_t, cfg.proj_dim, cfg.mix) == ("released", 0.6, 128, "classmix")


@pytest.mark.parametrize("ablation", ["vanilla", "no-rsi"])
def test_action_3d_byol_ablations_honour_the_contract(ablation):
    """BYOL's two-view loss (stage i of both, stage ii of no-rsi) and the supervised finetune stage on 3D patches."""
    from ssl_bench.testing import run_contract

    reports = run_contract("action", {"ablation": ablation}, dims=3)
    assert [r["stage"] for r in reports] == (["i", "finetune"] if ablation == "vanilla" else ["i", "ii", "iii"])
    for rep in reports:
        assert math.isfinite(rep["loss"]) and not rep["missing"] and not rep["teacher_grads"], rep["stage"]
        assert all(rep["ema_ok"].values())
    assert "global_byol" in reports[0]["out"].terms


def test_2d_only_methods_are_listed_with_a_reason():
    from ssl_bench.registry import list_methods

    assert set(RUNS_IN_3D) | set(NOT_IN_3D) == set(list_methods())
    assert not set(RUNS_IN_3D) & set(NOT_IN_3D) and all(len(r) > 30 for r in NOT_IN_3D.values())


# -- end to end ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["la-field", "la-clean"])
def test_la_end_to_end_on_tiny_synthetic_volumes(tmp_path, protocol):
    metrics, _, split = tiny_la_run(tmp_path, "uamt", protocol, "val_every=2", "method.mc_passes=2")
    if protocol == "la-field":  # no validation: the 2 carved scans train as unlabeled
        assert split["val"] == [] and len(split["unlabeled"]) == 16 and metrics["best_is_last"]
    else:
        assert len(split["val"]) == 2 and len(split["unlabeled"]) == 14 and metrics["best_val_dice"] >= 0


@pytest.mark.slow
def test_action_la_end_to_end_on_tiny_synthetic_volumes(tmp_path):
    """ACTION's three stages under la-field (one step each: budget_scale 1 on 3 iterations) on the V-Net."""
    _, config, _ = tiny_la_run(tmp_path, "action", "la-field", "budget_scale=1")
    assert (config["train"]["labeled_bs"], config["train"]["unlabeled_bs"]) == (1, 1)
    m = config["method_config"]
    assert (m["tau_t"], m["proj_dim"], m["mix"]) == (0.6, 128, "classmix")
