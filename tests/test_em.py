"""EM: the normalised-entropy loss against hand values, and that its gradient lowers the entropy."""
import math

import pytest
import torch

from ssl_bench.methods.em import entropy_loss
from ssl_bench.testing import tiny_setup


def test_entropy_loss_hand_value():
    # pixel 1: p = (1/2, 1/2) -> H / ln 2 = 1; pixel 2: p = (3/4, 1/4)
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert abs(float(entropy_loss(logits)) - (1.0 + h2) / 2) < 1e-6


def test_weight_ramps_up_and_loss_is_sup_plus_weighted_entropy():
    method, batch = tiny_setup("em", total_iterations=100)
    first = method.training_step(batch, 0)
    last = method.training_step(batch, 100)
    assert abs(first.terms["w_ent"] - 0.1 * math.exp(-5)) < 1e-9
    assert last.terms["w_ent"] == 0.1
    expected = last.terms["sup"] + 0.1 * last.terms["entropy"]
    assert abs(float(last.loss.detach()) - expected) < 1e-5


def test_unlabeled_gradient_step_lowers_entropy():
    method, batch = tiny_setup("em")
    method.train(False)  # deterministic forward (no dropout, BN running stats)
    params = method.trainable_parameters()
    before = float(entropy_loss(method.student(batch.x_ulb)))
    out = method.training_step(batch, 5)
    grads = torch.autograd.grad(out.unsup, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p.add_(g, alpha=-0.5)
    after = float(entropy_loss(method.student(batch.x_ulb)))
    assert after < before


def test_ssl4mis_variant_takes_the_entropy_of_the_whole_batch():
    """SSL4MIS's train_entropy_minimization_2D.py: entropy_loss(outputs_soft) over labeled + unlabeled."""
    # a fixed network: confident logits (10, 0, 0, 0) on the 2 labeled slices, uniform on the 2 unlabeled
    fixed = torch.zeros(4, 4, 32, 32)
    fixed[:2, 0] = 10.0

    class Fixed(torch.nn.Module):
        def forward(self, x):
            assert len(x) == 4
            return fixed

    p = [math.exp(10) / (math.exp(10) + 3)] + [1 / (math.exp(10) + 3)] * 3
    h_lb = -sum(q * math.log(q) for q in p) / math.log(4)
    for variant, expected in (("paper", 1.0), ("ssl4mis", (h_lb + 1.0) / 2)):
        method, batch = tiny_setup("em", {"variant": variant})
        method.student = Fixed()
        assert method.training_step(batch, 5).terms["entropy"] == pytest.approx(expected, rel=1e-5), variant
    with pytest.raises(ValueError, match="em: unknown variant 'all'"):
        tiny_setup("em", {"variant": "all"})
