"""UniMatch: the feature-perturbation stream drops features only in its own pass, channel dropout by
hand, CutMix boxes and the mixed pseudo-labels, the loss composition and both unlabeled forms against
hand computations, and bad input."""
import math

import pytest
import torch

import ssl_bench.methods.unimatch as um
from ssl_bench.losses import masked_dice_loss
from ssl_bench.testing import tiny_setup


def test_feature_dropout_zeroes_or_rescales_whole_channels():
    f = torch.rand(3, 8, 4, 4, 2) + 1
    out = um.feature_dropout(f, 0.5, torch.Generator().manual_seed(0))
    ratio = out / f
    per_channel = ratio.flatten(2)
    assert torch.equal(per_channel.amin(-1), per_channel.amax(-1))  # one factor per channel
    assert set(per_channel[..., 0].unique().tolist()) <= {0.0, 2.0}
    assert 0 < int((per_channel[..., 0] == 0).sum()) < 24


def test_feature_perturbation_drops_features_only_in_its_own_pass(monkeypatch):
    method, batch = tiny_setup("unimatch")
    net = method.student
    calls, decoded, forwards = [], [], []
    original = um.feature_dropout

    def spy_dropout(f, p, g):
        out = original(f, p, g)
        calls.append((f, out))
        return out

    monkeypatch.setattr(um, "feature_dropout", spy_dropout)
    decode = net.decode
    monkeypatch.setattr(net, "decode", lambda feats: decoded.append(feats) or decode(feats))
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: forwards.append(x) or forward(x))
    method.training_step(batch, 0)
    n_lb, n = batch.x_lb.shape[0], batch.x_ulb.shape[0] // 2
    levels = len(net.encoder_channels)
    assert len(calls) == levels  # once per encoder level, in one pass
    assert all(f.shape[0] == n_lb + n for f, _ in calls)  # labeled + weak unlabeled slices only
    fp_decodes = [d for d in decoded if d[0].shape[0] == 2 * (n_lb + n)]
    assert len(fp_decodes) == 1
    for level, (f, dropped) in zip(fp_decodes[0], calls):
        assert torch.equal(level[:n_lb + n], f)  # the clean half is untouched
        assert torch.equal(level[n_lb + n:], dropped)  # the perturbed half is the dropout's output
    # the strong views and the eval-mode labelling go through plain forward passes, never dropped
    assert [x.shape[0] for x in forwards] == [n, 2 * n]


def test_cutmix_boxes_area_ratio_and_probability():
    g = torch.Generator().manual_seed(1)
    boxes = um.cutmix_boxes(200, (40, 40), 0.5, (0.02, 0.4), 0.3, g)
    areas = boxes.flatten(1).float().mean(1)
    on = areas > 0
    assert 60 < int(on.sum()) < 140  # about half the slices get a box
    assert float(areas[on].max()) <= 0.4 + 1e-6 and float(areas[on].min()) >= 0.005
    for i in torch.nonzero(on)[:10, 0]:
        idx = boxes[i].nonzero()
        h, w = (idx.max(0).values - idx.min(0).values + 1).tolist()
        assert h * w == int(boxes[i].sum())  # one rectangle
        assert 0.2 <= h / w <= 1 / 0.2  # aspect within the range (plus rounding)
    assert um.cutmix_boxes(5, (8, 8, 8), 1.0, (0.1, 0.2), 0.5, g).flatten(1).any(1).all()
    assert not um.cutmix_boxes(5, (16, 16), 0.0, (0.1, 0.2), 0.5, g).any()


def _capture(method):
    outs = {}
    net = method.student
    decode, forward = net.decode, net.forward

    def dec(feats):
        out = decode(feats)
        outs.setdefault("decode", []).append(out[0])
        return out

    def fwd(x):
        out = forward(x)
        outs.setdefault("forward", []).append((x, out))
        return out

    net.decode, net.forward = dec, fwd
    return outs


@pytest.mark.parametrize("variant", ["paper", "medical"])
def test_losses_against_hand_computation(variant):
    method, batch = tiny_setup("unimatch", {"variant": variant, "conf_threshold": "0.3"})
    method.train(False)  # deterministic network (no dropout in the U-Net's own layers)
    g = method.ctx.generator
    state = g.get_state()
    outs = _capture(method)
    out = method.training_step(batch, 0)
    n_lb, n = batch.x_lb.shape[0], batch.x_ulb.shape[0] // 2
    both, = [d for d in outs["decode"] if d.shape[0] == 2 * (n_lb + n)]
    pred_x, pred_u_w, pred_fp = both[:n_lb], both[n_lb:n_lb + n], both[2 * n_lb + n:]
    (mix_x, mix_pred), (strong_x, strong_pred) = outs["forward"]
    # replay the generator: the second strong view, the two boxes
    g.set_state(state)
    method.ctx.augment.photometric(batch.x_ulb[:2 * n], g)
    box1 = um.cutmix_boxes(n, (32, 32), 0.5, (0.02, 0.4), 0.3, g)
    box2 = um.cutmix_boxes(n, (32, 32), 0.5, (0.02, 0.4), 0.3, g)
    assert torch.equal(strong_x[:n], torch.where(box1[:, None], batch.x_ulb_strong[n:2 * n], batch.x_ulb_strong[:n]))
    conf, label = pred_u_w.softmax(1).max(1)
    mconf, mlabel = mix_pred.softmax(1).max(1)
    assert torch.equal(mix_x, batch.x_ulb[n:2 * n])

    def unsup(logits, lab, cf):
        keep = cf >= 0.3
        if variant == "medical":
            return float(masked_dice_loss(logits, lab, keep))
        ce = -logits.log_softmax(1).gather(1, lab[:, None])[:, 0]
        return float((ce * keep).sum().detach() / keep.numel())

    s1, s2 = strong_pred.chunk(2)
    l1 = unsup(s1, torch.where(box1, mlabel, label), torch.where(box1, mconf, conf))
    l2 = unsup(s2, torch.where(box2, mlabel, label), torch.where(box2, mconf, conf))
    lfp = unsup(pred_fp, label, conf)
    assert out.terms["strong1"] == pytest.approx(l1, rel=1e-5)
    assert out.terms["strong2"] == pytest.approx(l2, rel=1e-5)
    assert out.terms["fp"] == pytest.approx(lfp, rel=1e-5)
    sup = float(out.terms["sup"])
    expected = (sup + 0.25 * l1 + 0.25 * l2 + 0.5 * lfp) / 2
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(expected) and pred_x.shape[0] == n_lb


def test_bad_input():
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_setup("unimatch", {"variant": "v2"})
    method, batch = tiny_setup("unimatch")
    batch.x_ulb, batch.x_ulb_strong = batch.x_ulb[:1], batch.x_ulb_strong[:1]
    with pytest.raises(ValueError, match="at least 2 unlabeled slices"):
        method.training_step(batch, 0)
