"""URPC: the paper's Eq. 2-4 and the SSL4MIS form against hand values (they differ); the pyramid
has one prediction per decoder level at input size, and the main output is the predictor's."""
import math

import pytest
import torch

from ssl_bench.methods.urpc import urpc_loss
from ssl_bench.testing import tiny_setup

# two scales, two classes, one image of two pixels: pixel a disagrees, pixel b is uniform
P1 = torch.tensor([[[[0.8, 0.5]], [[0.2, 0.5]]]])  # (1, 2, 1, 2)
P2 = torch.tensor([[[[0.4, 0.5]], [[0.6, 0.5]]]])


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_paper_eq4_hand_value():
    pc = (0.6, 0.4)
    total = 0.0
    for ps in ((0.8, 0.2), (0.4, 0.6)):
        d = kl(ps, pc)  # KL(p_s || p_c) at pixel a; 0 at pixel b
        w = math.exp(-d)
        sq = sum((a - b) ** 2 for a, b in zip(ps, pc))  # summed over classes
        rectified = (w * sq + 1.0 * 0.0) / (w + 1.0)
        total += rectified + (d + 0.0) / 2  # + mean uncertainty over the two pixels
    expected = total / 2
    assert abs(float(urpc_loss([P1, P2], "paper")) - expected) < 1e-6
    assert abs(expected - 0.0814) < 1e-4  # the figure worked out on paper


def test_ssl4mis_form_hand_value_differs_from_paper():
    pc = (0.6, 0.4)
    total = 0.0
    for ps in ((0.8, 0.2), (0.4, 0.6)):
        d = kl(pc, ps)  # KLDivLoss(log p_s, p_c) = KL(p_c || p_s)
        w = math.exp(-d)
        sq_mean = sum((a - b) ** 2 * w for a, b in zip(ps, pc)) / 4  # mean over (B, C, H, W)
        w_mean = (w + 1.0) / 2  # mean over (B, 1, H, W)
        total += sq_mean / (w_mean + 1e-8) + d / 2
    expected = total / 2
    got = float(urpc_loss([P1, P2], "ssl4mis"))
    assert abs(got - expected) < 1e-6
    assert abs(got - float(urpc_loss([P1, P2], "paper"))) > 1e-3


def test_agreeing_scales_cost_nothing_and_unknown_variant_is_refused():
    p = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    for variant in ("paper", "ssl4mis"):
        assert float(urpc_loss([p, p, p], variant)) < 1e-6
    with pytest.raises(ValueError, match="unknown variant"):
        urpc_loss([p, p], "nope")


def test_pyramid_scales_heads_and_predictor():
    method, batch = tiny_setup("urpc")
    assert [h.kernel_size for h in method.heads] == [(1, 1)] * 3
    assert method.head_perturbations == ["dropout", "feature_drop", "feature_noise"]
    scales = method.pyramid(batch.x_ulb)
    assert len(scales) == 4 and all(s.shape == (2, 4, 32, 32) for s in scales)
    method.train(False)
    assert torch.allclose(method.pyramid(batch.x_ulb)[0], method.predictor()(batch.x_ulb))
    ssl, _ = tiny_setup("urpc", {"variant": "ssl4mis"})
    assert [h.kernel_size for h in ssl.heads] == [(3, 3)] * 3 and ssl.upsample_mode == "nearest"
    explicit, _ = tiny_setup("urpc", {"variant": "ssl4mis", "head_kernel": "1"})
    assert [h.kernel_size for h in explicit.heads] == [(1, 1)] * 3


def test_deepest_head_dropout_is_half_in_both_variants():
    """SSL4MIS's Decoder_URPC calls Dropout(x, p=0.5) on the deepest auxiliary level, as the paper form."""
    ones = torch.ones(200, 100)
    for overrides in ({}, {"variant": "ssl4mis"}):
        method, _ = tiny_setup("urpc", overrides)
        assert method.dropout_rate == 0.5
        dropped = method._perturb("dropout", ones)
        zero_fraction = float((dropped == 0).float().mean())
        assert abs(zero_fraction - 0.5) < 0.02  # 20 000 Bernoulli draws: std 0.0035
        assert torch.allclose(dropped[dropped != 0], torch.tensor(2.0))  # survivors scaled by 1 / (1 - p)
    explicit, _ = tiny_setup("urpc", {"variant": "ssl4mis", "dropout_rate": "0.3"})
    assert explicit.dropout_rate == 0.3
