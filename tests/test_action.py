"""ACTION: losses against hand computations, active sampling, stages, ablations, memory bank."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_bench.config import ConfigError
from ssl_bench.methods.action import FifoBank
from ssl_bench.methods.action_heads import bilinear_at
from ssl_bench.methods.action_losses import (anco_loss, byol_loss, class_relation_graph, distillation_kl,
                                             hard_query_mask, negative_class_distribution, pseudo_label_ce,
                                             sample_negative_classes, sampled_anco)
from ssl_bench.testing import check_stage, run_contract, tiny_setup


# -- distillation ---------------------------------------------------------------------------------
def test_distillation_kl_hand_computed():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_t = torch.tensor([[2.0, 0.0]])  # cos with anchors: (1, 0)
    z_s = torch.tensor([[0.0, 3.0]])  # cos with anchors: (0, 1)
    # p_t = softmax((1, 0) / 0.5) = (e^2, 1) / (e^2 + 1); p_s = softmax((0, 1) / 1) = (1, e) / (1 + e)
    pt = [math.e ** 2 / (math.e ** 2 + 1), 1 / (math.e ** 2 + 1)]
    ps = [1 / (1 + math.e), math.e / (1 + math.e)]
    expected = pt[0] * math.log(pt[0] / ps[0]) + pt[1] * math.log(pt[1] / ps[1])
    assert expected == pytest.approx(0.8287, abs=1e-4)
    got = distillation_kl(z_t, z_s, anchors, tau_t=0.5, tau_s=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_distillation_kl_zero_when_teacher_and_student_agree():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 8, generator=g)
    anchors = torch.randn(7, 8, generator=g)
    assert float(distillation_kl(z, 3 * z, anchors, 0.1, 0.1)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_kl(z, z, anchors, 0.01, 0.1)) > 0.01  # sharper teacher: not equal


def test_distillation_kl_gradient_reaches_student_only():
    z_t = torch.randn(3, 4, requires_grad=True)
    z_s = torch.randn(3, 4, requires_grad=True)
    anchors = torch.randn(5, 4, requires_grad=True)
    distillation_kl(z_t, z_s, anchors, 0.01, 0.1).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None and anchors.grad is None


def test_byol_loss_hand_computed():
    got = byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    assert float(got) == pytest.approx(2 - 2 / math.sqrt(2), rel=1e-6)


def test_pseudo_label_ce_hand_computed():
    student = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)  # pixel 0: (2, 0); pixel 1: (0, 0)
    teacher = torch.tensor([[0.99, 0.01], [0.6, 0.4]]).T.reshape(1, 2, 1, 2)
    loss, mask = pseudo_label_ce(student, teacher, theta=0.97)
    assert mask.tolist() == [[[True, False]]]
    # only pixel 0 counts: -log(e^2 / (e^2 + 1)), divided by all 2 pixels
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-2)) / 2, rel=1e-6)


# -- AnCo -----------------------------------------------------------------------------------------
def eq4_by_hand(queries, positives, negatives, tau):
    per_class = []
    for qs, pos, negs in zip(queries, positives, negatives):
        terms = []
        for q in qs.tolist():
            dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
            num = math.exp(dot(q, pos.tolist()) / tau)
            den = num + sum(math.exp(dot(q, n) / tau) for n in negs.tolist())
            terms.append(-math.log(num / den))
        per_class.append(sum(terms) / len(terms))
    return sum(per_class) / len(per_class)


def test_anco_loss_single_query_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    got = anco_loss([q], torch.tensor([[1.0, 0.0]]), [torch.tensor([[0.0, 1.0]])], tau=0.5)
    assert float(got) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)  # -log e^2/(e^2+e^0)


def test_anco_loss_matches_eq4_loop():
    s = 1 / math.sqrt(2)
    queries = [torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]]), torch.tensor([[-1.0, 0.0], [0.6, -0.8]])]
    positives = torch.tensor([[0.9, 0.1], [-0.5, -0.5]])
    negatives = [torch.tensor([[-1.0, 0.0], [0.0, -1.0]]), torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]])]
    got = anco_loss(queries, positives, negatives, tau=0.5)
    assert float(got) == pytest.approx(eq4_by_hand(queries, positives, negatives, 0.5), rel=1e-6)


def test_class_relation_graph_and_negative_distribution():
    protos = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
    G = class_relation_graph(protos)
    assert G.tolist() == [[1.0, 0.5, 0.0], [0.5, 0.5, 1.0], [0.0, 1.0, 4.0]]
    p = negative_class_distribution(G, 1)
    den = math.exp(0.5) + math.exp(1.0)
    assert p.tolist() == pytest.approx([math.exp(0.5) / den, 0.0, math.exp(1.0) / den], rel=1e-6)


def test_negative_class_sampling_follows_softmax_of_graph():
    G = torch.tensor([[1.0, 0.2, -0.5, 0.9], [0.2, 1.0, 0.7, -1.0], [-0.5, 0.7, 1.0, 0.1],
                      [0.9, -1.0, 0.1, 1.0]])
    n = 40_000
    draws = sample_negative_classes(G, 1, n, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / n
    others = torch.tensor([0.2, 0.7, -1.0])
    want = torch.softmax(others, 0)
    assert freq[1] == 0  # never the query's own class
    assert freq[[0, 2, 3]].tolist() == pytest.approx(want.tolist(), abs=0.01)


def test_hard_query_mask_is_eq7():
    labels = torch.tensor([[[0, 1, 1, 2]]])
    probs = torch.tensor([[0.99, 0.01, 0.0], [0.02, 0.97, 0.01], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    probs = probs.T.reshape(1, 3, 1, 4)
    valid = torch.tensor([[[True, True, True, False]]])
    got = hard_query_mask(probs, labels, valid, theta=0.97)
    # pixel 0: 0.99 > 0.97 easy; pixel 1: 0.97 <= 0.97 hard; pixel 2: 0.5 hard; pixel 3 not valid
    assert got.tolist() == [[[False, True, True, False]]]


def _toy_pixels(seed=0):
    """Labels (1, 4, 4) with 3 classes, probabilities, and a fixed embedding per pixel."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 2], [2, 2, 2, 2]]])
    probs = torch.full((1, 3, 4, 4), 0.0)
    probs.scatter_(1, labels[:, None], 0.99)  # confident everywhere ...
    probs[0, :, 1, 1] = torch.tensor([0.5, 0.4, 0.1])  # ... except one hard pixel of class 1
    probs[0, :, 0, 0] = torch.tensor([0.9, 0.05, 0.05])  # and one of class 0
    emb = F.normalize(torch.randn(16, 5, generator=g), dim=1)
    return labels, probs, emb


