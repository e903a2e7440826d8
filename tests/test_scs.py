"""SCS: SimCLR's NT-Xent and the supervised pixel contrast against hand computations, pixel
sampling, and the stage-aware trainable parameters."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_bench.methods.contrastive import (pair_contrastive_loss, supervised_contrastive_loss,
                                           two_view_masks)
from ssl_bench.methods.scs import sample_pixels
from ssl_bench.testing import check_stage, tiny_setup


def test_two_view_masks():
    positives, negatives = two_view_masks(2)
    assert positives.nonzero().tolist() == [[0, 2], [1, 3], [2, 0], [3, 1]]
    assert negatives.nonzero().tolist() == [[0, 1], [0, 3], [1, 0], [1, 2], [2, 1], [2, 3], [3, 0], [3, 2]]


def test_simclr_loss_matches_hand_computation():
    # views [a1, b1, a2, b2]: each view identical to its partner, orthogonal to the other image
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    positives, negatives = two_view_masks(2)
    # every anchor: -log(e^{1/0.5} / (e^{1/0.5} + 2 e^0)) = log(1 + 2 e^-2)
    expected = math.log(1 + 2 * math.exp(-2))
    assert float(pair_contrastive_loss(z, positives, negatives, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_supervised_pixel_contrast_matches_hand_computation():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([1, 1, 1, 2])
    denom = math.log(math.e + 1 + math.exp(-1))  # pixel 0 against pixels 1, 2, 3 (tau = 1)
    anchor_0 = denom - 0.5 * (1 + 0)  # positives: pixel 1 (cos 1) and pixel 2 (cos 0)
    anchor_2 = math.log(3)  # cos 0 with everyone; positives 0 and 1
    # pixel 3 has no positive and is not an anchor
    expected_all = (2 * anchor_0 + anchor_2) / 3
    got = supervised_contrastive_loss(feats, labels, 1.0)
    assert float(got) == pytest.approx(expected_all, rel=1e-6)
    anchors = torch.tensor([True, True, False, True])
    assert float(supervised_contrastive_loss(feats, labels, 1.0, anchors)) == pytest.approx(anchor_0, rel=1e-6)
    # temperature scales the similarities: tau = 0.5 doubles them
    denom_half = math.log(math.exp(2) + 1 + math.exp(-2))
    assert float(supervised_contrastive_loss(feats, labels, 0.5, anchors)) == pytest.approx(
        denom_half - 0.5 * (2 + 0), rel=1e-6)


def test_no_anchor_gives_a_differentiable_zero():
    feats = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(feats, torch.tensor([0, 1, 2]), 0.1)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_sample_pixels_on_a_stride_grid():
    feats = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    labels = (feats[:, 0] % 3).long()
    f, y = sample_pixels(feats, labels, 4, 100)
    assert f.shape == (8, 1) and y.shape == (8,)  # 2 slices x 2 x 2 grid points
    assert f[:, 0].tolist() == [0, 4, 32, 36, 64, 68, 96, 100]
    assert torch.equal(y, (f[:, 0] % 3).long())
    f, y = sample_pixels(feats, labels, 1, 10, torch.Generator().manual_seed(0))
    assert f.shape == (10, 1) and torch.equal(y, (f[:, 0] % 3).long())  # features keep their labels
    assert len(set(f[:, 0].tolist())) == 10  # without replacement


def test_stages_and_their_trainable_parameters():
    method, batch = tiny_setup("scs")
    assert [(s.name, s.fraction, s.uses_labels) for s in method.stages()] == [
        ("global", 0.25, False), ("local", 0.25, True), ("finetune", 0.5, True)]
    encoder = {id(p) for p in method.student.encoder.parameters()}
    decoder_body = {id(p) for p in method.student.decoder.ups.parameters()}
    head = {id(p) for p in method.student.decoder.head.parameters()}
    method.set_stage("global")
    assert {id(p) for p in method.trainable_parameters()} == encoder | {id(p) for p in method.g1.parameters()}
    method.set_stage("local")
    local = {id(p) for p in method.trainable_parameters()}
    assert local == encoder | decoder_body | {id(p) for p in method.local_head.parameters()}
    assert not head & local  # the segmentation head is not trained by pixel contrast
    assert not check_stage(method, batch)["missing"]
    method.set_stage("finetune")
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in method.student.parameters()}


def test_local_stage_depends_on_the_labels():
    method, batch = tiny_setup("scs")
    method.set_stage("local")
    method.train(False)

    def loss(y):
        batch.y_lb, batch.y_lb_raw = y, y
        method.ctx.generator.manual_seed(0)
        return float(method.training_step(batch, 0).loss.detach())

    blocky = batch.y_lb.clone()
    assert loss(blocky) == pytest.approx(loss(blocky.clone()))
    assert loss(blocky) != pytest.approx(loss(torch.ones_like(blocky)))
    assert loss(torch.zeros_like(blocky)) == 0.0  # background pixels are never anchors


def test_projecting_sampled_pixels_equals_sampling_the_projected_map():
    method, _ = tiny_setup("scs")
    dec = torch.randn(2, method.student.decoder_channels[-1], 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    whole, y1 = sample_pixels(method.local_head(dec), labels, 4, 100)
    f, y2 = sample_pixels(dec, labels, 4, 100)
    assert torch.allclose(method.local_head(f[:, :, None, None]).flatten(1), whole, atol=1e-5)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_contrastive_losses_run_in_float32_under_autocast(amp_dtype):
    """Review E3: under float16 autocast the logits were half and masked_fill(-1e9) raised
    "value cannot be converted to type c10::Half without overflow" (GCL and SCS crashed); they are
    built in float32 now, so both losses equal their float32 values under either autocast dtype."""
    from ssl_bench.methods.contrastive import cosine_logits

    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(8, 16, generator=g), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    pos, neg = two_view_masks(4)
    plain = pair_contrastive_loss(z, pos, neg, 0.1), supervised_contrastive_loss(z, labels, 0.1)
    with torch.autocast("cpu", dtype=amp_dtype):
        assert (z @ z.T).dtype == amp_dtype  # what the logits were
        assert cosine_logits(z.half(), 0.1).dtype == torch.float32
        amp = pair_contrastive_loss(z, pos, neg, 0.1), supervised_contrastive_loss(z, labels, 0.1)
    assert torch.equal(amp[0], plain[0]) and torch.equal(amp[1], plain[1])


def test_supervised_contrast_masks_instead_of_selecting():
    """Review D3: the mean over qualifying anchors is a masked sum (no ``bool(any)`` and no
    boolean index, two host syncs on a GPU): the selection's mean up to the order of the float
    additions, and the same gradients."""
    from host_reads import HostReads

    def old(feats, labels, temperature, anchors):  # the selection form, before the change
        logits = F.normalize(feats.float(), dim=-1) @ F.normalize(feats.float(), dim=-1).T / temperature
        not_self = ~torch.eye(len(feats), dtype=torch.bool)
        log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, -1e9), dim=1, keepdim=True)
        same = (labels[:, None] == labels[None, :]) & not_self
        keep = (same.sum(1) > 0) & anchors
        return (-(log_prob * same.float()).sum(1) / same.sum(1).clamp_min(1))[keep].mean()

    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        feats = torch.randn(40, 8, generator=g, requires_grad=True)
        labels, anchors = torch.randint(5, (40,), generator=g), torch.rand(40, generator=g) > 0.3
        with HostReads() as probe:
            new = supervised_contrastive_loss(feats, labels, 0.2, anchors)
        assert probe.reads == []
        assert torch.allclose(new, old(feats, labels, 0.2, anchors), rtol=1e-6, atol=0)
        g_new, g_old = (torch.autograd.grad(v, feats)[0] for v in (new, old(feats, labels, 0.2, anchors)))
        assert torch.allclose(g_new, g_old, rtol=1e-5, atol=1e-8)
