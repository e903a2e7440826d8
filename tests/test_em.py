"""EM: the normalised-entropy loss against hand values, and that its gradient lowers the entropy."""
import math

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
    assert abs(float(last.loss) - expected) < 1e-5


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