def test_sampled_anco_assembles_eq4_from_its_samples():
    labels, probs, emb = _toy_pixels()
    valid = torch.ones_like(labels, dtype=torch.bool)
    calls = []

    def embed_at(flat):
        calls.append(len(flat))
        return emb[flat]

    res = sampled_anco(embed_at, labels, valid, probs, theta=0.97, tau=0.5, num_queries=6, num_negatives=7,
                       prototype_pixels=0, generator=torch.Generator().manual_seed(1))
    assert res.classes == [0, 1, 2]
    flat_lab = labels.reshape(-1)
    hard = {0: {0}, 1: {5}}
    for c, q_idx, n_idx in zip(res.classes, res.query_index, res.negative_index):
        assert len(q_idx) == 6 and len(n_idx) == 7
        if c in hard:  # queries are the hard pixels only
            assert set(q_idx.tolist()) == hard[c]
        else:  # class 2 has no hard pixel: fall back to all of its pixels
            assert set(q_idx.tolist()) <= set(torch.nonzero(flat_lab == 2).squeeze(1).tolist())
        assert (flat_lab[n_idx] != c).all()  # negatives come from other classes
    # with prototype_pixels=0 the positive keys are the exact class means (Eq. 5)
    means = torch.stack([emb[flat_lab == c].mean(0) for c in range(3)])
    assert torch.allclose(res.prototypes, means, atol=1e-6)
    # the loss is Eq. 4 evaluated on exactly what was sampled
    expected = eq4_by_hand([emb[q] for q in res.query_index], means, [emb[n] for n in res.negative_index], 0.5)
    assert float(res.loss) == pytest.approx(expected, rel=1e-5)
    # embeddings are computed once, for the sampled pixels only (16 pool pixels + 3 x 6 queries)
    assert calls == [16 + 18]


