"""UAMT: entropy, threshold and masked consistency against hand values; the mask follows the
ramped ln C threshold (ln 2 in the "ln2" variant); the teacher makes T stochastic passes."""
import math

import pytest
import torch

from ssl_bench.methods.uamt import masked_consistency, predictive_entropy, uncertainty_threshold
from ssl_bench.testing import tiny_setup


def test_predictive_entropy_hand_value():
    # two passes, one pixel, two classes: (1, 0) and (0, 1) average to (1/2, 1/2) -> ln 2
    samples = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 2, 1, 1)
    assert abs(float(predictive_entropy(samples)) - math.log(2)) < 1e-6


def test_threshold_ramps_from_three_quarters_to_ln_c():
    assert abs(uncertainty_threshold(0, 100, 4) - (0.75 + 0.25 * math.exp(-5)) * math.log(4)) < 1e-9
    assert abs(uncertainty_threshold(100, 100, 4) - math.log(4)) < 1e-12
    assert abs(uncertainty_threshold(100, 100, 4, "ln2") - math.log(2)) < 1e-12
    assert abs(uncertainty_threshold(50, 100, 3) - (0.75 + 0.25 * math.exp(-5 * 0.25)) * math.log(3)) < 1e-9


def test_masked_consistency_hand_value():
    student = torch.zeros(1, 2, 1, 2)  # both pixels (1/2, 1/2)
    teacher = torch.tensor([[[[math.log(3.0), 5.0]], [[0.0, -5.0]]]])  # pixel a: (3/4, 1/4)
    mask = torch.tensor([[[1.0, 0.0]]])  # pixel b (very different) is masked out
    # pixel a: (1/4)^2 + (1/4)^2 = 1/8, one unmasked pixel
    assert abs(float(masked_consistency(student, teacher, mask)) - 1 / 8) < 1e-6
    assert abs(float(masked_consistency(student, teacher, mask, "ln2")) - 1 / 16) < 1e-6


@pytest.mark.parametrize("variant,expected_fraction", [("paper", 0.75), ("ln2", 0.25)])
def test_mask_follows_the_threshold(variant, expected_fraction, monkeypatch):
    method, batch = tiny_setup("uamt", {"variant": variant}, total_iterations=10)
    # a known uncertainty map: values around ln 2 = 0.69 and ln 4 = 1.39
    values = torch.tensor([0.5, 1.0, 1.3, 1.4]).repeat_interleave(32 * 32 * 2 // 4)
    monkeypatch.setattr(method, "teacher_uncertainty", lambda u: values.view(2, 32, 32))
    out = method.training_step(batch, 10)  # end of the ramp: H = U_max
    u_max = math.log(4) if variant == "paper" else math.log(2)
    assert abs(out.terms["threshold"] - u_max) < 1e-9
    # paper: 0.5, 1.0, 1.3 are below ln 4 = 1.386, 1.4 is not; ln2: only 0.5 is below ln 2
    assert abs(out.terms["mask_fraction"] - expected_fraction) < 1e-9
    early = method.training_step(batch, 0)
    assert early.terms["threshold"] < 0.76 * u_max


def test_teacher_makes_t_stochastic_passes():
    method, batch = tiny_setup("uamt", {"mc_passes": "5"})
    calls = []
    method.teacher.register_forward_hook(lambda m, i, o: calls.append(o.detach()))
    method.train(True)
    method.training_step(batch, 3)
    assert len(calls) == 1 + 5  # the consistency target, then T uncertainty passes
    assert not torch.allclose(calls[1], calls[2])  # dropout and input noise differ per pass
    assert all(p.grad is None for p in method.teacher.parameters())


def test_unlabeled_term_has_a_gradient_where_the_mask_is_open(monkeypatch):
    # at random init the teacher's entropy is close to ln C, so the ramped threshold can close
    # the whole mask; with a confident teacher the term must reach the student
    method, batch = tiny_setup("uamt")
    monkeypatch.setattr(method, "teacher_uncertainty", lambda u: torch.zeros(u.shape[0], *u.shape[2:]))
    out = method.training_step(batch, 5)
    assert out.terms["mask_fraction"] == 1.0
    grads = torch.autograd.grad(out.unsup, method.trainable_parameters(), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
