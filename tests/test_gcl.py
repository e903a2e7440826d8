"""GCL: NT-Xent with masks against a hand computation, the partition positives (G^D), the local
regions, and the stage-aware trainable parameters."""
import math

import pytest
import torch

from ssl_bench.methods.contrastive import pair_contrastive_loss
from ssl_bench.methods.gcl import global_masks, local_masks, partition_of, region_embeddings
from ssl_bench.testing import check_stage, tiny_setup


def test_pair_contrastive_loss_matches_hand_computation():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    negatives = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    # both pairs: s_pos = cos 90 deg / 0.5 = 0, one negative at cos 45 deg / 0.5 = sqrt 2
    expected = math.log(1 + math.exp(math.sqrt(2)))
    assert float(pair_contrastive_loss(z, positives, negatives, 0.5)) == pytest.approx(expected, rel=1e-6)
    # the length of an embedding does not matter (cosine similarity)
    assert float(pair_contrastive_loss(3 * z, positives, negatives, 0.5)) == pytest.approx(expected, rel=1e-6)
    # a pair without negatives costs nothing: -log(e^s / e^s)
    none = torch.zeros(3, 3, dtype=torch.bool)
    assert float(pair_contrastive_loss(z, positives, none, 0.5)) == pytest.approx(0.0, abs=1e-6)


def test_partitions_of_relative_positions():
    pos = torch.tensor([0.0, 0.24, 0.25, 0.5, 0.74, 0.99, 1.0])
    assert partition_of(pos, 4).tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_positives_come_from_the_same_partition_of_other_volumes():
    # slices: 0, 1 from volume 0 partition 0; 2 volume 0 partition 3; 3 volume 1 partition 0;
    # 4 volume 1 partition 3. Embedding i is view 1 of slice i, embedding 5 + i its view 2.
    pos = torch.tensor([0.0, 0.1, 0.9, 0.05, 0.95])
    case = torch.tensor([0, 0, 0, 1, 1])
    positives, negatives = global_masks(pos, case, 4)
    assert positives.shape == (10, 10)
    assert sorted(positives[0].nonzero().flatten().tolist()) == [3, 5, 8]  # its other view, slice 3
    assert sorted(positives[8].nonzero().flatten().tolist()) == [0, 1, 3, 5, 6]
    assert sorted(negatives[0].nonzero().flatten().tolist()) == [2, 4, 7, 9]  # partition 3
    # slice 1 shares slice 0's partition and volume: neither a positive nor a negative
    assert not positives[0, 1] and not negatives[0, 1] and not positives[0, 6]
    assert not (positives & negatives).any() and not positives.diagonal().any()
    assert torch.equal(positives, positives.T) and torch.equal(negatives, negatives.T)


def test_local_regions_and_masks():
    feat = torch.arange(64.0).view(1, 1, 8, 8)
    regions = region_embeddings(feat, 3)
    assert regions.shape == (1, 13, 9)
    assert torch.equal(regions[0, 0], feat[0, 0, 0:3, 0:3].flatten())  # corner
    assert torch.equal(regions[0, 4], feat[0, 0, 2:5, 2:5].flatten())  # centre: round(0.5 * 5) = 2
    assert torch.equal(regions[0, 12], feat[0, 0, 4:7, 4:7].flatten())  # round(0.75 * 5) = 4
    positives, negatives = local_masks(2)
    assert positives.nonzero().tolist() == [[0, 2], [1, 3], [2, 0], [3, 1]]
    assert negatives.nonzero().tolist() == [[0, 1], [0, 3], [1, 0], [1, 2], [2, 1], [2, 3], [3, 0], [3, 2]]
    with pytest.raises(ValueError, match="region_size"):
        region_embeddings(torch.zeros(1, 1, 2, 2), 3)


def test_stages_and_their_trainable_parameters():
    method, batch = tiny_setup("gcl")
    assert [(s.name, s.fraction, s.uses_labels) for s in method.stages()] == [
        ("global", 0.25, False), ("local", 0.25, False), ("finetune", 0.5, True)]
    encoder = {id(p) for p in method.student.encoder.parameters()}
    up_to_level = {id(p) for up in method.student.decoder.ups[:2] for p in up.parameters()}
    head = {id(p) for p in method.student.decoder.head.parameters()}
    g1 = {id(p) for p in method.g1.parameters()}
    g2 = {id(p) for p in method.g2.parameters()}

    method.set_stage("global")
    assert {id(p) for p in method.trainable_parameters()} == encoder | g1
    method.set_stage("local")
    assert {id(p) for p in method.trainable_parameters()} == up_to_level | g2
    rep = check_stage(method, batch)
    assert not rep["missing"]
    # the encoder is frozen in the local stage: no gradient reaches it
    assert all(p.grad is None for p in method.student.encoder.parameters())
    assert all(p.grad is None for p in method.student.decoder.head.parameters())
    method.set_stage("finetune")
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in method.student.parameters()}
    assert head <= {id(p) for p in method.trainable_parameters()}
    assert method.training_step(batch, 0).unsup is None  # fine-tuning is supervised only


def test_global_stage_needs_positions_and_volumes():
    method, batch = tiny_setup("gcl")
    method.set_stage("global")
    batch.pos_ulb = None
    with pytest.raises(ValueError, match="pos_ulb"):
        method.training_step(batch, 0)


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="global_fraction"):
        tiny_setup("gcl", {"global_fraction": "0.6", "local_fraction": "0.5"})


def test_global_loss_follows_the_volume_indices(monkeypatch):
    import ssl_bench.methods.gcl as gcl

    seen = {}

    def spy(z, positives, negatives, temperature):
        seen.update(n=z.shape[0], positives=positives, negatives=negatives, temperature=temperature)
        return z.sum()

    monkeypatch.setattr(gcl, "pair_contrastive_loss", spy)
    method, batch = tiny_setup("gcl")
    method.set_stage("global")
    batch.x_ulb_raw = torch.rand(4, 1, 32, 32)
    batch.pos_ulb = torch.tensor([0.1, 0.1, 0.9, 0.9])
    batch.case_ulb = torch.tensor([7, 8, 7, 8])
    method.training_step(batch, 0)
    assert seen["n"] == 8 and seen["temperature"] == 0.1  # two views of four slices
    # slices 0 and 1: same partition, different volumes -> all four of their views are positives
    assert sorted(seen["positives"][0].nonzero().flatten().tolist()) == [1, 4, 5]
    assert sorted(seen["negatives"][0].nonzero().flatten().tolist()) == [2, 3, 6, 7]
