"""Losses and active sampling of ACTION (You et al., "Bootstrapping Semi-supervised Medical Image
Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023). Plain functions.

Contrastive distillation (Eq. 1-3). The teacher's and the student's similarities to a set of
anchors a_1..a_n become distributions

    p_t(j) = softmax_j(cos(z_t, a_j) / tau_t),   p_s(j) = softmax_j(cos(z*_s, a_j) / tau_s)

and the loss is KL(p_t || p_s). The "-log" printed in front of the fractions of Eq. 1 and 2 is a
typo: those are softmax probabilities (the KL of Eq. 3 is taken between distributions; ISD,
which the paper follows, defines them the same way).

Every function takes tensors of any spatial rank (2D slices or 3D patches): labels (B, *spatial),
probabilities and logits (B, C, *spatial); AnCo works on flat voxel indices.

AnCo (Eq. 4-7). For every class c present in the batch: queries r_q are pixel embeddings of
class c, the positive key r^{c,+} is the mean embedding of class c (Eq. 5), negative keys are
pixel embeddings of other classes, drawn class by class with probabilities
softmax_{v != c}(G[c, v]) over the class-relation graph G[p, q] = r^{p,+} . r^{q,+} (Eq. 6);
queries are the *hard* pixels, whose predicted confidence for c is <= theta_s (Eq. 7).
Eq. 4 sums over classes and queries; we average (per class over its queries, then over
classes) so the scale does not depend on the number of classes or queries.

Two forms of AnCo (``form``):
* ``"paper"``, Eq. 4-6 as printed: similarities are dot products (the queries and keys are
  unit-norm pixel embeddings, the positive key r^{c,+} is their plain mean, so |r^{c,+}| < 1),
  G = softmax over dot products of the means, and a class without hard pixels takes its
  queries from all its pixels.
* ``"reco"``, the released ACTION code and ReCo (Liu et al., ICLR 2022, whose loss AnCo is):
  cosine similarities (the mean key is renormalised), negative classes drawn by
  softmax(cos(r^{c,+}, r^{v,+}) / tau_an), a class without hard pixels contributes no queries
  (it still serves as a negative class), and the class sum is divided by the number of
  classes present in the batch, skipped ones included.
Independently, ``key_grad`` says whether the keys (the mean and the negatives) carry gradients:
the paper is silent, the released code and ReCo build them without gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ssl_bench.sampling import to_device  # CPU draws reach a GPU without a host sync


def fp32(like: torch.Tensor):
    """Autocast off on ``like``'s device: similarities and their temperatures are computed in
    float32 even inside a bf16 step (``.float()`` alone does not escape autocast's matmul)."""
    return torch.autocast(like.device.type, enabled=False)


# -- contrastive distillation (stages i and ii) ---------------------------------------------------
def distillation_kl(z_teacher: torch.Tensor, z_student: torch.Tensor, anchors: torch.Tensor,
                    tau_t: float, tau_s: float) -> torch.Tensor:
    """KL(p_t || p_s) averaged over queries. z_* (N, D) queries, anchors (M, D) shared by all queries.

    The teacher side and the anchors are constants (no gradient)."""
    with fp32(z_student):  # bf16's 2^-8 steps near 1, divided by tau_t = 0.01, would be 0.4 in a logit
        a = F.normalize(anchors.detach().float(), dim=-1)
        log_pt = F.log_softmax(F.normalize(z_teacher.detach().float(), dim=-1) @ a.T / tau_t, dim=-1)
        log_ps = F.log_softmax(F.normalize(z_student.float(), dim=-1) @ a.T / tau_s, dim=-1)
        return (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1).mean()


def byol_loss(z_student: torch.Tensor, z_teacher: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(z*_s, z_t), averaged: the two-views-only objective."""
    cos = F.cosine_similarity(z_student.float(), z_teacher.detach().float(), dim=-1)
    return (2 - 2 * cos).mean()


# -- stage iii: pseudo-labels --------------------------------------------------------------------
def pseudo_label_ce(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                    theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy to the teacher's argmax on pixels whose teacher confidence is > theta.

    Normalised by the number of *all* pixels (FixMatch convention): equal to the fraction of
    confident pixels times their mean CE, so the term fades when few pixels are confident.
    Returns (loss, mask of confident pixels)."""
    conf, pseudo = teacher_probs.detach().max(dim=1)
    mask = conf > theta
    ce = F.cross_entropy(student_logits.float(), pseudo, reduction="none")
    return (ce * mask).sum() / mask.numel(), mask


def reco_weighted_ce(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                     theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy to the teacher's argmax on *every* pixel, each image weighted by its
    fraction of pixels with teacher confidence >= theta, averaged over the pixels whose
    (unweighted) CE is > 0: ReCo's ``compute_unsupervised_loss``, which ACTION's released stage
    iii calls. An image without confident pixels has weight 0 but its pixels still count in the
    mean. Returns (loss, mask of confident pixels)."""
    conf, pseudo = teacher_probs.detach().max(dim=1)
    mask = conf >= theta
    weight = mask.flatten(1).float().mean(1)  # (B,): every pixel is valid here (no ignore label)
    ce = F.cross_entropy(student_logits.float(), pseudo, reduction="none")
    positive = ce > 0  # masked, not selected: no host sync (a boolean index or bool(any) is one)
    # no positive pixel (a student that matches every pseudo-label exactly): 0, where ReCo's mean
    # over an empty selection would be NaN
    total = torch.where(positive, ce * weight.view(-1, *(1,) * (ce.dim() - 1)), 0.0).sum()  # any rank
    return total / positive.sum().clamp_min(1), mask


# -- stage iii: AnCo and its active sampling -----------------------------------------------------
ANCO_FORMS = ("paper", "reco")


def hard_query_mask(probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                    theta: float) -> torch.Tensor:
    """Eq. 7: valid pixels whose predicted probability of their own (pseudo-)label is <= theta."""
    conf = probs.detach().gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return valid & (conf <= theta)


def class_relation_graph(prototypes: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """Eq. 6: G[p, q] = r^{p,+} . r^{q,+} for the (n_classes, D) class-mean embeddings
    (``cosine``: of the renormalised means, as the released code and ReCo)."""
    if cosine:
        prototypes = F.normalize(prototypes, dim=1)
    return prototypes @ prototypes.T


def negative_class_distribution(graph: torch.Tensor, c: int, temperature: float = 1.0) -> torch.Tensor:
    """exp(G[c, v] / T) / sum_{n != c} exp(G[c, n] / T) for v != c, and 0 for v = c
    (T = 1 in the paper's Eq. 6; the released code and ReCo use T = tau_an)."""
    logits = graph[c].detach().float().clone() / temperature
    logits[c] = float("-inf")
    return torch.softmax(logits, dim=0)


def sample_negative_classes(graph: torch.Tensor, c: int, n: int, generator: torch.Generator | None = None,
                            temperature: float = 1.0) -> torch.Tensor:
    """``n`` class indices (rows of ``graph``), drawn i.i.d. from ``negative_class_distribution``."""
    probs = negative_class_distribution(graph, c, temperature).cpu()
    return torch.multinomial(probs, n, replacement=True, generator=generator)


def draw_negative_classes(graph: torch.Tensor, rows: list[int], uniforms: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """``sample_negative_classes`` for the classes ``rows`` at once, on ``graph``'s device: row r
    of ``uniforms`` (len(rows), n) holds float64 draws of ``torch.rand`` from the generator that
    ``torch.multinomial`` would have used, which (on the CPU, with replacement) draws one such
    double per sample and takes the first class whose normalised float32 cumulative probability
    reaches it. The same classes as ``sample_negative_classes`` on a CPU
    (``tests/test_action.py``); on a GPU the softmax may round differently in its last bit."""
    idx = to_device(torch.tensor(rows), graph.device)
    logits = graph[idx].detach().float() / temperature
    logits[torch.arange(len(rows), device=graph.device), idx] = float("-inf")
    cum = torch.softmax(logits, dim=1).cumsum(1)
    cum = (cum / cum[:, -1:]).double()
    return torch.searchsorted(cum, to_device(uniforms, cum.device).double()).clamp_max(graph.shape[1] - 1)


def anco_loss(queries: list[torch.Tensor], positives: torch.Tensor, negatives: list[torch.Tensor],
              tau: float, cosine: bool = False, n_classes: int | None = None) -> torch.Tensor:
    """Eq. 4 for sampled queries/keys: -log e^{q.k+/tau} / (e^{q.k+/tau} + sum_k- e^{q.k-/tau}).

    ``queries[i]`` (Q_i, D) and ``negatives[i]`` (K_i, D) belong to class i, ``positives[i]``
    (D,) is its class-mean key. Mean over each class's queries, then summed over classes and
    divided by ``n_classes`` (default: the number of classes given, i.e. their mean).
    ``cosine``: cosine similarities instead of dot products (every vector renormalised)."""
    unit = (lambda v: F.normalize(v, dim=-1)) if cosine else (lambda v: v)  # noqa: E731
    per_class = []
    with fp32(positives):
        for q, pos, neg in zip(queries, positives, negatives):
            q = unit(q.float())
            pos, neg = unit(pos.float()), unit(neg.float())
            logits = torch.cat([(q @ pos).unsqueeze(1), q @ neg.T], dim=1) / tau
            per_class.append(-torch.log_softmax(logits, dim=1)[:, 0].mean())
    return torch.stack(per_class).sum() / (n_classes or len(per_class))


@dataclass
class AncoSample:
    """The loss and what was sampled (flat pixel indices into (B, *spatial)), for logging and tests."""

    loss: torch.Tensor
    classes: list[int] = field(default_factory=list)
    query_index: list[torch.Tensor] = field(default_factory=list)
    negative_index: list[torch.Tensor] = field(default_factory=list)
    prototypes: torch.Tensor | None = None
    n_hard: int = 0


def _draw(values: torch.Tensor, n: int, generator, size: int | None = None) -> torch.Tensor:
    """``n`` uniform draws with replacement from a 1-D tensor (``size``: its length, if known)."""
    size = len(values) if size is None else size
    pick = to_device(torch.randint(size, (n,), generator=generator), values.device)
    return values[pick]


def _subset(values: torch.Tensor, n: int, generator, size: int | None = None) -> torch.Tensor:
    """At most ``n`` elements without replacement (all of them when ``n <= 0`` or too few);
    ``size``: ``len(values)`` when the caller knows it (no host sync)."""
    size = len(values) if size is None else size
    if n <= 0 or size <= n:
        return values
    return values[to_device(permutation_head(size, n, generator), values.device)]


def permutation_head(size: int, n: int, generator) -> torch.Tensor:
    """``torch.randperm(size, generator=generator)[:n]``, leaving ``generator`` where randperm
    leaves it, without permuting ``size`` elements when ``size`` is large: torch's CPU randperm
    is a forward Fisher-Yates shuffle (position i swaps with i + random() % (size - i); one draw
    for each of the first size - 1 positions), so its first n positions are final after n draws
    (``randint(size - i)`` is the same ``random() % (size - i)``); the other draws are consumed
    unused. About 4x faster at a million pixels (the background class of a 12-image batch at
    256 px), the same numbers (``tests/test_action.py``)."""
    if size <= 64 * n:
        return torch.randperm(size, generator=generator)[:n]
    steps = min(n, size - 1)
    swapped: dict[int, int] = {}
    head = []
    for i in range(steps):
        j = i + int(torch.randint(size - i, (1,), generator=generator))
        vi, vj = swapped.get(i, i), swapped.get(j, j)
        swapped[i], swapped[j] = vj, vi
        head.append(vj)
    rest = size - 1 - steps
    for start in range(0, rest, 1 << 22):  # consume the remaining draws in bounded chunks
        torch.randint(2, (min(1 << 22, rest - start),), generator=generator)
    return torch.tensor(head, dtype=torch.long)


def class_members(keys: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """The flat indices of each class, ascending (``nonzero(keys == c)`` for every c at once):
    ``keys`` (N,) holds a pixel's class, or ``len(counts)`` for a pixel that takes no part, and
    ``counts`` the host's copy of the class sizes. One stable sort on the device, no sync."""
    order = torch.argsort(keys, stable=True)
    return list(order[:sum(counts)].split(counts))


def sampled_anco(embed_at: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor,
                 valid: torch.Tensor, probs: torch.Tensor, theta: float, tau: float,
                 num_queries: int = 256, num_negatives: int = 512, prototype_pixels: int = 512,
                 generator: torch.Generator | None = None, form: str = "paper",
                 key_grad: bool = True) -> AncoSample:
    """AnCo with active sampling. Only pixel *indices* are chosen without gradient; embeddings
    (``embed_at(flat_index) -> (N, D)``) are computed for the chosen pixels only, so memory is
    O(classes x (queries + key pool)), never O((H W)^2) nor O(H W D).

    labels (B, *spatial) labels / pseudo-labels; valid (B, *spatial) pixels (voxels) that take
    part; probs (B, C, *spatial) predicted probabilities (Eq. 7's confidence).

    Per class c: ``num_queries`` hard queries, drawn with replacement (a class without hard
    pixels: all its pixels in the ``"paper"`` form, no queries in the ``"reco"`` form, see the
    module doc); a pool of ``prototype_pixels`` pixels of c drawn without replacement (all of
    them if fewer, or if ``prototype_pixels <= 0``): its mean is the positive key r^{c,+}
    (a Monte-Carlo estimate of Eq. 5's mean, exact when the pool holds the whole class) and
    negatives for the other classes are uniform draws from it; ``num_negatives`` negative keys,
    each from a class drawn by softmax(G[c, .]), shared by the queries of c (each query's loss
    has the same expectation as with per-query negative sets, at 1/num_queries of the memory).
    ``key_grad=False`` embeds the key pool without gradient, so only the queries are trained.

    On a GPU the sampling reads the device once (the class sizes and hard counts in one
    transfer), instead of once or more per class and test: members are found by one stable
    sort, prototype pixels by ``permutation_head``, negative classes on the device from the
    uniforms ``torch.multinomial`` would have drawn (``draw_negative_classes``); every random
    number comes from ``generator`` as before, so on a CPU the numbers are those of the
    per-class version (``tests/test_action.py``).
    """
    if form not in ANCO_FORMS:
        raise ValueError(f"AnCo form {form!r}; choose one of {', '.join(ANCO_FORMS)}")
    reco = form == "reco"
    device = labels.device
    n_cls = probs.shape[1]
    lab, val = labels.reshape(-1).long(), valid.reshape(-1)
    with torch.no_grad():
        hard = hard_query_mask(probs, labels, valid, theta).reshape(-1)
        # the one read-back of the sampling, every class's size and hard count, cannot go: the
        # classes present, the pool and query shapes and how many draws the CPU generator spends
        # on each class (permutation_head draws once per member) all depend on these counts
        none = torch.full_like(lab, n_cls)
        member_key, hard_key = torch.where(val, lab, none), torch.where(hard, lab, none)
        ones = torch.ones_like(lab)
        counts = torch.zeros(2, n_cls + 1, dtype=torch.long, device=device)  # (CUDA's bincount syncs)
        counts[0].scatter_add_(0, member_key, ones)
        counts[1].scatter_add_(0, hard_key, ones)
        counts = counts[:, :n_cls].tolist()
        classes = [c for c in range(n_cls) if counts[0][c] > 0]
        n_hard = sum(counts[1])
        if len(classes) < 2:  # no negative class: nothing to contrast
            return AncoSample(loss=torch.zeros((), device=device), classes=classes)
        all_members = class_members(member_key, counts[0])
        all_hard = class_members(hard_key, counts[1])
        pools, queries, query_sizes = [], [], []
        for c in classes:
            members, hard_c = all_members[c], all_hard[c]
            pools.append(_subset(members, prototype_pixels, generator, counts[0][c]))
            source, size = (hard_c, counts[1][c]) if counts[1][c] or reco else (members, counts[0][c])
            queries.append(_draw(source, num_queries, generator, size) if size else source)
            query_sizes.append(num_queries if size else 0)
        sizes = [counts[0][c] if prototype_pixels <= 0 else min(counts[0][c], prototype_pixels) for c in classes]
        pool_flat, query_flat = torch.cat(pools), torch.cat(queries)

    if key_grad:  # one pass: keys and queries both carry gradients
        emb = embed_at(torch.cat([pool_flat, query_flat]))
        pool_emb, query_emb = emb[:len(pool_flat)], emb[len(pool_flat):]
    else:  # keys as constants (released code, ReCo)
        with torch.no_grad():
            pool_emb = embed_at(pool_flat)
        query_emb = embed_at(query_flat) if len(query_flat) else pool_emb[:0]
    prototypes = torch.stack([e.mean(0) for e in pool_emb.split(sizes)])

    active = [i for i, n in enumerate(query_sizes) if n]
    with torch.no_grad():
        # the class draws stay on the device: the CPU generator gives, class by class, the float64
        # uniforms torch.multinomial would have drawn, then the uniforms that place a negative
        # within its class's pool; the class graph is never read back
        draws = [(torch.rand(num_negatives, dtype=torch.float64, generator=generator),
                  torch.rand(num_negatives, generator=generator)) for _ in active]
        neg_rows = [torch.zeros(0, dtype=torch.long, device=device) for _ in classes]
        if active:
            with fp32(prototypes):
                graph = class_relation_graph(prototypes.detach().float(), cosine=reco)
            u_class, u_within = (to_device(torch.stack(d), device) for d in zip(*draws))
            k = draw_negative_classes(graph, active, u_class, temperature=tau if reco else 1.0)
            size_t = to_device(torch.tensor(sizes), device)
            offsets = size_t.cumsum(0) - size_t
            within = (u_within * size_t[k]).long().minimum(size_t[k] - 1)
            for i, rows in zip(active, offsets[k] + within):
                neg_rows[i] = rows

    sample = AncoSample(loss=torch.zeros((), device=device), classes=classes, query_index=queries,
                        negative_index=[pool_flat[r] for r in neg_rows], prototypes=prototypes,
                        n_hard=n_hard)
    if active:  # the "reco" form has no query when every pixel is easy
        q_emb = query_emb.split(query_sizes)
        sample.loss = anco_loss([q_emb[i] for i in active], prototypes[active],
                                [pool_emb[neg_rows[i]] for i in active], tau, cosine=reco,
                                n_classes=len(classes))
    return sample
