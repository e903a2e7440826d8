"""ABD: patches in raster order (2D and 3D), the displacement swaps exactly the chosen patches, the
adaptive (KL) and plain picks against hand computations, the cross Dice against a hand value, both
students starting from the pre-trained one, ABD-I moving labels with pixels, and the variants."""
import math

import pytest
import torch

from ssl_bench.methods.abd import abd_r_picks, displace, patch_means, patchify, unpatchify
from ssl_bench.losses import masked_dice_loss
from ssl_bench.testing import check_stage, run_contract, tiny_setup


def test_patchify_raster_order_and_inverse_in_2d_and_3d():
    x = torch.arange(16.0).reshape(1, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (1, 4, 4)
    assert p[0, 0].tolist() == [0, 1, 4, 5] and p[0, 1].tolist() == [2, 3, 6, 7]
    assert p[0, 2].tolist() == [8, 9, 12, 13] and p[0, 3].tolist() == [10, 11, 14, 15]
    assert torch.equal(unpatchify(p, 2, (4, 4)), x)
    v = torch.rand(2, 4, 6, 8)
    assert torch.equal(unpatchify(patchify(v, 2), 2, (4, 6, 8)), v)
    assert torch.equal(patchify(v, 2)[1, 7].reshape(2, 3, 4), v[1, 2:, 3:, 4:])  # last patch: far corner
    with pytest.raises(ValueError, match="not divisible by method.grid=3"):
        patchify(x, 3)


@pytest.mark.parametrize("spatial", [(8, 8), (4, 8, 8)])
def test_displacement_swaps_exactly_the_chosen_patches(spatial):
    grid, b = 2, 3
    n_patches = grid ** len(spatial)
    x1 = torch.rand(b, 1, *spatial)
    x2 = torch.rand(b, 1, *spatial) + 10  # distinguishable from x1
    src1, dst1 = torch.tensor([0, 3, 1]), torch.tensor([2, 0, 1])
    src2, dst2 = torch.tensor([1, 0, 1]), torch.tensor([3, 2, 0])
    active = torch.tensor([True, True, False])
    d1, d2 = displace(x1, x2, grid, src1, dst1, src2, dst2, active)
    p1, p2 = patchify(x1[:, 0], grid), patchify(x2[:, 0], grid)
    q1, q2 = patchify(d1[:, 0], grid), patchify(d2[:, 0], grid)
    for i in range(b):
        if not active[i]:
            assert torch.equal(d1[i], x1[i]) and torch.equal(d2[i], x2[i])
            continue
        for k in range(n_patches):
            want1 = p2[i, src1[i]] if k == dst1[i] else p1[i, k]
            assert torch.equal(q1[i, k], want1), (i, k)
        for k in range(n_patches):
            want2 = q1[i, src2[i]] if k == dst2[i] else p2[i, k]  # from x1 after its swap
            assert torch.equal(q2[i, k], want2), (i, k)
    # sample 1 takes x1's patch 0 after x1's patch 0 was replaced by x2's patch 3: x2's own pixels
    assert torch.equal(q2[1, 2], p2[1, 3])
    # labels move the same way
    y1, y2 = torch.zeros(b, *spatial, dtype=torch.long), torch.ones(b, *spatial, dtype=torch.long)
    l1, l2 = displace(y1, y2, grid, src1, dst1, src2, dst2, active, channels=False)
    assert int(l1[0].sum()) == math.prod(spatial) // n_patches and int(l1[2].sum()) == 0
    assert l1.dtype == torch.long


def test_adaptive_and_plain_picks_against_hand_computation():
    # one image pair, 4 patches, 3 classes
    conf1 = torch.tensor([[0.9, 0.2, 0.8, 0.7]])
    conf2 = torch.tensor([[0.6, 0.95, 0.1, 0.85]])
    logit1 = torch.tensor([[[3.0, 0, 0], [0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]]])
    logit2 = torch.tensor([[[0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0], [0, 2.0, 1.0]]])
    plain = abd_r_picks(conf1, logit1, conf2, logit2, torch.tensor([False]), k=2)
    assert {k: int(v) for k, v in plain.items()} == {"a": 0, "b": 1, "c": 1, "d": 2}
    adaptive = abd_r_picks(conf1, logit1, conf2, logit2, torch.tensor([True]), k=2)

    def kl(p_logits, q_logits):
        p, q = p_logits.softmax(-1), q_logits.softmax(-1)
        return float((p * (p.log() - q.log())).sum())

    # a: of image 1's top 2 (patches 0, 2), the one closest to image 2's least confident patch 2 (class 2)
    cands = {j: kl(logit2[0, 2], logit1[0, j]) for j in (0, 2)}
    assert int(adaptive["a"]) == min(cands, key=cands.get)
    # c: of image 2's top 2 (patches 1, 3), the one closest to image 1's least confident patch 1 (uniform)
    cands = {j: kl(logit1[0, 1], logit2[0, j]) for j in (1, 3)}
    assert int(adaptive["c"]) == min(cands, key=cands.get) == 3
    assert (int(adaptive["b"]), int(adaptive["d"])) == (1, 2)


def test_patch_means():
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0, :2, :2] = 10.0  # patch 0 confident in class 0
    conf, per = patch_means(logits, 2)
    assert conf[0, 0] == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-6)
    assert conf[0, 1:].tolist() == [0.5, 0.5, 0.5]
    assert per[0, 0].tolist() == [10.0, 0.0] and per.shape == (1, 4, 2)


