"""AD-MT: the teachers alternate on the drawn periods, the EMA schedule, the entropy-weighted fusion
and the conflict rule against hand computations, CutMix boxes (2D and 3D), which view the student
sees with which teacher, the confidence gate of the Dice term, and the variants."""
import math

import pytest
import torch

from ssl_bench.losses import masked_dice_loss
from ssl_bench.methods.admt import apply_cutmix, cutmix_mask, fuse_teachers, resolve_conflicts
from ssl_bench.testing import check_stage, tiny_setup


def test_teachers_alternate_on_the_drawn_periods():
    method, _ = tiny_setup("ad-mt")
    method.ema_step = 1000  # past the copy phase: momentum 0.99
    updated, periods = [], [method.period]
    for _ in range(120):
        before = method.period
        method.advance_alternation()
        if method.counter == 0 and len(updated) > 0:
            periods.append(method.period)
        assert before == method.period or method.counter == 0
        with torch.no_grad():
            for p in method.student.parameters():
                p.add_(0.01)
        t1 = [p.clone() for p in method.teacher1.parameters()]
        t2 = [p.clone() for p in method.teacher2.parameters()]
        method.after_optimizer_step(0)
        moved1 = any(not torch.equal(a, b) for a, b in zip(t1, method.teacher1.parameters()))
        moved2 = any(not torch.equal(a, b) for a, b in zip(t2, method.teacher2.parameters()))
        assert moved1 != moved2  # exactly one teacher takes each update
        updated.append(1 if moved1 else 2)
    # run lengths of the update sequence are the drawn periods, teachers taking turns from teacher 1
    runs, cur = [], [updated[0], 0]
    for t in updated:
        if t == cur[0]:
            cur[1] += 1
        else:
            runs.append(tuple(cur))
            cur = [t, 1]
    assert [t for t, _ in runs] == [1 + i % 2 for i in range(len(runs))]
    assert [n for _, n in runs] == periods[:len(runs)]
    assert all(1 <= n <= 50 for n in periods) and len(set(periods)) > 1  # random periods
    fixed, _ = tiny_setup("ad-mt", {"random_period": "false", "period": "3"})
    assert fixed.period == 3


def test_ema_copies_for_the_first_hundred_steps_then_follows_the_release():
    method, _ = tiny_setup("ad-mt")
    assert [method.momentum() for method.ema_step in (0, 99)] == [0.0, 0.0]
    method.ema_step = 100  # iter // 2 = 50: 1 - 1/1 = 0
    assert method.momentum() == 0.0
    method.ema_step = 110  # iter // 2 = 55: 1 - 1/6
    assert method.momentum() == pytest.approx(1 - 1 / 6)
    method.ema_step = 10_000
    assert method.momentum() == 0.99
    assert method.teachers()["teacher2"][2] == 1.0 and method.teachers()["teacher1"][2] == 0.99


def test_fusion_against_hand_computation():
    p1 = torch.tensor([0.9, 0.1]).reshape(1, 2, 1, 1)
    p2 = torch.tensor([0.3, 0.7]).reshape(1, 2, 1, 1)
    h1 = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    h2 = -(0.3 * math.log2(0.3) + 0.7 * math.log2(0.7))
    w1 = math.exp(-h1) / (math.exp(-h1) + math.exp(-h2))
    fused = [w1 * 0.9 + (1 - w1) * 0.3, w1 * 0.1 + (1 - w1) * 0.7]
    label, conf, conflict = fuse_teachers(p1, p2)
    assert int(label) == 0 and float(conf) == pytest.approx(max(fused), rel=1e-5)
    assert bool(conflict)


def test_conflict_rule_takes_the_student_only_where_both_conflicts_and_more_confident():
    label, conf = torch.tensor([0, 0, 0, 0]), torch.tensor([0.6, 0.6, 0.6, 0.9])
    label_s, conf_s = torch.tensor([1, 1, 0, 1]), torch.tensor([0.8, 0.8, 0.99, 0.8])
    t_conflict = torch.tensor([True, False, True, True])
    out, out_conf, taken = resolve_conflicts(label, conf, label_s, conf_s, t_conflict)
    assert out.tolist() == [1, 0, 0, 0] and taken.tolist() == [True, False, False, False]
    assert out_conf.tolist() == pytest.approx([0.8, 0.6, 0.6, 0.9])


