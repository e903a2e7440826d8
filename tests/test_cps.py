"""CPS: the cross loss against a hand computation, two different networks, detached pseudo-labels,
and the two variants (paper, ssl4mis)."""
import math

import pytest
import torch

from ssl_bench.config import ConfigError
from ssl_bench.methods.cps import cross_pseudo_losses
from ssl_bench.testing import run_contract, tiny_setup


def test_cross_loss_matches_hand_computation():
    # one pixel, two classes: a predicts class 0, b predicts class 1
    a = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)
    b = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    loss_a, loss_b = cross_pseudo_losses(a, b)
    # a is pushed towards b's class 1: -log(e^0 / (e^2 + e^0)); b towards a's class 0
    assert float(loss_a) == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)
    assert float(loss_b) == pytest.approx(math.log(1 + math.exp(1)), rel=1e-6)


def test_networks_differ_at_initialisation():
    method, _ = tiny_setup("cps")
    p1 = dict(method.net1.named_parameters())
    p2 = dict(method.net2.named_parameters())
    assert p1.keys() == p2.keys()
    conv_weights = [k for k in p1 if k.endswith("weight") and p1[k].dim() == 4]
    assert conv_weights and all(not torch.equal(p1[k], p2[k]) for k in conv_weights)
    assert method.predictor() is method.net1


def test_each_cross_term_trains_only_its_own_network():
    method, batch = tiny_setup("cps")
    x = torch.cat([batch.x_lb, batch.x_ulb])
    logits1, logits2 = method.net1(x), method.net2(x)
    loss_1, loss_2 = cross_pseudo_losses(logits1, logits2)
    for loss, own, other in [(loss_1, method.net1, method.net2), (loss_2, method.net2, method.net1)]:
        g_other = torch.autograd.grad(loss, list(other.parameters()), retain_graph=True, allow_unused=True)
        g_own = torch.autograd.grad(loss, list(own.parameters()), retain_graph=True, allow_unused=True)
        assert all(g is None for g in g_other), "pseudo-labels must be detached"
        assert sum(float(g.abs().sum()) for g in g_own if g is not None) > 0


@pytest.mark.parametrize("variant, on_labeled", [("paper", True), ("ssl4mis", False)])
def test_cross_term_covers_the_variants_images(variant, on_labeled):
    method, batch = tiny_setup("cps", {"variant": variant})
    method.train(False)  # deterministic forward passes (no dropout, BatchNorm running stats)
    out = method.training_step(batch, 0)
    x = torch.cat([batch.x_lb, batch.x_ulb]) if on_labeled else batch.x_ulb
    expected = sum(cross_pseudo_losses(method.net1(x), method.net2(x)))
    assert float(out.unsup.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_variant_weights_and_rampup():
    paper, _ = tiny_setup("cps", total_iterations=100)
    assert (paper.cps_weight, paper.rampup) == (1.5, 0.0)
    community, batch = tiny_setup("cps", {"variant": "ssl4mis"}, total_iterations=100)
    assert (community.cps_weight, community.rampup) == (0.1, 1.0)
    assert community.training_step(batch, 0).terms["w_cps"] == pytest.approx(0.1 * math.exp(-5))
    assert community.training_step(batch, 100).terms["w_cps"] == pytest.approx(0.1)
    assert paper.training_step(batch, 0).terms["w_cps"] == pytest.approx(1.5)
    custom, _ = tiny_setup("cps", {"variant": "ssl4mis", "cps_weight": "0.3", "rampup": "none"})
    assert (custom.cps_weight, custom.rampup) == (0.3, 1.0)


def test_ssl4mis_contract_and_bad_variant():
    for rep in run_contract("cps", {"variant": "ssl4mis"}):
        assert not rep["missing"] and rep["unsup_grad"] > 0
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        tiny_setup("cps", {"variant": "nope"})
    with pytest.raises(ConfigError):
        tiny_setup("cps", {"lambda": "1"})