def test_sampled_anco_respects_valid_mask_and_pool_size():
    labels, probs, emb = _toy_pixels()
    valid = torch.ones_like(labels, dtype=torch.bool)
    valid[0, 3] = False  # the last row (four pixels of class 2) does not take part
    res = sampled_anco(lambda f: emb[f], labels, valid, probs, 0.97, 0.5, num_queries=4, num_negatives=50,
                       prototype_pixels=2, generator=torch.Generator().manual_seed(2))
    excluded = {12, 13, 14, 15}
    for idx in res.query_index + res.negative_index:
        assert not (set(idx.tolist()) & excluded)
    # a pool of 2 pixels per class: negatives of class 0 use at most 2 distinct pixels of each other class
    assert len(set(res.negative_index[0].tolist())) <= 4


def test_sampled_anco_needs_two_classes():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    probs = torch.zeros(1, 3, 4, 4)
    probs[:, 0] = 1.0
    res = sampled_anco(lambda f: torch.ones(len(f), 2), labels, torch.ones_like(labels, dtype=torch.bool),
                       probs, 0.97, 0.5)
    assert float(res.loss) == 0.0 and res.classes == [0]


def test_bilinear_at_equals_upsample_then_read():
    g = torch.Generator().manual_seed(0)
    H = W = 16
    b = torch.randint(0, 2, (50,), generator=g)
    y = torch.randint(0, H, (50,), generator=g)
    x = torch.randint(0, W, (50,), generator=g)
    for side in (2, 4, 8, 16):
        feat = torch.randn(2, 3, side, side, generator=g)
        dense = F.interpolate(feat, size=(H, W), mode="bilinear", align_corners=False)
        want = dense[b, :, y, x]
        assert torch.allclose(bilinear_at(feat, b, y, x, (H, W)), want, atol=1e-5), side


# -- memory bank ----------------------------------------------------------------------------------
def test_fifo_bank_keeps_newest_rows_oldest_first():
    bank = FifoBank(3)
    assert len(bank) == 0
    bank.push(torch.tensor([[0.0], [1.0]]))
    bank.push(torch.tensor([[2.0], [3.0]]))
    assert bank.items.squeeze(1).tolist() == [1.0, 2.0, 3.0]
    bank.push(torch.tensor([[4.0]]))
    assert bank.items.squeeze(1).tolist() == [2.0, 3.0, 4.0]
    bank.push(torch.arange(10.0, 15.0).unsqueeze(1))  # more rows than the bank holds
    assert bank.items.squeeze(1).tolist() == [12.0, 13.0, 14.0]
    twin = FifoBank(3)
    twin.load(bank.state())
    assert torch.equal(twin.items, bank.items)


def test_stage_i_fills_bank_and_extra_state_round_trips():
    method, batch = tiny_setup("action", {"bank_size": 3})
    method.set_stage("i")
    check_stage(method, batch)  # 2 unlabeled slices
    assert len(method.global_bank) == 2
    check_stage(method, batch)
    assert len(method.global_bank) == 3  # capped at bank_size
    method.set_stage("ii")
    check_stage(method, batch)
    assert method.local_bank.items.shape == (2, 8 * 8, 512)  # 2 slices x (8 x 8 regions) x 512-d
    state = method.extra_state()
    twin, _ = tiny_setup("action", {"bank_size": 3})
    twin.load_extra_state(state)
    assert torch.equal(twin.global_bank.items, method.global_bank.items)
    assert torch.equal(twin.local_bank.items, method.local_bank.items)
    assert twin.ema_step == method.ema_step


# -- stages, teacher, trainable parameters -------------------------------------------------------
def test_stages_and_fractions():
    method, _ = tiny_setup("action")
    st = method.stages()
    assert [s.name for s in st] == ["i", "ii", "iii"]
    assert [s.fraction for s in st] == pytest.approx([0.25, 0.25, 0.5])
    assert [s.uses_labels for s in st] == [False, True, True]
    with pytest.raises(ValueError, match="no stage 'finetune'"):
        method.set_stage("finetune")


