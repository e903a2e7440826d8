"""Renderers: rich (terminal), md, latex (booktabs) and csv (tidy records)."""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

from .model import Seg, Table


def render(tables: Sequence[Table], fmt: str, width: int = 200) -> str:
    if fmt == "md":
        return "\n\n".join(render_md(t) for t in tables) + "\n"
    if fmt == "latex":
        return "\n\n".join(render_latex(t) for t in tables) + "\n"
    if fmt == "csv":
        return render_csv(tables)
    if fmt == "rich":
        return render_text(tables, width)
    raise ValueError(f"unknown format {fmt!r}; use rich, md, csv or latex")


def _headers(t: Table) -> list[str]:
    if not t.groups:
        return list(t.columns)
    out, i = [], 0
    for g, span in t.groups:
        out += [f"{g}: {c}" for c in t.columns[i:i + span]]
        i += span
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(cell: list[Seg]) -> str:
    return "".join(f"**{_md_escape(t)}**" if b else _md_escape(t) for t, b in cell)


def render_md(t: Table) -> str:
    head = [t.row_header, *_headers(t)]
    lines = [f"**{_md_escape(t.title)}**", "", "| " + " | ".join(map(_md_escape, head)) + " |",
             "|" + "---|" * len(head)]
    for block in t.blocks:
        if block.label:
            lines.append(f"| *{_md_escape(block.label)}* |" + " |" * (len(head) - 1))
        for label, cells in block.rows:
            lines.append("| " + " | ".join([_md_escape(label), *map(_md_cell, cells)]) + " |")
    lines.append("")
    lines += [f"{_md_escape(n)}  " for n in t.notes + t.footnote]
    return "\n".join(lines).rstrip()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("—", "--")


def _tex_cell(cell: list[Seg]) -> str:
    return "".join(rf"\textbf{{{_tex(t)}}}" if b else _tex(t) for t, b in cell)


def render_latex(t: Table) -> str:
    ncol = 1 + len(t.columns)
    spec = "l" + "".join("c" * span for _, span in t.groups) if t.groups else "l" + "c" * len(t.columns)
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{_tex(t.title)}}}", r"\resizebox{\linewidth}{!}{%",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if t.groups:
        lines.append(" & " + " & ".join(rf"\multicolumn{{{span}}}{{c}}{{{_tex(g)}}}" for g, span in t.groups) + r" \\")
        rules, start = [], 2
        for _, span in t.groups:
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines.append("".join(rules))
    lines.append(" & ".join(_tex(h) for h in [t.row_header, *t.columns]) + r" \\")
    lines.append(r"\midrule")
    for block in t.blocks:
        if block.label:
            lines += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{_tex(block.label)}}}}} \\"]
        for label, cells in block.rows:
            lines.append(" & ".join([_tex(label), *map(_tex_cell, cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip", r"{\footnotesize"]
    lines += [_tex(n) + r"\\" for n in t.notes + t.footnote]
    lines += ["}", r"\end{table}"]
    return "\n".join(lines)


def render_csv(tables: Sequence[Table]) -> str:
    records = [r for t in tables for r in t.records]
    if not records:
        return ""
    fields = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


def rich_tables(t: Table) -> list:
    """Rich renderables for one table: one rich table per block (a labelled block gets its label
    as title, so published rows stand apart), notes and footnote as the last caption. A cell
    shows DSC on its first line and ASD and n on the second."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    heads = t.columns if not t.groups else [
        f"{g}\n{c}" for (g, span), start in zip(t.groups, _starts(t.groups)) for c in t.columns[start:start + span]]
    out = []
    for k, block in enumerate(t.blocks):
        last = k == len(t.blocks) - 1
        title = t.title if k == 0 else f"[italic]{escape(block.label or '')}[/italic]"
        caption = "\n".join(escape(x) for x in t.notes + t.footnote) if last else None
        rt = RichTable(title=escape(title) if k == 0 else title, caption=caption, caption_justify="left")
        rt.add_column(escape(t.row_header), overflow="fold")  # the one column that may wrap
        for h in heads:
            rt.add_column(escape(h), no_wrap=True)
        for label, cells in block.rows:
            rt.add_row(escape(label), *[_rich_cell(c) for c in cells])
        out.append(rt)
    if not t.blocks:
        out.append("\n".join(t.notes + t.footnote))
    return out


def _rich_cell(cell: list[Seg]) -> str:
    from rich.markup import escape

    text = "".join(f"[bold]{escape(x)}[/bold]" if b else escape(x) for x, b in cell)
    return text.replace(" / ", "\n", 1).replace("\n ", "\n")


def _starts(groups: list[tuple[str, int]]) -> list[int]:
    out, i = [], 0
    for _, span in groups:
        out.append(i)
        i += span
    return out


def render_text(tables: Sequence[Table], width: int = 200) -> str:
    """The rich layout as plain text (for ``--output`` with ``--format rich``)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    for t in tables:
        for part in rich_tables(t):
            console.print(part)
        console.print()
    return console.file.getvalue()


def render_html(t: Table) -> str:
    """One table as an HTML fragment (``<table class="results">``, bold as ``<strong>``, column
    groups as spanning header cells, notes and footnote below); text is escaped."""
    from html import escape

    def cell(segs: list[Seg]) -> str:
        return "".join(f"<strong>{escape(x)}</strong>" if b else escape(x) for x, b in segs)

    head = []
    if t.groups:
        head.append("<tr><th></th>" + "".join(f'<th colspan="{span}">{escape(g)}</th>' for g, span in t.groups)
                    + "</tr>")
    head.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in [t.row_header, *t.columns]) + "</tr>")
    body = []
    for block in t.blocks:
        if block.label:
            body.append(f'<tr class="block"><td colspan="{1 + len(t.columns)}"><em>{escape(block.label)}</em></td></tr>')
        for label, cells in block.rows:
            body.append(f"<tr><th>{escape(label)}</th>" + "".join(f"<td>{cell(c)}</td>" for c in cells) + "</tr>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in t.notes + t.footnote)
    return (f'<table class="results"><caption>{escape(t.title)}</caption><thead>{"".join(head)}</thead>'
            f'<tbody>{"".join(body)}</tbody></table><ul class="footnote">{notes}</ul>')
