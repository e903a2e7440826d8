"""Published variants of a baseline: a ``variant`` config field picks one, and config fields
left at ``None`` take that variant's published value (so ``--set variant=ssl4mis`` alone
reproduces the community code, and an explicit ``--set`` still wins)."""
from __future__ import annotations

import dataclasses


def check_variant(method: str, variant: str, choices) -> None:
    if variant not in choices:
        raise ValueError(f"{method}: unknown variant {variant!r}; choose one of {', '.join(choices)} "
                         f"(--set variant=...)")


def resolved(cfg, field: str, table: dict):
    """``cfg.<field>``, or the value ``table[cfg.variant][field]`` when the field is None."""
    value = getattr(cfg, field)
    return table[cfg.variant][field] if value is None else value


def resolve_all(cfg, table: dict):
    """A copy of ``cfg`` with every field of ``table[cfg.variant]`` that is None set to the
    variant's value (fields given explicitly keep theirs)."""
    return dataclasses.replace(cfg, **{k: resolved(cfg, k, table) for k in table[cfg.variant]})
