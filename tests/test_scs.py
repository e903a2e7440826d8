"""SCS: SimCLR's NT-Xent and the supervised pixel contrast against hand computations, pixel
sampling, and the stage-aware trainable parameters."""
import math

import pytest
import torch

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
