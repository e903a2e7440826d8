"""ICT: the consistency against a hand value; the target is the mixup of the EMA teacher's
predictions with the same lam and partner as the student's mixed input."""
import math

import pytest
import torch

from ssl_bench.methods.ict import ict_consistency, mix, sample_beta
from ssl_bench.testing import tiny_setup


def test_consistency_and_mix_hand_values():
    student = torch.zeros(1, 2, 1, 1)  # (1/2, 1/2)
    target = torch.tensor([0.7, 0.3]).view(1, 2, 1, 1)
    assert abs(float(ict_consistency(student, target)) - 0.04) < 1e-7  # (0.2^2 + 0.2^2) / 2
    a, b = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    assert torch.allclose(mix(a, b, torch.tensor(0.3)), torch.full((2, 1, 1, 1), 0.3))
    assert torch.allclose(mix(a, b, torch.tensor([0.2, 0.9])).flatten(), torch.tensor([0.2, 0.9]))


def test_paper_target_is_the_mix_of_teacher_predictions():
    method, batch = tiny_setup("ict", {"variant": "paper"})
    method.train(False)  # deterministic teacher for the comparison
    u = batch.x_ulb
    state = method.ctx.generator.get_state()
    u_mix, target = method.mixup(u)
    method.ctx.generator.set_state(state)
    lam = sample_beta(1.0, None, method.ctx.generator)
    perm = torch.randperm(u.shape[0], generator=method.ctx.generator)
    with torch.no_grad():
        t = method.teacher(u).softmax(1)
    assert torch.allclose(u_mix, lam * u + (1 - lam) * u[perm])
    assert torch.allclose(target, lam * t + (1 - lam) * t[perm], atol=1e-6)
    # the consistency compares the student's prediction on u_mix with that target
    method.train(False)
    out = method.training_step(batch, 5)
    method.ctx.generator.set_state(state)
    u_mix, target = method.mixup(u)
    with torch.no_grad():
        expected = ict_consistency(method.student(torch.cat([batch.x_lb, u_mix]))[u.shape[0]:], target)
    assert abs(float(out.unsup.detach()) - float(expected)) < 1e-6


def test_ssl4mis_mixes_halves_per_pair_and_variant_defaults():
    method, batch = tiny_setup("ict", {"variant": "ssl4mis"})
    assert (method.alpha, method.consistency, method.rampup, method.momentum) == (0.2, 0.1, 1.0, 0.99)
    u_mix, target = method.mixup(batch.x_ulb)
    assert u_mix.shape[0] == batch.x_ulb.shape[0] // 2 == target.shape[0]
    paper, _ = tiny_setup("ict")
    assert (paper.alpha, paper.consistency, paper.rampup, paper.momentum) == (1.0, 100.0, 0.25, 0.999)
    override, _ = tiny_setup("ict", {"variant": "ssl4mis", "alpha": "0.5"})
    assert override.alpha == 0.5


def test_beta_draws_follow_alpha():
    g = torch.Generator().manual_seed(0)
    small = sample_beta(0.1, 4000, g)
    assert ((small < 0.05) | (small > 0.95)).float().mean() > 0.6  # alpha << 1: near 0 or 1
    mean = float(sample_beta(1.0, 4000, g).mean())
    assert abs(mean - 0.5) < 0.03
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_setup("ict", {"variant": "mixmatch"})
    assert math.isfinite(float(sample_beta(0.2, None, None)))


@pytest.mark.parametrize("variant", ["paper", "ssl4mis"])
def test_step_makes_no_host_sync(variant):
    """Review D3: the Beta draws reach the device from pinned memory (``to_device``), not by a
    pageable ``.to`` that waits for the device."""
    from host_reads import HostReads

    method, batch = tiny_setup("ict", {"variant": variant})
    with HostReads() as probe:
        method.training_step(batch, 5)
    assert probe.reads == []
