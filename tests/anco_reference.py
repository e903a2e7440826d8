"""ACTION's AnCo sampling as it was before issue 18 (commit 926fe45, ``methods/action_losses.py``),
frozen here as the reference the lean version must reproduce number for number: a ``nonzero`` and
a ``bool(any)`` per class, a full CPU ``randperm`` per prototype pool, the class graph read back per
class. Tests only."""
from __future__ import annotations

from typing import Callable

import torch

from ssl_bench.methods.action_losses import (ANCO_FORMS, AncoSample, anco_loss, class_relation_graph,
                                             hard_query_mask, sample_negative_classes)
from ssl_bench.sampling import to_device


def _draw(values: torch.Tensor, n: int, generator) -> torch.Tensor:
    """``n`` uniform draws with replacement from a 1-D tensor."""
    pick = to_device(torch.randint(len(values), (n,), generator=generator), values.device)
    return values[pick]


def _subset(values: torch.Tensor, n: int, generator) -> torch.Tensor:
    """At most ``n`` elements without replacement (all of them when ``n <= 0`` or too few)."""
    if n <= 0 or len(values) <= n:
        return values
    return values[to_device(torch.randperm(len(values), generator=generator)[:n], values.device)]


def sampled_anco(embed_at: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor,
                 valid: torch.Tensor, probs: torch.Tensor, theta: float, tau: float,
                 num_queries: int = 256, num_negatives: int = 512, prototype_pixels: int = 512,
                 generator: torch.Generator | None = None, form: str = "paper",
                 key_grad: bool = True) -> AncoSample:
    """The per-class sampling as it was before issue 18 (a host sync per class and test)."""
    if form not in ANCO_FORMS:
        raise ValueError(f"AnCo form {form!r}; choose one of {', '.join(ANCO_FORMS)}")
    reco = form == "reco"
    device = labels.device
    lab, val = labels.reshape(-1), valid.reshape(-1)
    with torch.no_grad():
        hard = hard_query_mask(probs, labels, valid, theta).reshape(-1)
        classes = [c for c in range(probs.shape[1]) if bool((val & (lab == c)).any())]
        if len(classes) < 2:  # no negative class: nothing to contrast
            return AncoSample(loss=torch.zeros((), device=device), classes=classes)
        pools, queries = [], []
        for c in classes:
            members = torch.nonzero(val & (lab == c)).squeeze(1)
            hard_c = torch.nonzero(hard & (lab == c)).squeeze(1)
            pools.append(_subset(members, prototype_pixels, generator))
            source = hard_c if len(hard_c) or reco else members
            queries.append(_draw(source, num_queries, generator) if len(source) else source)
        sizes = [len(p) for p in pools]
        pool_flat, query_flat = torch.cat(pools), torch.cat(queries)

    if key_grad:  # one pass: keys and queries both carry gradients
        emb = embed_at(torch.cat([pool_flat, query_flat]))
        pool_emb, query_emb = emb[:len(pool_flat)], emb[len(pool_flat):]
    else:  # keys as constants (released code, ReCo)
        with torch.no_grad():
            pool_emb = embed_at(pool_flat)
        query_emb = embed_at(query_flat) if len(query_flat) else pool_emb[:0]
    prototypes = torch.stack([e.mean(0) for e in pool_emb.split(sizes)])

    active = [i for i, q in enumerate(queries) if len(q)]
    with torch.no_grad():
        graph = class_relation_graph(prototypes.detach(), cosine=reco)
        offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)
        size_t = torch.tensor(sizes)
        neg_rows = [torch.zeros(0, dtype=torch.long, device=device) for _ in classes]
        for i in active:
            k = sample_negative_classes(graph, i, num_negatives, generator, temperature=tau if reco else 1.0)
            within = (torch.rand(num_negatives, generator=generator) * size_t[k]).long()
            neg_rows[i] = to_device(offsets[k] + within.minimum(size_t[k] - 1), device)

    sample = AncoSample(loss=torch.zeros((), device=device), classes=classes, query_index=queries,
                        negative_index=[pool_flat[r] for r in neg_rows], prototypes=prototypes,
                        n_hard=int(hard.sum()))
    if active:  # the "reco" form has no query when every pixel is easy
        q_emb = query_emb.split([len(q) for q in queries])
        sample.loss = anco_loss([q_emb[i] for i in active], prototypes[active],
                                [pool_emb[neg_rows[i]] for i in active], tau, cosine=reco,
                                n_classes=len(classes))
    return sample