def test_masked_dice_loss_matches_hand_computation():
    logits = torch.zeros(1, 2, 1, 3)  # p = 0.5 everywhere
    target = torch.tensor([[[0, 1, 1]]])
    keep = torch.tensor([[[1.0, 1.0, 0.0]]])  # the last pixel is ignored
    eps = 1e-5
    d0 = (2 * 0.5 + eps) / (2 * 0.25 + 1 + eps)
    d1 = (2 * 0.5 + eps) / (2 * 0.25 + 1 + eps)
    assert float(masked_dice_loss(logits, target, keep)) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)
    full = 1 - ((2 * 0.5 + eps) / (3 * 0.25 + 1 + eps) + (2 * 1.0 + eps) / (3 * 0.25 + 2 + eps)) / 2
    assert float(masked_dice_loss(logits, target)) == pytest.approx(full, rel=1e-6)
    # any number of spatial dims
    assert float(masked_dice_loss(logits[..., None], target[..., None], keep[..., None])) == \
        pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)


def test_students_start_from_the_pretrained_network_then_train_apart():
    method, batch = tiny_setup("abd")
    assert [s.name for s in method.stages()] == ["pretrain", "self_train"]
    method.set_stage("pretrain")
    assert method.training_step(batch, 0).unsup is None
    assert not any(p.requires_grad for p in method.student2.parameters())
    check_stage(method, batch)
    for net in (method.student2, method.teacher):
        for t, s in zip(net.state_dict().values(), method.student.state_dict().values()):
            assert torch.equal(t, s)
    method.set_stage("self_train")
    assert set(method.teachers()) == {"teacher"}
    assert all(p.requires_grad for p in method.student2.parameters())
    ids = {id(p) for p in method.trainable_parameters()}
    assert all(id(p) in ids for p in method.student2.parameters())
    rep = check_stage(method, batch)
    assert rep["unsup_grad"] > 0 and not rep["missing"]
    assert set(rep["out"].terms) >= {"sup", "unsup", "cross_mixed", "cross_displaced", "abd_i"}


def test_self_training_feeds_both_students_the_displaced_pair():
    """The second forward of each student is exactly ABD-R's displacement of the two mixed inputs."""
    method, batch = tiny_setup("abd", {"variant": "released", "kl_prob": "0"})  # plain picks
    method.set_stage("self_train")
    method.train(False)
    seen = {"s1": [], "s2": []}
    nets = {"s1": method.student, "s2": method.student2}
    method.student = lambda x: seen["s1"].append(x) or nets["s1"](x)
    method.student2 = lambda x: seen["s2"].append(x) or nets["s2"](x)
    method.training_step(batch, 0)
    (mixed1, disp_a), (mixed2, disp_b) = seen["s1"], seen["s2"]
    assert torch.equal(disp_a, disp_b)
    with torch.no_grad():
        conf1 = patch_means(nets["s1"](mixed1), 4)[0]
        conf2 = patch_means(nets["s2"](mixed2), 4)[0]
    a, b, c, d = conf1.argmax(1), conf1.argmin(1), conf2.argmax(1), conf2.argmin(1)
    want1, want2 = displace(mixed1, mixed2, 4, c, b, a, d)
    n = mixed1.shape[0]
    assert torch.equal(disp_a[:n], want1) and torch.equal(disp_a[n:], want2)
    # the weak and the strong mixed inputs differ (photometric), the pasted geometry is shared
    assert not torch.equal(mixed1, mixed2)


def test_abd_i_moves_labels_with_pixels(monkeypatch):
    """Images whose pixels equal their labels (view 2: + 100): after ABD-I every supervised pixel's
    label is its intensity modulo 100, and each view got exactly one foreign patch."""
    method, batch = tiny_setup("abd")
    method.set_stage("self_train")
    method.cfg.abd_i_prob = 1.0
    batch.x_lb = batch.y_lb[:, None].float()
    method.strong = lambda x: x + 100
    seen = []
    monkeypatch.setattr(method, "supervised_loss", lambda logits, y: seen.append(y) or logits.sum() * 0)
    x_seen = []
    net = method.student
    method.student = lambda x: x_seen.append(x) or net(x)
    method.abd_i_loss(batch)
    x, y = x_seen[-1][:, 0], seen[0]
    assert torch.equal(x.long() % 100, y)
    n = batch.x_lb.shape[0]
    per_patch = 32 * 32 // 16
    assert int((x[:n] >= 100).sum()) == n * per_patch  # one patch of view 2 in each view-1 image
    assert int((x[n:] < 100).sum()) == n * per_patch  # one patch of view 1 in each view-2 image


def test_variants_and_bad_input():
    for rep in run_contract("abd", {"variant": "released"}):
        assert not rep["missing"] and math.isfinite(rep["loss"])
    method, _ = tiny_setup("abd", {"variant": "released"})
    assert (method.cfg.abd_i, method.cfg.lcc) == (False, True)
    method, _ = tiny_setup("abd", {"variant": "released", "lcc": "false"})
    assert method.cfg.lcc is False  # an explicit --set wins over the variant
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_setup("abd", {"variant": "bcp"})
    with pytest.raises(ValueError, match="top_k"):
        tiny_setup("abd", {"top_k": "17"})
