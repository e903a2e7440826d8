"""BCP: the masked loss against a hand computation, the box mask, pasting in both directions
pixel by pixel, which pixels count as ground truth, the teacher's start, and the LCC variant."""
import math

import pytest
import torch

from ssl_bench.methods.bcp import box_mask, largest_components, masked_supervised_loss, paste
from ssl_bench.testing import check_stage, run_contract, tiny_setup


def test_masked_loss_matches_hand_computation():
    logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 for both classes everywhere
    target = torch.tensor([[[0, 1]]])
    region = torch.tensor([[1.0, 0.0]])  # only the first pixel (class 0) counts
    eps = 1e-5
    dice_0 = (2 * 0.5 + eps) / (0.5 + 1 + eps)
    dice_1 = eps / (0.5 + 0 + eps)
    expected = 0.5 * (math.log(2) + 1 - (dice_0 + dice_1) / 2)
    assert float(masked_supervised_loss(logits, target, region)) == pytest.approx(expected, rel=1e-6)
    # the pixel outside the region may hold anything
    other = torch.tensor([[[0, 0]]])
    assert float(masked_supervised_loss(logits, other, region)) == pytest.approx(expected, rel=1e-6)


def test_box_mask_is_one_zero_box_of_two_thirds():
    for seed in range(5):
        mask = box_mask(30, 24, 2 / 3, torch.Generator().manual_seed(seed))
        zeros = (mask == 0).nonzero()
        assert len(zeros) == 20 * 16
        rows, cols = zeros[:, 0], zeros[:, 1]
        assert int(rows.max() - rows.min()) == 19 and int(cols.max() - cols.min()) == 15
        assert set(mask.unique().tolist()) == {0.0, 1.0}


def _constant_batch(method, batch):
    """Labeled halves a/b with intensities 1/2 and labels 1/2; unlabeled halves with 10/20."""
    batch.x_lb = torch.cat([torch.full((1, 1, 32, 32), 1.0), torch.full((1, 1, 32, 32), 2.0)])
    batch.y_lb = torch.cat([torch.full((1, 32, 32), 1), torch.full((1, 32, 32), 2)])
    batch.x_ulb = torch.cat([torch.full((1, 1, 32, 32), 10.0), torch.full((1, 1, 32, 32), 20.0)])
    return batch


def test_paste_in_both_directions_pixel_by_pixel():
    method, batch = tiny_setup("bcp")
    batch = _constant_batch(method, batch)
    mask = box_mask(32, 32, 2 / 3, torch.Generator().manual_seed(1))
    box = mask == 0
    pseudo = torch.stack([torch.full((32, 32), 3), torch.full((32, 32), 0)])
    x_in, y_in, x_out, y_out = method.mix(batch, pseudo, mask)
    # x_in: labeled a outside the box, unlabeled a pasted in
    assert torch.equal(x_in[0, 0], torch.where(box, 10.0, 1.0))
    assert torch.equal(y_in[0], torch.where(box, 3, 1))
    # x_out: unlabeled b outside, labeled b pasted into the box
    assert torch.equal(x_out[0, 0], torch.where(box, 2.0, 20.0))
    assert torch.equal(y_out[0], torch.where(box, 2, 0))
    assert y_in.dtype == torch.long and y_out.dtype == torch.long


def test_ground_truth_and_pseudo_label_pixels_are_weighted_apart():
    method, batch = tiny_setup("bcp")
    method.set_stage("self_train")
    method.train(False)

    def run(pseudo_value):
        method.pseudo_labels = lambda x: torch.full((x.shape[0], 32, 32), pseudo_value)
        method.ctx.generator.manual_seed(0)  # the same box
        return method.training_step(batch, 0)

    a, b = run(0), run(3)
    # pseudo-labels only enter the unlabeled term; the total is sup + alpha * unsup
    assert float(a.terms["sup"]) == pytest.approx(float(b.terms["sup"]))
    assert float(a.terms["unsup"]) != pytest.approx(float(b.terms["unsup"]))
    for out in (a, b):
        assert float(out.loss.detach()) == pytest.approx(float(out.terms["sup"] + 0.5 * out.terms["unsup"]), rel=1e-6)