def test_trainable_parameters_are_stage_aware():
    method, _ = tiny_setup("action")
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    enc = ids(method.net.backbone.encoder.parameters())
    dec = ids(method.net.backbone.decoder.parameters())
    method.set_stage("i")
    p1 = ids(method.trainable_parameters())
    assert enc <= p1 and not (dec & p1) and ids(method.predictors["global"].parameters()) <= p1
    method.set_stage("ii")
    p2 = ids(method.trainable_parameters())
    assert enc | dec <= p2 and ids(method.net.local_head.parameters()) <= p2
    assert not (ids(method.net.global_head.parameters()) & p2)
    method.set_stage("iii")
    p3 = ids(method.trainable_parameters())
    assert ids(method.rep_head.parameters()) <= p3 and not (ids(method.net.local_head.parameters()) & p3)
    teacher = ids(method.teacher.parameters())
    assert not (teacher & (p1 | p2 | p3))


def test_teacher_follows_by_ema_across_stages_and_is_not_resynced():
    method, batch = tiny_setup("action")
    assert method.predictor() is method.net.backbone  # inference: the U-Net only
    for stage in ("i", "ii", "iii"):
        before = [p.detach().clone() for p in method.teacher.parameters()]
        method.set_stage(stage)  # a new stage must not copy the student into the teacher
        assert all(torch.equal(a, b) for a, b in zip(before, method.teacher.parameters()))
        rep = check_stage(method, batch)
        assert not rep["teacher_grads"], stage
        assert rep["ema_ok"]["teacher"], stage
        assert all(p.grad is None for p in method.teacher.parameters())


def test_stage_iii_terms_and_hard_query_counts():
    method, batch = tiny_setup("action")
    method.set_stage("iii")
    out = check_stage(method, batch)["out"]
    assert {"sup", "pseudo_ce", "anco", "confident"} <= set(out.terms)
    assert out.terms["anco"] > 0 and out.terms["anco_classes"] >= 2


# -- ablations ------------------------------------------------------------------------------------
STAGES = {"none": ["i", "ii", "iii"], "vanilla": ["i", "finetune"], "no-rsi": ["i", "ii", "iii"],
          "no-stage2": ["i", "iii"], "no-rsi-no-stage2": ["i", "iii"], "no-stage3": ["i", "ii"],
          "no-anco": ["i", "ii", "iii"], "no-unsup": ["i", "ii", "iii"], "no-pseudo-ce": ["i", "ii", "iii"]}


@pytest.mark.parametrize("ablation", sorted(STAGES))
def test_ablation_contract_and_stages(ablation):
    method, _ = tiny_setup("action", {"ablation": ablation})
    assert method.ablation_tag() == ablation
    st = method.stages()
    assert [s.name for s in st] == STAGES[ablation]
    assert sum(s.fraction for s in st) == pytest.approx(1.0)
    epochs = {"i": 100, "ii": 100, "iii": 200, "finetune": 200}
    total = sum(epochs[s.name] for s in st)
    assert [s.fraction for s in st] == pytest.approx([epochs[s.name] / total for s in st])
    for rep in run_contract("action", {"ablation": ablation}):
        assert math.isfinite(rep["loss"]) and not rep["missing"], (rep["stage"], rep["missing"][:3])
        assert not rep["teacher_grads"] and all(rep["ema_ok"].values())


def _step_terms(ablation, stage):
    method, batch = tiny_setup("action", {"ablation": ablation})
    method.set_stage(stage)
    rep = check_stage(method, batch)
    return method, rep["out"]


def test_no_rsi_uses_only_the_query_views():
    for stage, kl, byol in (("i", "global_kl", "global_byol"), ("ii", "local_kl", "local_byol")):
        method, out = _step_terms("no-rsi", stage)
        assert byol in out.terms and kl not in out.terms
        assert len(method.global_bank) == 0 and len(method.local_bank) == 0
        _, full = _step_terms("none", stage)
        assert kl in full.terms and byol not in full.terms


def test_no_anco_removes_exactly_anco():
    method, out = _step_terms("no-anco", "iii")
    assert "anco" not in out.terms and "pseudo_ce" in out.terms
    assert float(out.loss.detach()) == pytest.approx(float((out.terms["sup"] + out.terms["pseudo_ce"]).detach()), rel=1e-5)
    assert not ({id(p) for p in method.rep_head.parameters()} & {id(p) for p in method.trainable_parameters()})


