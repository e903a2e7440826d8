"""SS-Net: the smoothness distance and the contrast against hand computations, the adversarial direction
(no parameter gradient, BN statistics untouched, worse than a random direction of the same norm), the
prototypes (ranking, kept per class, pulling features towards them), the loss composition of both
variants, the field recipe and bad input."""
import math

import pytest
import torch

import ssl_bench.methods.ssnet as ss
from ssl_bench.losses import dice_loss
from ssl_bench.protocols import get_protocol
from ssl_bench.registry import get_method_class
from ssl_bench.runconfig import RunSpec, resolve
from ssl_bench.testing import tiny_setup


def test_l2_normalize_is_per_sample():
    d = torch.tensor([[[3.0, 4.0]], [[0.0, 2.0]]])
    out = ss.l2_normalize(d)
    torch.testing.assert_close(out, torch.tensor([[[0.6, 0.8]], [[0.0, 1.0]]]), atol=1e-6, rtol=0)


def test_smoothness_distance_is_the_squared_soft_dice_by_hand():
    """Two classes, two pixels: 1 - mean_c (2 sum p q) / (sum p^2 + sum q^2) (eps 1e-5)."""
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): p1 = (0.5, 0.25)
    q = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    p0, p1 = torch.tensor([0.5, 0.75]), torch.tensor([0.5, 0.25])
    q0, q1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])

    def dice(p, t):
        return (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)

    expected = 1 - (dice(p0, q0) + dice(p1, q1)) / 2
    assert float(dice_loss(logits, q, form="squared")) == pytest.approx(float(expected), rel=1e-6)


def test_adversarial_direction_by_hand_and_without_parameter_gradients():
    """d = normalise(grad_d D(f(x + xi d0), p)) from d0 = normalise(U[-0.5, 0.5]) (the same draw)."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    x = torch.rand(2, 1, 6, 6)
    p = torch.rand(2, 3, 6, 6).softmax(1)

    def dist(logits, t):
        return dice_loss(logits, t, form="squared")

    d = ss.adversarial_direction(net, x, p, 10.0, dist, 1, torch.Generator().manual_seed(3))
    assert all(q.grad is None for q in net.parameters())  # only d was differentiated
    d0 = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) - 0.5
    d0 = (d0 / (d0.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) + 1e-8)).requires_grad_(True)
    grad, = torch.autograd.grad(dist(net(x + 10.0 * d0), p), d0)
    expected = grad / (grad.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) + 1e-8)
    torch.testing.assert_close(d, expected)
    loss, r = ss.vat_loss(net, x, p, 10.0, 6.0, dist, 1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(r, 6.0 * expected)
    assert float(loss.detach()) == pytest.approx(float(dist(net(x + r), p).detach()), rel=1e-6)
    loss.backward()
    assert all(q.grad is not None for q in net.parameters())  # the last pass trains the network


def test_adversarial_perturbation_hurts_more_than_a_random_one_of_the_same_norm():
    method, batch = tiny_setup("ssnet")
    net = method.student
    net.train(False)  # fixed network: the comparison sees the same function
    x = torch.cat([batch.x_lb, batch.x_ulb])
    with torch.no_grad():
        net.decoder.head.weight.mul_(20)  # a network with an opinion (a random one is near uniform)
        p = net(x).softmax(1)
        assert float(method.distance(net(x), p)) == pytest.approx(0, abs=1e-6)  # squared form: 0 at agreement
    for eps in (1.0, 6.0):
        adv, r = ss.vat_loss(net, x, p, 10.0, eps, method.distance, 1, torch.Generator().manual_seed(0))
        # norm eps, up to the release's + 1e-8 on the (tiny) gradient norm
        torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((4,), eps), rtol=0.05, atol=0)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            rand = [float(method.distance(net(x + eps * ss.l2_normalize(torch.randn(x.shape, generator=g))), p))
                    for _ in range(8)]
        assert float(adv.detach()) > 1.5 * max(rand), (eps, float(adv), rand)  # about 2x on this seed


def test_vat_passes_leave_batch_norm_statistics_alone():
    method, batch = tiny_setup("ssnet")
    net = method.student
    x = torch.cat([batch.x_lb, batch.x_ulb])
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), int(m.num_batches_tracked)) for m in bns]
    with ss.bn_stats_frozen(net):
        ss.vat_loss(net, x, net(x).detach().softmax(1), 10.0, 6.0, method.distance)
    assert all(torch.equal(m.running_mean, b) and int(m.num_batches_tracked) == n for m, (b, n) in zip(bns, before))
    assert all(m.track_running_stats for m in bns)  # restored
    net(x)
    assert not torch.equal(bns[0].running_mean, before[0][0])  # outside, the statistics move again


def test_prototype_contrast_by_hand():
    """Class 1: features (1, 0), (0, 1); prototypes (1, 0), (2, 0) -> distances (0, 0), (1, 1); feature
    weights sigmoid(0), sigmoid(ln 3) = 0.5, 0.75 rescaled to 0.8, 1.2; prototype weights equal.
    mean = (0 + 0 + 1.2 + 1.2) / 4 = 0.6, over 3 classes: 0.2. Class 0 has no prototypes."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]], requires_grad=True)
    labels = torch.tensor([1, 1, 0, 0])
    memory = [None, torch.tensor([[1.0, 0.0], [2.0, 0.0]]), None]
    seen = {}

    def feature_selector(t):
        seen["requires_grad"] = t.requires_grad
        return torch.tensor([[0.0], [math.log(3.0)]])

    loss = ss.prototype_contrast(z, labels, memory, {1: feature_selector, 2: None},
                                 {1: lambda m: torch.zeros(m.shape[0], 1), 2: None}, 3)
    assert float(loss) == pytest.approx(0.2, rel=1e-6)
    assert seen["requires_grad"] is False  # the selector reads detached features
    loss.backward()
    assert z.grad[2:].abs().sum() == 0  # no prototypes for class 0: no pull
    # a single feature or a single prototype of a class: no term
    assert float(ss.prototype_contrast(z[:1], labels[:1], memory, {1: feature_selector}, {1: None}, 3)) == 0


