"""ACTION's two variants, ``paper`` and ``released``: each switch against hand values or the
behaviour it names (key gradients, valid-pixel gate, teacher re-copy in the real loop, ReCo's
weighted CE, CutMix/ClassMix, AnCo's two forms, the stage-ii global term, stage budgets,
eval-mode teacher), the AnCo/supervised gradient ratio, and an end-to-end run on acdc-phantom."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ssl_bench import engine
from ssl_bench.config import ConfigError
from ssl_bench.methods import action as action_module
from ssl_bench.methods.action import VARIANTS, Action
from ssl_bench.methods.action_losses import (anco_loss, class_relation_graph, negative_class_distribution,
                                             reco_weighted_ce, sampled_anco)
from ssl_bench.methods.action_mix import classmix_mask, cutmix_mask
from ssl_bench.runconfig import RunSpec
from ssl_bench.testing import check_stage, run_contract, tiny_setup


# -- ReCo-weighted pseudo-label CE ----------------------------------------------------------------
def test_reco_weighted_ce_hand_computed():
    # two images of 1 x 2 pixels, two classes; logits (class 0, class 1) per pixel
    student = torch.tensor([[[2.0, 200.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]).unsqueeze(2)  # (2, 2, 1, 2)
    teacher = torch.tensor([[[0.99, 0.6], [0.01, 0.4]], [[0.3, 0.2], [0.7, 0.8]]]).unsqueeze(2)
    loss, mask = reco_weighted_ce(student, teacher, theta=0.97)
    assert mask.tolist() == [[[True, False]], [[False, False]]]
    # image 0 has weight 1/2 (one confident pixel of two), image 1 weight 0; its second pixel
    # has CE exactly 0 (logit 200) and leaves the mean, image 1's two pixels stay in it with weight 0
    expected = (0.5 * math.log(1 + math.exp(-2)) + 0.0 + 0.0) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(reco_weighted_ce(student, teacher, theta=0.5)[0]) == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.e)) / 3, rel=1e-6)


# -- AnCo: the two forms --------------------------------------------------------------------------
def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_anco_loss_cosine_form_hand_computed():
    q = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    pos = torch.tensor([[0.5, 0.5], [0.0, 0.3]])  # not unit: the cosine form renormalises
    neg = [torch.tensor([[0.0, -3.0]]), torch.tensor([[1.0, 1.0]])]
    terms = []
    for qi, p, n in (([2.0, 0.0], [0.5, 0.5], [0.0, -3.0]), ([0.0, 1.0], [0.0, 0.3], [1.0, 1.0])):
        a, b = math.exp(_cos(qi, p) / 0.5), math.exp(_cos(qi, n) / 0.5)
        terms.append(-math.log(a / (a + b)))
    got = anco_loss(q, pos, neg, tau=0.5, cosine=True, n_classes=3)  # a third class present but skipped
    assert float(got) == pytest.approx(sum(terms) / 3, rel=1e-6)
    dot = anco_loss(q, pos, neg, tau=0.5)  # the paper's form: raw dot products, mean over given classes
    by_hand = [-math.log(math.exp(1.0 / 0.5) / (math.exp(1.0 / 0.5) + math.exp(0.0))),
               -math.log(math.exp(0.3 / 0.5) / (math.exp(0.3 / 0.5) + math.exp(1.0 / 0.5)))]
    assert float(dot) == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_cosine_graph_and_tempered_negative_distribution():
    protos = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    G = class_relation_graph(protos, cosine=True)
    s = 1 / math.sqrt(2)
    assert G.flatten().tolist() == pytest.approx([1.0, s, 0.0, s, 1.0, s, 0.0, s, 1.0], abs=1e-6)
    p = negative_class_distribution(G, 0, temperature=0.5)
    den = math.exp(s / 0.5) + math.exp(0.0)
    assert p.tolist() == pytest.approx([0.0, math.exp(s / 0.5) / den, 1 / den], rel=1e-6)


def _toy_pixels(seed=0):
    """Labels (1, 4, 4), 3 classes; confident everywhere except pixel 0 (class 0) and 5 (class 1)."""
    labels = torch.tensor([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 2], [2, 2, 2, 2]]])
    probs = torch.zeros(1, 3, 4, 4).scatter_(1, labels[:, None], 0.99)
    probs[0, :, 1, 1] = torch.tensor([0.5, 0.4, 0.1])
    probs[0, :, 0, 0] = torch.tensor([0.9, 0.05, 0.05])
    emb = torch.randn(16, 5, generator=torch.Generator().manual_seed(seed))
    return labels, probs, emb


def test_reco_form_skips_classes_without_hard_queries_and_uses_cosine():
    labels, probs, emb = _toy_pixels()
    valid = torch.ones_like(labels, dtype=torch.bool)
    res = sampled_anco(lambda f: F.normalize(emb[f], dim=1), labels, valid, probs, theta=0.97, tau=0.5,
                       num_queries=4, num_negatives=6, prototype_pixels=0, form="reco",
                       generator=torch.Generator().manual_seed(3))
    assert res.classes == [0, 1, 2]
    assert set(res.query_index[0].tolist()) == {0} and set(res.query_index[1].tolist()) == {5}
    assert len(res.query_index[2]) == 0 and len(res.negative_index[2]) == 0  # class 2: no hard pixel
    unit = F.normalize(emb, dim=1)
    flat = labels.reshape(-1)
    means = torch.stack([unit[flat == c].mean(0) for c in range(3)])
    per_class = []
    for c in (0, 1):
        q = unit[res.query_index[c]]
        keys = torch.cat([means[c:c + 1], unit[res.negative_index[c]]])
        logits = F.cosine_similarity(q[:, None], keys[None], dim=2) / 0.5
        per_class.append(float(-torch.log_softmax(logits, 1)[:, 0].mean()))
    assert float(res.loss) == pytest.approx(sum(per_class) / 3, rel=1e-5)  # skipped class still counted


@pytest.mark.parametrize("key_grad", [True, False])
def test_key_gradient_policy(key_grad):
    """Paper reading: the prototype and the negatives carry gradients; released: only queries."""
    labels, probs, emb = _toy_pixels()
    table = emb.clone().requires_grad_(True)
    res = sampled_anco(lambda f: F.normalize(table[f], dim=1), labels, torch.ones_like(labels, dtype=torch.bool),
                       probs, theta=0.97, tau=0.5, num_queries=4, num_negatives=8, prototype_pixels=0,
                       generator=torch.Generator().manual_seed(0), key_grad=key_grad)
    res.loss.backward()
    queries = {int(i) for q in res.query_index for i in q}
    assert {0, 5} <= queries and not queries & {1, 2, 3, 4, 6, 7, 8, 9, 10}
    grad_norm = table.grad.norm(dim=1)
    assert (grad_norm[sorted(queries)] > 0).all()
    key_only = [1, 2, 3, 4, 6, 7, 8, 9, 10]  # pixels of classes 0 and 1 that are never queries
    if key_grad:
        assert (grad_norm[key_only] > 0).all()
    else:
        assert (grad_norm[key_only] == 0).all()


# -- mixing ---------------------------------------------------------------------------------------
def test_cutmix_mask_is_one_box_of_half_the_image():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = cutmix_mask(32, 32, g)
        ys, xs = torch.nonzero(m == 0, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert len(ys) == h * w  # one filled rectangle
        assert 16 < w < 32 and h == round(512 / w)


def test_classmix_mask_keeps_whole_classes_half_of_them():
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3], [0, 1, 2, 3], [3, 3, 3, 3]])
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        m = classmix_mask(labels, g)
        kept = {c for c in range(4) if bool(m[labels == c].all())}
        assert all(bool((m[labels == c] == 0).all()) for c in set(range(4)) - kept)
        assert len(kept) == 2


@pytest.mark.parametrize("mix", ["cutmix", "classmix"])
def test_mixing_moves_image_and_pseudo_label_together(mix):
    method, _ = tiny_setup("action", {"variant": "released", "mix": mix}, size=16)
    B, C, S = 3, 4, 16
    label = torch.zeros(B, S, S, dtype=torch.long)
    for i in range(B):  # left half one class, right half another
        label[i, :, :S // 2], label[i, :, S // 2:] = i % C, (i + 1) % C
    x = (10 * torch.arange(B).view(B, 1, 1) + label).float().unsqueeze(1)  # value = 10 * image + class
    probs = F.one_hot(label, C).movedim(-1, 1).float() * 0.9 + 0.025
    mx, mp = method.mixed(x, probs)
    value = mx[:, 0].long()
    assert torch.equal(value % 10, mp.argmax(1))  # every pixel keeps its own pseudo-label
    assert torch.allclose(mp.max(1).values, torch.full((B, S, S), 0.925))  # ... and confidence
    source = value // 10
    for i in range(B):
        assert set(source[i].unique().tolist()) <= {i, (i + 1) % B}
        own = source[i] == i
        if mix == "cutmix":
            assert 0 < int((~own).sum()) < S * S  # a box from the partner, the rest own
        else:  # one of the image's two classes stays, whole
            assert set(label[i][own].unique().tolist()) in ({i % C}, {(i + 1) % C})
            assert int(own.sum()) == S * S // 2


# -- the method: variants, gate, teacher ----------------------------------------------------------
def test_variants_resolve_and_explicit_values_win():
    paper, _ = tiny_setup("action")
    released, _ = tiny_setup("action", {"variant": "released"})
    for key, value in VARIANTS["released"].items():
        assert getattr(released.cfg, key) == value, key
        assert getattr(paper.cfg, key) == VARIANTS["paper"][key], key
    assert [s.fraction for s in released.stages()] == pytest.approx([1 / 3] * 3)
    assert [s.fraction for s in paper.stages()] == pytest.approx([0.25, 0.25, 0.5])
    mixed, _ = tiny_setup("action", {"variant": "released", "w_anco": "0.5", "anco_key_grad": "true"})
    assert mixed.cfg.w_anco == 0.5 and mixed.cfg.anco_key_grad is True and mixed.cfg.mix == "cutmix"
    with pytest.raises(ConfigError, match="unknown variant 'authors'.*released.*--set method.variant"):
        tiny_setup("action", {"variant": "authors"})
    with pytest.raises(ConfigError, match="mix='mixup'; use one of none, cutmix, classmix"):
        tiny_setup("action", {"mix": "mixup"})


@pytest.mark.parametrize("overrides", [{"variant": "released"},
                                       {"variant": "released", "ablation": "no-pseudo-ce", "mix": "classmix"},
                                       {"variant": "released", "teacher_eval": "true", "ablation": "no-stage2"}])
def test_released_variant_honours_the_method_contract(overrides):
    for rep in run_contract("action", overrides):
        assert math.isfinite(rep["loss"]) and not rep["missing"], (rep["stage"], rep["missing"][:3])
        assert not rep["teacher_grads"] and all(rep["ema_ok"].values())
        if rep["stage"] != "i":
            assert rep["unsup_grad"] > 0, rep["stage"]


def test_released_stage_ii_adds_the_global_kl():
    method, batch = tiny_setup("action", {"variant": "released"})
    method.set_stage("ii")
    trainable = {id(p) for p in method.trainable_parameters()}
    assert {id(p) for p in method.net.global_head.parameters()} <= trainable
    assert {id(p) for p in method.predictors["global"].parameters()} <= trainable
    out = check_stage(method, batch)["out"]
    terms = out.terms["sup"] + out.terms["local_kl"] + out.terms["global_kl"]
    assert float(out.loss.detach()) == pytest.approx(float(terms.detach()), rel=1e-5)
    assert len(method.global_bank) == 2  # the global bank fills in stage ii too
    paper, batch = tiny_setup("action")
    paper.set_stage("ii")
    assert "global_kl" not in check_stage(paper, batch)["out"].terms and len(paper.global_bank) == 0


def _fixed_teacher_probs(n, size, num_classes=4):
    """Class 1 everywhere, with confidence 0.99 / 0.8 / 0.6 in three vertical bands."""
    conf = torch.full((n, size, size), 0.6)
    conf[..., :10], conf[..., 10:20] = 0.99, 0.8
    probs = ((1 - conf) / (num_classes - 1)).unsqueeze(1).repeat(1, num_classes, 1, 1)
    probs[:, 1] = conf
    return probs


@pytest.mark.parametrize("overrides,gate", [({}, 0.97), ({"variant": "released"}, 0.7),
                                            ({"variant": "released", "anco_valid_threshold": "0.5"}, 0.5)])
def test_valid_pixel_gate_for_unlabeled_pixels(overrides, gate, monkeypatch):
    method, batch = tiny_setup("action", {**overrides, "mix": "none"})
    probs = _fixed_teacher_probs(2, 32)
    monkeypatch.setattr(method, "teacher_probs", lambda x_t: probs)
    seen = {}
    original = action_module.sampled_anco

    def spy(embed_at, labels, valid, *args, **kwargs):
        seen["valid"], seen["labels"] = valid, labels
        return original(embed_at, labels, valid, *args, **kwargs)

    monkeypatch.setattr(action_module, "sampled_anco", spy)
    method.set_stage("iii")
    method.training_step(batch, 0)
    labeled, unlabeled = seen["valid"][:2], seen["valid"][2:]
    assert labeled.all()  # ground-truth pixels always take part
    assert torch.equal(unlabeled, probs.max(1).values > gate)
    assert (seen["labels"][2:] == 1).all()
    expected_cols = {0.97: 10, 0.7: 20, 0.5: 32}[gate]
    assert int(unlabeled[0, 0].sum()) == expected_cols


def test_pseudo_ce_form_follows_the_variant(monkeypatch):
    for variant, form in (("paper", "masked"), ("released", "reco")):
        calls = []
        original = action_module.PSEUDO_CE[form]
        monkeypatch.setitem(action_module.PSEUDO_CE, form,
                            lambda *a, _o=original: calls.append(_o(*a)) or calls[-1])
        method, batch = tiny_setup("action", {"variant": variant})
        method.set_stage("iii")
        out = method.training_step(batch, 0)
        assert len(calls) == 1
        assert float(out.terms["pseudo_ce"].detach()) == pytest.approx(float(calls[0][0].detach()))


def test_teacher_eval_switch():
    method, batch = tiny_setup("action", {"teacher_eval": "true"})
    method.train(True)
    x = batch.x_ulb
    first, second = method.teacher_probs(x), method.teacher_probs(x)
    assert torch.equal(first, second) and method.teacher.training  # eval for the forward only
    method.teacher.eval()
    with torch.no_grad():
        assert torch.allclose(first, method.teacher.backbone(x).softmax(1))
    default, _ = tiny_setup("action")
    default.train(True)
    torch.manual_seed(5)
    a = default.teacher_probs(x)
    torch.manual_seed(5)
    with torch.no_grad():
        b = default.teacher.backbone(x).softmax(1)  # train mode: dropout active
    assert torch.equal(a, b) and not torch.equal(a, default.teacher_probs(x))


def _nudge_student(method):
    with torch.no_grad():
        for p in method.net.parameters():
            p.add_(0.01)


def _teacher_equals_student(method):
    return all(torch.equal(a, b) for a, b in zip(method.teacher.state_dict().values(),
                                                 method.net.state_dict().values()))


def test_on_stage_start_recopies_the_teacher_only_in_the_released_stage_iii():
    for variant, stage, copies in (("released", "iii", True), ("released", "ii", False), ("paper", "iii", False)):
        method, _ = tiny_setup("action", {"variant": variant})
        _nudge_student(method)
        assert not _teacher_equals_student(method)
        method.on_stage_start(stage)
        assert _teacher_equals_student(method) == copies, (variant, stage)


# -- teacher re-copy in the real loop: fresh, resumed at the boundary, resumed mid-stage ------------
FAST = {"iterations": "9", "labeled_bs": "2", "unlabeled_bs": "2", "val_every": "3", "checkpoint_every": "1",
        "log_every": "1", "eval_batch_size": "4", "image_size": "32", "method.variant": "released"}


def _prepare(tmp_path):
    spec = RunSpec(method="action", dataset="tiny-test", labeled=2, seed=0, split_seed=0, overrides=FAST)
    return engine.prepare(spec, tmp_path / "data", tmp_path / "results")


ORIGINAL_HOOK, ORIGINAL_STEP = Action.on_stage_start, Action.training_step


def _record_hook(monkeypatch, log, crash=None):
    """Record each on_stage_start (stage, teacher == student before, after); optionally crash."""

    def hook(self, name):
        before = _teacher_equals_student(self)
        ORIGINAL_HOOK(self, name)
        log.append((name, before, _teacher_equals_student(self)))

    def step(self, batch, i):
        if crash is not None and (self.stage, i) == crash:
            raise KeyboardInterrupt("killed")
        return ORIGINAL_STEP(self, batch, i)

    monkeypatch.setattr(Action, "on_stage_start", hook)
    monkeypatch.setattr(Action, "training_step", step)


@pytest.mark.slow
def test_teacher_recopy_in_the_loop_fresh_and_resumed(tmp_path, monkeypatch):
    # fresh run: one call per stage, and stage iii starts with teacher == student
    log = []
    _record_hook(monkeypatch, log)
    assert engine.fit(_prepare(tmp_path / "fresh"), progress=False).status == "finished"
    assert [name for name, _, _ in log] == ["i", "ii", "iii"]
    assert log[2][1] is False and log[2][2] is True

    # killed at the first step of stage iii: the checkpoint is the stage boundary (stage iii, step 0)
    log = []
    _record_hook(monkeypatch, log, crash=("iii", 0))
    with pytest.raises(KeyboardInterrupt):
        engine.fit(_prepare(tmp_path / "boundary"), progress=False)
    state = torch.load(next((tmp_path / "boundary").rglob("latest.pt")), weights_only=False)["state"]
    assert (state["stage"], state["step"]) == (2, 0)
    log = []
    _record_hook(monkeypatch, log)
    assert engine.fit(_prepare(tmp_path / "boundary"), progress=False).status == "finished"
    # the hook ran after the checkpoint was loaded: the loaded teacher differed, then was re-copied
    assert log == [("iii", False, True)]

    # killed in the middle of stage iii: a resumed run must not re-copy
    log = []
    _record_hook(monkeypatch, log, crash=("iii", 2))
    with pytest.raises(KeyboardInterrupt):
        engine.fit(_prepare(tmp_path / "mid"), progress=False)
    log = []
    _record_hook(monkeypatch, log)
    assert engine.fit(_prepare(tmp_path / "mid"), progress=False).status == "finished"
    assert log == []


# -- signal size: AnCo against the supervised loss at the start of stage iii ---------------------
def _anco_to_sup_gradient_ratio(variant: str, seed: int) -> float:
    method, batch = tiny_setup("action", {"variant": variant, "w_unsup_ce": "0"}, seed=seed)
    method.set_stage("iii")
    method.on_stage_start("iii")
    method.train(True)
    out = method.training_step(batch, 0)  # out.unsup = w_anco * AnCo (pseudo-CE weighted 0)
    params = list(method.net.backbone.parameters())
    g_sup = torch.autograd.grad(out.loss - out.unsup, params, retain_graph=True, allow_unused=True)
    g_anco = torch.autograd.grad(out.unsup, params, allow_unused=True)
    norm = lambda gs: math.sqrt(sum(float((g ** 2).sum()) for g in gs if g is not None))  # noqa: E731
    return norm(g_anco) / norm(g_sup)


@pytest.mark.parametrize("variant,measured", [("paper", 2.18), ("released", 0.0128)])
def test_anco_to_supervised_gradient_ratio_at_stage_iii_start(variant, measured):
    """||grad w_anco AnCo|| / ||grad 0.5 (CE + Dice)|| over the U-Net's parameters at the start of
    stage iii (freshly initialised U-Net and H_r, the tiny 32 px batch of 2 + 2 slices), mean over
    seeds 0-2. Measured when written (torch 2.x, CPU): paper 2.29 / 2.28 / 1.96 (mean 2.18),
    released 0.0129 / 0.0135 / 0.0119 (mean 0.0128): about 170x apart (weight 0.01 vs 1, keys
    without vs with gradient). The band (+-30 %) catches a weight change and a flip of the
    key-gradient policy (paper with keys detached measured 1.12, released with key gradients 0.022)."""
    ratio = sum(_anco_to_sup_gradient_ratio(variant, s) for s in range(3)) / 3
    assert 0.7 * measured <= ratio <= 1.3 * measured, ratio


# -- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_released_variant_runs_end_to_end_on_acdc_phantom(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ssl_bench.cli", "run", "--method", "action", "--dataset", "acdc-phantom",
           "--labeled", "3", "--set", "method.variant=released", "--iterations", "30", "--set", "val_every=10",
           "--set", "threads=1", "--no-progress"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run_dir = next(p.parent for p in (tmp_path / "results").rglob("metrics.json"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["stages"] == {"i": 10, "ii": 10, "iii": 10}
    assert json.loads((run_dir / "config.json").read_text())["method_config"]["variant"] == "released"
    logged = [json.loads(line)["metrics"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    stage_ii = [m for m in logged if "train/ii/global_kl" in m]
    stage_iii = [m for m in logged if "train/iii/anco" in m]
    assert stage_ii and stage_iii and all(math.isfinite(m["train/iii/loss"]) for m in stage_iii)


def test_reco_weighted_ce_masks_instead_of_selecting():
    """Review D3: the mean over positive-CE pixels is a masked sum (no host sync); it is the old
    boolean selection's mean up to the order of the float additions, and 0 with zero gradient
    when no pixel has a positive CE (the old early return)."""
    def old(student, teacher, theta):  # the selection form, before the change
        conf, pseudo = teacher.max(dim=1)
        weight = (conf >= theta).flatten(1).float().mean(1)
        ce = F.cross_entropy(student.float(), pseudo, reduction="none")
        return (ce * weight[:, None, None])[ce > 0].mean()

    g = torch.Generator().manual_seed(0)
    for theta in (0.3, 0.6, 0.99):
        student = torch.randn(3, 4, 16, 16, generator=g, requires_grad=True)
        teacher = torch.rand(3, 4, 16, 16, generator=g).softmax(1)
        new = reco_weighted_ce(student, teacher, theta)[0]
        assert torch.allclose(new, old(student, teacher, theta), rtol=1e-6, atol=0)
        g_new, = torch.autograd.grad(new, student)
        g_old, = torch.autograd.grad(old(student, teacher, theta), student)
        assert torch.allclose(g_new, g_old, rtol=1e-5, atol=1e-9)
    exact = (F.one_hot(teacher.argmax(1), 4).permute(0, 3, 1, 2) * 1e4).requires_grad_(True)
    zero = reco_weighted_ce(exact, teacher, 0.5)[0]
    assert float(zero.detach()) == 0.0 and not torch.autograd.grad(zero, exact)[0].any()


@pytest.mark.parametrize("kind", ["cutmix", "classmix"])
def test_batched_mix_masks_are_the_per_image_masks_with_one_sync_at_most(kind):
    """Review D3: ClassMix reads the classes present once per batch (not once per image) and
    builds the masks on the device, CutMix's host-drawn masks reach the device from pinned memory;
    the masks and the generator's state equal the per-image construction's."""
    from host_reads import HostReads

    from ssl_bench.methods.action_mix import mix_masks

    pseudo = torch.randint(4, (5, 12, 12), generator=torch.Generator().manual_seed(3))
    pseudo[1] = 2  # an image with one class: nothing kept
    g_old, g_new = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    if kind == "cutmix":
        old = torch.stack([cutmix_mask(12, 12, g_old) for _ in pseudo])
    else:
        old = torch.stack([classmix_mask(p, g_old) for p in pseudo])
    with HostReads() as probe:
        new = mix_masks(kind, pseudo, g_new, n_classes=4)
    assert torch.equal(new, old) and torch.equal(g_new.get_state(), g_old.get_state())
    assert probe.reads == ([] if kind == "cutmix" else ["cpu"])
