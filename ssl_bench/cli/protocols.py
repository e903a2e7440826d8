"""``ssl-bench protocols [NAME]``: the named training recipes and what each sets per method."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ssl_bench.cli.common import console, fail, user_errors


def protocols(
    name: Optional[str] = typer.Argument(None, help="a protocol: print what it sets for every method"),
    method: list[str] = typer.Option([], "--method", "-m", help="only these methods (repeatable)"),
) -> None:
    """List the protocols, or print per method what one of them sets."""
    from ssl_bench.protocols import PROTOCOLS, get_protocol, list_protocols
    from ssl_bench.registry import get_method_class, list_methods

    if name is None:
        t = Table(title="protocols (`--protocol NAME` on run, sweep and reproduce)")
        for c in ("name", "version", "what it is", "budget rule", "published rows"):
            t.add_column(c, overflow="fold")
        for p in list_protocols():
            # the bare name selects the newest version; older ones are name-vN
            t.add_row(p.name if p is PROTOCOLS[p.name] else p.tag, str(p.version), p.summary, p.budget_rule, "beside it" if p.published else "-")
        console.print(t)
        return
    try:
        proto = get_protocol(name)
        names = method or list_methods()
        for m in names:
            get_method_class(m)
    except user_errors() as exc:
        fail(str(exc))
    t = Table(title=f"protocol {proto.tag}: {proto.summary}",
              caption=f"Training defaults: {_fmt(proto.train)}. Budget: {proto.budget_rule}. "
                      "Resolution: defaults < protocol train < dataset preset < method recipe < your --set.",
              caption_justify="left")
    for c in ("method", "sets (--set keys)", "budget", "checkpoint", "source"):
        t.add_column(c, overflow="fold")
    for m in names:
        r = proto.recipe(m)
        t.add_row(m, _fmt(r.overrides) or "(paper defaults)", f"x{r.budget_scale:g}", r.checkpoint, r.source)
    console.print(t)


def _fmt(d) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())