def test_prototypes_pull_features_towards_their_class():
    torch.manual_seed(0)
    heads = ss.SSNetHeads(4, 3, dim=8)
    z = torch.randn(12, 8, requires_grad=True)
    labels = torch.tensor([1] * 6 + [2] * 6)
    memory = [None, torch.randn(5, 8), torch.randn(5, 8)]
    sel = {c: heads.selector[str(c)] for c in (1, 2)}
    msel = {c: heads.memory_selector[str(c)] for c in (1, 2)}

    def mean_cos(t):
        return [float(torch.nn.functional.cosine_similarity(t[labels == c][:, None],
                                                            memory[c][None], dim=-1).mean()) for c in (1, 2)]

    before = mean_cos(z.detach())
    loss = ss.prototype_contrast(z, labels, memory, sel, msel, 3)
    grad, = torch.autograd.grad(loss, z)
    after = mean_cos(z.detach() - 5.0 * grad)
    assert after[0] > before[0] and after[1] > before[1]


def test_select_prototypes_keeps_the_ranked_ones_per_foreground_class():
    z = torch.arange(14.0)[:, None].repeat(1, 2)
    labels = torch.tensor([1] * 5 + [2] * 2 + [0] * 7)
    score = {1: lambda t: t[:, :1], 2: lambda t: t[:, :1]}
    hi = ss.select_prototypes(z, labels, 3, 2, score, "highest")
    lo = ss.select_prototypes(z, labels, 3, 2, score, "lowest")
    assert set(hi) == {1, 2} and hi[1][:, 0].tolist() == [4.0, 3.0] and lo[1][:, 0].tolist() == [0.0, 1.0]
    assert hi[2][:, 0].tolist() == [5.0, 6.0] == lo[2][:, 0].tolist()  # not more than per_class: all kept
    with pytest.raises(ValueError, match="ranking"):
        ss.select_prototypes(z, labels, 3, 2, score, "middle")