def test_teacher_is_the_pretrained_student_when_self_training_starts():
    method, batch = tiny_setup("bcp")
    assert [(s.name, s.fraction) for s in method.stages()] == [("pretrain", 0.25), ("self_train", 0.75)]
    method.set_stage("pretrain")
    assert method.training_step(batch, 0).unsup is None  # labeled slices only
    check_stage(method, batch)  # one SGD step, then the EMA hook (momentum 0 while pre-training)
    for t, s in zip(method.teacher.state_dict().values(), method.student.state_dict().values()):
        assert torch.equal(t, s)
    method.set_stage("self_train")
    assert method.teachers()["teacher"][2] == 0.99
    rep = check_stage(method, batch)
    assert rep["ema_ok"]["teacher"] and rep["unsup_grad"] > 0
    assert any(not torch.equal(t, s) for t, s in zip(method.teacher.parameters(), method.student.parameters()))


def test_pretrain_pastes_labeled_halves():
    method, batch = tiny_setup("bcp")
    batch = _constant_batch(method, batch)
    seen = {}
    student = method.student

    def spy(x):
        seen["x"] = x
        return student(x)

    method.student = spy
    method.set_stage("pretrain")
    method.ctx.generator.manual_seed(2)
    method.training_step(batch, 0)
    method.ctx.generator.manual_seed(2)
    box = method.new_mask(batch.x_lb) == 0
    assert torch.equal(seen["x"][0, 0], torch.where(box, 2.0, 1.0))


def test_largest_components_keep_one_blob_per_class():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 0, 0] = 1  # a single pixel
    labels[0, 2, 2] = labels[0, 3, 3] = labels[0, 4, 4] = 1  # a diagonal (8-connected) blob of 3
    labels[0, 0, 5] = 2
    out = largest_components(labels, 3)
    expected = labels.clone()
    expected[0, 0, 0] = 0
    assert torch.equal(out, expected)


def test_lcc_variant_contract_and_bad_input():
    for rep in run_contract("bcp", {"variant": "lcc"}):
        assert not rep["missing"]
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_setup("bcp", {"variant": "largest"})
    method, batch = tiny_setup("bcp")
    method.set_stage("self_train")
    batch.x_ulb = batch.x_ulb[:1]
    with pytest.raises(ValueError, match="at least 2 labeled and 2 unlabeled"):
        method.training_step(batch, 0)
    assert paste(torch.ones(1, 2, 2), torch.zeros(1, 2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist() == \
        [[[1.0, 0.0], [0.0, 1.0]]]


def test_authors_schedule_settings_split_and_hold_the_lr():
    """The authors' ACDC code as published at CVPR 2023: 30k pre-training + 30k self-training, constant lr
    (``pretrain_fraction=0.5`` and the loop's ``poly_power=0``; its code since July 2023: 10k + 30k = 0.25)."""
    from ssl_bench.engine import stage_iterations
    from ssl_bench.schedules import poly_lr

    method, _ = tiny_setup("bcp", {"pretrain_fraction": "0.5"})
    assert stage_iterations(method.stages(), 60_000) == [30_000, 30_000]
    assert stage_iterations(tiny_setup("bcp")[0].stages(), 40_000) == [10_000, 30_000]
    assert {poly_lr(0.01, step, 30_000, 0.0) for step in (0, 15_000, 29_999)} == {0.01}


def test_lcc_self_training_step_reads_the_device_once():
    """Review D3: the lcc variant reads the pseudo-labels once (scipy labels them on the host) and
    sends the kept components back from pinned memory; the pageable copy back was a second sync."""
    from host_reads import HostReads

    method, batch = tiny_setup("bcp", {"variant": "lcc"})
    method.set_stage("self_train")
    with HostReads() as probe:
        method.training_step(batch, 5)
    assert probe.reads == ["cpu"]
