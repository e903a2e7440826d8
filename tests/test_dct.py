"""DCT: JS divergence, soft cross-entropy and rotation consistency against hand values; two
different nets; FGSM examples raise the attacked net's loss; the rotation variant is one net."""
import math

import torch
import torch.nn.functional as F

from ssl_bench.methods.dct import fgsm, js_divergence, rotation_consistency, soft_cross_entropy
from ssl_bench.testing import tiny_setup


def _h(p):
    return -sum(x * math.log(x) for x in p)


def test_js_divergence_hand_value():
    a = torch.zeros(1, 2, 1, 1)  # (1/2, 1/2)
    b = torch.tensor([math.log(9.0), 0.0]).view(1, 2, 1, 1)  # (9/10, 1/10)
    expected = _h((0.7, 0.3)) - (_h((0.5, 0.5)) + _h((0.9, 0.1))) / 2
    assert abs(float(js_divergence(a, b)) - expected) < 1e-6
    assert abs(expected - 0.10175) < 1e-4
    assert float(js_divergence(b, b)) < 1e-7


def test_soft_cross_entropy_hand_value():
    target = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # q = (1/4, 3/4)
    assert abs(float(soft_cross_entropy(target, logits)) - _h((0.25, 0.75))) < 1e-6


def test_rotation_consistency_hand_value():
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # p = (1/2,1/2), (3/4,1/4)
    # rot90 twice on a 1 x 2 map swaps the two pixels; the rotated slice's prediction is kept as is
    rot_logits = logits.clone()
    # both MSE terms equal mean((p_a - p_b)^2) over 4 elements = 2 * 2 * (1/4)^2 / 4 = 1/16
    assert abs(float(rotation_consistency(logits, rot_logits, 2)) - 1 / 16) < 1e-7
    assert float(rotation_consistency(logits, torch.rot90(logits, 2, (2, 3)), 2)) < 1e-12


def test_two_different_networks_and_predictor():
    method, _ = tiny_setup("dct")
    assert set(method.modules()) == {"net1", "net2"} and method.predictor() is method.net1
    pairs = zip(method.net1.parameters(), method.net2.parameters())
    assert any(not torch.equal(a, b) for a, b in pairs)
    rot, _ = tiny_setup("dct", {"variant": "rotation"})
    assert set(rot.modules()) == {"net1"}


def test_adversarial_examples_raise_the_attacked_nets_loss():
    method, batch = tiny_setup("dct")
    for net in (method.net1, method.net2):
        net.eval()
        x, y = batch.x_lb, batch.y_lb
        adv = fgsm(net, x, y, 0.02)
        assert (adv - x).abs().max() <= 0.02 + 1e-6
        with torch.no_grad():
            assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y)
        assert all(p.grad is None for p in net.parameters())  # only the input was differentiated


def test_view_difference_uses_the_other_nets_adversarial_examples():
    torch.manual_seed(0)
    method, batch = tiny_setup("dct")
    calls = []
    for name in ("net1", "net2"):
        getattr(method, name).register_forward_hook(lambda m, i, o, name=name: calls.append((name, i[0])))
    method.training_step(batch, 5)
    # clean passes of both nets, FGSM of net1 then net2, then net2 on g1(x) and net1 on g2(x)
    names = [n for n, _ in calls]
    assert names == ["net1", "net2", "net1", "net2", "net2", "net1"]
    x = torch.cat([batch.x_lb, batch.x_ulb])
    g1, g2 = calls[4][1], calls[5][1]
    assert not torch.equal(g1, x) and not torch.equal(g2, x) and not torch.equal(g1, g2)