def test_no_unsup_keeps_only_the_supervised_loss():
    _, out = _step_terms("no-unsup", "iii")
    assert out.unsup is None and set(out.terms) == {"sup"}
    assert float(out.loss.detach()) == pytest.approx(float(out.terms["sup"].detach()))


def test_no_pseudo_ce_keeps_supervised_and_anco():
    method, out = _step_terms("no-pseudo-ce", "iii")
    assert "pseudo_ce" not in out.terms and out.terms["anco"] > 0
    assert float(out.loss.detach()) == pytest.approx(float((out.terms["sup"] + out.terms["anco"]).detach()), rel=1e-5)  # w_anco 1 (paper)
    assert {id(p) for p in method.rep_head.parameters()} <= {id(p) for p in method.trainable_parameters()}


def test_full_stage_iii_loss_is_the_sum_of_its_terms():
    _, out = _step_terms("none", "iii")
    want = float((out.terms["sup"] + out.terms["pseudo_ce"] + out.terms["anco"]).detach())
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-5)


def test_vanilla_finetune_is_supervised_only():
    method, out = _step_terms("vanilla", "finetune")
    assert out.unsup is None and set(out.terms) == {"sup"}
    _, out_i = _step_terms("vanilla", "i")
    assert "global_byol" in out_i.terms


@pytest.mark.parametrize("student,teacher", [("weak", "weak"), ("strong", "weak"), ("weak", "strong"),
                                             ("strong", "strong")])
def test_augmentation_switches(student, teacher):
    method, batch = tiny_setup("action", {"student_aug": student, "teacher_aug": teacher})
    assert method.augment_tag() == f"{student}-{teacher}"
    assert method.ablation_tag() == "none"
    s, t = method._aligned_views(batch)
    assert torch.equal(s, batch.x_ulb_strong if student == "strong" else batch.x_ulb)
    if teacher == "weak":
        assert torch.equal(t, batch.x_ulb)
    elif student == "weak":
        assert torch.equal(t, batch.x_ulb_strong)
    else:  # both strong: independent photometric draws on the same geometry
        assert not torch.equal(t, s) and not torch.equal(t, batch.x_ulb)
    s_i, t_i = method._independent_views(batch)
    assert s_i.shape == t_i.shape == batch.x_ulb_raw.shape and not torch.equal(s_i, t_i)


def test_bad_ablation_or_augmentation_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown ablation 'no-foo'.*no-anco"):
        tiny_setup("action", {"ablation": "no-foo"})
    with pytest.raises(ConfigError, match="student_aug='medium'"):
        tiny_setup("action", {"student_aug": "medium"})


# -- the lean stage iii (issue 18): the numbers of the per-class sampling ------------------------
def _random_pixels(seed, n_cls=4, b=3, h=24, w=24, dim=6):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(n_cls, (b, h, w), generator=g)
    labels[0, :12] = 0  # a large class, so that its prototype pool skips the full permutation
    probs = torch.rand(b, n_cls, h, w, generator=g).softmax(1)
    valid = torch.rand(b, h, w, generator=g) > 0.1
    emb = F.normalize(torch.randn(b * h * w, dim, generator=g), dim=1).requires_grad_(True)
    return labels, valid, probs, emb


@pytest.mark.parametrize("form,key_grad,pool", [("paper", True, 2), ("reco", False, 2), ("paper", True, 0),
                                                ("reco", True, 500)])
def test_lean_sampling_gives_the_numbers_of_the_per_class_sampling(form, key_grad, pool):
    from anco_reference import sampled_anco as reference

    for seed in range(3):
        labels, valid, probs, emb = _random_pixels(seed)
        runs = []
        for fn in (sampled_anco, reference):
            g = torch.Generator().manual_seed(seed + 10)
            res = fn(lambda f: emb[f] * 1.0, labels, valid, probs, theta=0.5, tau=0.3, num_queries=5,
                     num_negatives=9, prototype_pixels=pool, generator=g, form=form, key_grad=key_grad)
            grad, = torch.autograd.grad(res.loss, emb)
            runs.append((res, grad, g.get_state()))
        (new, g_new, s_new), (old, g_old, s_old) = runs
        assert new.classes == old.classes and new.n_hard == old.n_hard
        assert torch.equal(new.loss, old.loss) and torch.equal(g_new, g_old)
        assert all(torch.equal(a, b) for a, b in zip(new.query_index, old.query_index))
        assert all(torch.equal(a, b) for a, b in zip(new.negative_index, old.negative_index))
        assert torch.equal(s_new, s_old)  # the generator is left where it was: later draws agree too