@pytest.mark.parametrize("spatial", [(16, 16), (8, 16, 16)])
def test_cutmix_moves_images_and_labels_together(spatial):
    g = torch.Generator().manual_seed(3)
    mask, perm = cutmix_mask(4, spatial, g, "cpu")
    assert mask.shape == (4, *spatial) and sorted(perm.tolist()) == [0, 1, 2, 3]
    for i in range(4):  # one axis-aligned box per slice
        idx = mask[i].nonzero()
        if len(idx):
            lo, hi = idx.min(0).values, idx.max(0).values
            box = mask[i][tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))]
            assert bool(box.all())
    x = torch.arange(4.0).reshape(4, 1, *([1] * len(spatial))).expand(4, 1, *spatial)
    y = torch.arange(4).reshape(4, *([1] * len(spatial))).expand(4, *spatial)
    xm, ym = apply_cutmix(x, mask, perm), apply_cutmix(y, mask, perm)
    assert torch.equal(xm[:, 0].long(), ym)
    for i in range(4):
        assert torch.equal(ym[i][mask[i]], torch.full_like(ym[i][mask[i]], int(perm[i])))
        assert torch.equal(ym[i][~mask[i]], torch.full_like(ym[i][~mask[i]], i))


def _spy_student(method):
    seen = []
    net = method.student

    def spy(x):
        out = net(x)
        seen.append((x, out))
        return out

    method.student = spy
    return seen


def test_student_sees_the_strong_view_with_teacher_1_and_cutmix_with_teacher_2():
    method, batch = tiny_setup("ad-mt")
    n_lb, n_u = batch.x_lb.shape[0], batch.x_ulb.shape[0]
    seen = _spy_student(method)
    method.first_active, method.counter, method.period = True, 0, 5
    out = method.training_step(batch, 0)
    assert torch.equal(seen[-1][0][n_lb + n_u:], batch.x_ulb_strong) and out.terms["active_teacher"] == 1.0
    method.first_active = False
    g = method.ctx.generator
    state = g.get_state()
    out = method.training_step(batch, 0)
    assert out.terms["cutmix"] == 1.0 and out.terms["active_teacher"] == 2.0
    g.set_state(state)
    torch.rand((), generator=g)  # the cutmix_prob draw
    mask, perm = cutmix_mask(n_u, tuple(batch.x_ulb.shape[2:]), g, "cpu")
    assert bool(mask.any()) and torch.equal(seen[-1][0][n_lb + n_u:], apply_cutmix(batch.x_ulb, mask, perm))
    assert torch.equal(seen[-1][0][n_lb:n_lb + n_u], batch.x_ulb)  # the weak view itself, unmixed


def test_unlabeled_dice_counts_only_confident_pixels():
    method, batch = tiny_setup("ad-mt")
    method.first_active = True
    size, n_u, n_lb = batch.x_ulb.shape[-1], batch.x_ulb.shape[0], batch.x_lb.shape[0]
    p = torch.empty(n_u, 4, size, size)
    p[:, :, :, : size // 2] = torch.tensor([0.02, 0.2, 0.74, 0.04])[:, None, None]  # unconfident class 2
    p[:, :, :, size // 2:] = torch.tensor([0.01, 0.97, 0.01, 0.01])[:, None, None]  # confident class 1
    method.teacher_probs = lambda x: (p, p)  # identical teachers: no conflict, fused = p
    seen = _spy_student(method)
    out = method.training_step(batch, 0)
    us = seen[-1][1][n_lb + n_u:]
    label = p.argmax(1)
    keep = torch.zeros(n_u, size, size, dtype=torch.bool)
    keep[..., size // 2:] = True
    assert out.terms["confident"] == pytest.approx(0.5)
    assert float(out.unsup.detach()) == pytest.approx(float(masked_dice_loss(us, label, keep).detach()), rel=1e-6)
    # by hand for the kept half: per class 1 - (2 sum p y + eps) / (sum p^2 + sum y^2 + eps)
    probs, eps = us.detach().softmax(1)[..., size // 2:], 1e-5
    onehot = torch.nn.functional.one_hot(label[..., size // 2:], 4).movedim(-1, 1).float()
    dice = [(2 * (probs[:, c] * onehot[:, c]).sum() + eps) / ((probs[:, c] ** 2).sum() + onehot[:, c].sum() + eps)
            for c in range(4)]
    assert float(out.unsup.detach()) == pytest.approx(1 - float(sum(dice)) / 4, rel=1e-5)
    sup_w = out.terms["w_unsup"]
    assert float(out.loss.detach()) == pytest.approx(float(out.terms["sup"]) + sup_w * float(out.unsup.detach()), rel=1e-6)


def test_variants_and_bad_input():
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_setup("ad-mt", {"variant": "v2"})
    with pytest.raises(ValueError, match="period"):
        tiny_setup("ad-mt", {"period": "0"})
    method, batch = tiny_setup("ad-mt", {"variant": "released", "conf_threshold": "0"})
    method.first_active = False
    rep = check_stage(method, batch, step=19)
    assert rep["unsup_grad"] > 0 and rep["ema_ok"] == {"teacher1": True, "teacher2": True}