def test_memory_keeps_a_class_without_correct_pixels_and_is_checkpointed():
    method, batch = tiny_setup("ssnet")
    f = torch.randn(10, method.student.decoder_channels[-1])
    method.update_memory(f, torch.tensor([1] * 5 + [2] * 5))
    old2 = method.memory[2].clone()
    method.update_memory(f[:5], torch.tensor([1] * 5))
    assert torch.equal(method.memory[2], old2) and method.memory[0] is None
    assert not method.memory[1].requires_grad
    state = method.extra_state()
    other, _ = tiny_setup("ssnet")
    other.load_extra_state(state)
    assert torch.equal(other.memory[2], old2) and other.memory[0] is None


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_loss_composition_of_both_variants(variant):
    method, batch = tiny_setup("ssnet", {"variant": variant})
    method.train(False)  # deterministic network: the hand computation sees the same outputs
    step = method.ctx.total_iterations - 1
    out = method.training_step(batch, step)
    logits = method.student(batch.x_lb)
    if variant == "released":
        sup = dice_loss(logits, batch.y_lb)  # Dice alone, every class
        assert method.cfg.ranking == "lowest"
    else:
        sup = 0.5 * (torch.nn.functional.cross_entropy(logits, batch.y_lb) + dice_loss(logits, batch.y_lb))
        assert method.cfg.ranking == "highest"
    assert float(out.terms["sup"]) == pytest.approx(float(sup), rel=1e-5)
    w = 0.1 * method.ramp(step, 1.0)
    assert out.terms["w_cons"] == pytest.approx(w)
    unsup = out.terms["lds"] + 0.1 * (out.terms["contrast_lb"] + out.terms["contrast_ulb"])
    assert float(out.unsup) == pytest.approx(float(unsup), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(sup + w * unsup), rel=1e-5)
    assert math.isfinite(float(out.loss.detach())) and out.unsup.requires_grad


def test_prototypes_come_from_correctly_predicted_foreground_pixels(monkeypatch):
    method, batch = tiny_setup("ssnet")
    method.train(False)
    seen = {}
    original = method.update_memory

    def spy(f, labels):
        seen["labels"] = labels.clone()
        return original(f, labels)

    monkeypatch.setattr(method, "update_memory", spy)
    method.training_step(batch, 0)
    pred = method.student(batch.x_lb).argmax(1).reshape(-1)
    y = batch.y_lb.reshape(-1)
    correct = (pred == y) & (y > 0)
    assert torch.equal(seen["labels"], y[correct])


def test_runs_are_named_as_its_published_rows():
    """`--with-published` matches runs to later_methods_acdc.csv by display name: SS-Net's rows show."""
    from ssl_bench.table.runs import display_name, read_reference

    assert display_name("ssnet") == "SS-Net" in set(read_reference("later_methods_acdc.csv")["method"])
    # MC-Net's default (and every recipe's) variant is MC-Net+, the name of its published ACDC row
    assert display_name("mcnet") == "MC-Net+" in set(read_reference("later_methods_acdc.csv")["method"])


def test_field_recipe_and_bad_input():
    train, cfg = resolve(RunSpec(method="ssnet", dataset="tiny-test", protocol="field"), get_method_class("ssnet"))
    assert (cfg.variant, train.rampup.quantum, train.rampup.length, train.dice_form) == ("released", 0.005, 1.0, "squared")
    assert (train.iterations, train.labeled_bs, train.unlabeled_bs, train.report_checkpoint) == (30000, 12, 12, "best")
    assert train.poly_power == 0.0  # the release keeps lr 0.01
    assert "train_ss_2d.py" in get_protocol("field").recipe("ssnet").source
    assert get_protocol("field-v1").recipe("ssnet") is get_protocol("field-v1").default  # v2 only
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_setup("ssnet", {"variant": "v2"})
    with pytest.raises(ValueError, match="ranking"):
        tiny_setup("ssnet", {"ranking": "best"})
    with pytest.raises(ValueError, match="sup"):
        tiny_setup("ssnet", {"sup": "ce"})
    with pytest.raises(ValueError, match="vat_form"):
        tiny_setup("ssnet", {"vat_form": "cubic"})