def test_permutation_head_is_randperm_without_the_permutation():
    from ssl_bench.methods.action_losses import permutation_head

    for size, n in ((10, 3), (5000, 7), (300_000, 512)):
        g1, g2 = torch.Generator().manual_seed(size), torch.Generator().manual_seed(size)
        assert torch.equal(permutation_head(size, n, g1), torch.randperm(size, generator=g2)[:n])
        assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_lean_stage_iii_step_equals_the_old_one_on_a_seed(monkeypatch):
    import ssl_bench.methods.action as action_mod
    from anco_reference import sampled_anco as reference

    outs = []
    for fn in (sampled_anco, reference):
        monkeypatch.setattr(action_mod, "sampled_anco", fn)
        torch.manual_seed(0)
        method, batch = tiny_setup("action", seed=4)
        method.set_stage("iii")
        method.train(True)
        out = method.training_step(batch, 3)
        out.loss.backward()
        outs.append((out, [p.grad.clone() for p in method.net.parameters() if p.grad is not None]))
    (new, g_new), (old, g_old) = outs
    assert float(new.terms["anco"]) > 0
    assert torch.equal(new.loss, old.loss) and all(torch.equal(a, b) for a, b in zip(g_new, g_old))
    assert {k: float(v) for k, v in new.terms.items()} == {k: float(v) for k, v in old.terms.items()}


def test_similarities_stay_float32_under_bf16_autocast():
    from ssl_bench.methods.action_losses import fp32

    g = torch.Generator().manual_seed(0)
    z_t, z_s, anchors = (torch.randn(8, 16, generator=g) for _ in range(3))
    plain = distillation_kl(z_t, z_s, anchors, 0.01, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = distillation_kl(z_t, z_s, anchors, 0.01, 0.1)
        inside = z_t @ anchors.T
        with fp32(z_t):
            outside = z_t @ anchors.T
    assert inside.dtype == torch.bfloat16 and outside.dtype == torch.float32  # the probe of review C5
    assert amp.dtype == torch.float32 and torch.equal(amp, plain)
    q, pos, neg = torch.randn(5, 16, generator=g), torch.randn(1, 16, generator=g), torch.randn(7, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_anco = anco_loss([q], pos, [neg], 0.1, cosine=True)
    assert torch.equal(amp_anco, anco_loss([q], pos, [neg], 0.1, cosine=True))


def test_negative_classes_drawn_on_the_device_are_multinomials_draws():
    """Review D1: the class draws use the uniforms torch.multinomial would have drawn, so the
    classes (and the generator's state after them) are those of ``sample_negative_classes``."""
    from ssl_bench.methods.action_losses import draw_negative_classes

    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n_cls = 2 + seed % 4
        graph = class_relation_graph(torch.randn(n_cls, 8, generator=g), cosine=seed % 2 == 0)
        rows, temp = list(range(n_cls)), (0.3, 1.0)[seed % 2]
        g_old, g_new = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        old = torch.stack([sample_negative_classes(graph, r, 300, g_old, temp) for r in rows])
        u = torch.stack([torch.rand(300, dtype=torch.float64, generator=g_new) for _ in rows])
        assert torch.equal(draw_negative_classes(graph, rows, u, temp), old)
        assert torch.equal(g_old.get_state(), g_new.get_state())


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_stage_iii_step_reads_the_device_once(variant):
    """Review D1/D3: one host sync per stage-iii step (AnCo's class sizes and hard counts, which
    the CPU generator's draws depend on), counted with ``host_reads.HostReads``; it was about 17
    before issue 18 and 2 before this change (the class graph was read back too)."""
    from host_reads import HostReads

    method, batch = tiny_setup("action", {"variant": variant}, seed=4)
    method.set_stage("iii")
    method.train(True)
    with HostReads() as probe:
        out = method.training_step(batch, 19)
    assert float(out.terms["anco"].detach()) > 0
    assert probe.reads == ["tolist"]
