"""The skeleton and parts every page is built from: one self-contained HTML document (inline CSS,
JS and SVG; the browser is told to fetch nothing), sections, definition lists, sortable tables.

Every string from a model or a result passes through `escape` before it reaches a page, and the
page's Content-Security-Policy runs no script but its own (by hash); data for a script is embedded
as JSON with `<`, `>` and `&` written as \\u escapes, so no value can close
the script element.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from importlib import resources
from typing import Any

import numpy as np

# Scripts: only the page's own, by their hashes (`csp`), so markup that slips into a page (an
# `onerror` attribute, a <script> element) still cannot run. Styles stay inline.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src {scripts}; img-src data:"


def csp(*scripts: str) -> str:
    """The page's Content-Security-Policy, allowing exactly the inline `scripts` (their text)."""
    hashes = [hashlib.sha256(code.encode()).digest() for code in scripts if code]
    allowed = " ".join(f"'sha256-{base64.b64encode(h).decode()}'" for h in hashes)
    return CSP.format(scripts=allowed or "'none'")


def document(
    title: str,
    body: Iterable[str],
    *,
    scripts: Sequence[str] = ("table.js",),
    data: Any = None,
) -> str:
    """A whole page: `body` inside <main>, styled by report.css, then `data` as JSON
    (id "page-data") when given, then the `scripts` (asset names) as one inline script."""
    code = "\n".join(asset(name) for name in scripts)
    return "".join(
        [
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
            f'<meta http-equiv="Content-Security-Policy" content="{csp(code)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="color-scheme" content="light dark">',
            f"<title>{escape(title)}</title><style>{asset('report.css')}</style></head>",
            "<body><main>",
            *body,
            "</main>",
            (
                f'<script type="application/json" id="page-data">{json_for_script(data)}</script>'
                if data is not None
                else ""
            ),
            f"<script>{code}</script>" if code else "",
            "</body></html>\n",
        ]
    )


def asset(name: str) -> str:
    """The text of `assets/<name>` (a stylesheet or script shipped with the package)."""
    return (resources.files("llm_audit.report") / "assets" / name).read_text(encoding="utf-8")


def json_for_script(data: Any) -> str:
    """`data` as JSON safe inside a <script> element; NaN and Inf become null."""
    text = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _finite(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def section(anchor: str, heading: str, *content: str) -> str:
    return f'<section id="{anchor}"><h2>{heading}</h2>{"".join(content)}</section>'


def setup(what: str, *content: str) -> str:
    """The run's setup (models, settings, versions), folded in a <details> below the verdict, so
    that the verdict is the first thing on every page, a phone's included."""
    return (
        f'<section id="setup"><details class="setup provenance"><summary>Setup: {what}</summary>'
        f"{''.join(content)}</details></section>"
    )


def counts(pairs: Iterable[tuple[str, str]]) -> str:
    """(label, value) pairs of a summary card, escaped: labels wrap, a number never does."""
    rows = "".join(
        f'<div><dt>{escape(k)}</dt><dd class="n">{escape(v)}</dd></div>' for k, v in pairs
    )
    return f'<dl class="counts">{rows}</dl>'


def tensor_name(name: str) -> str:
    """A tensor name, escaped, that may wrap after its dots (narrow screens, print)."""
    return escape(name).replace(".", ".<wbr>")


def dl(items: Iterable[tuple[str, str]], cls: str = "") -> str:
    """A definition list of (term, HTML) pairs; with a class, each pair is wrapped in a div (for a
    grid of pairs)."""
    if cls:
        pairs = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
        return f'<dl class="{cls}">{pairs}</dl>'
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def flag_badges(flags: Iterable[Any]) -> str:
    return " ".join(f'<span class="flag f-{escape(str(f))}">{escape(str(f))}</span>' for f in flags)


def sort_header(key: str, label: str, kind: str, tip: str = "", cls: str = "") -> str:
    """A header cell of a sortable table (assets/table.js): `kind` "num" sorts numbers as
    numbers, "text" as lower-case text."""
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' title="{escape(tip)}"' if tip else ""
    return f'<th{attrs} data-key="{escape(key)}" data-type="{kind}">{escape(label)}</th>'


def sort_cell(key: str, content: str, sort: str, cls: str = "") -> str:
    """A body cell of a sortable table: `content` (HTML) shown, `sort` its key ("" sorts last)."""
    return f'<td class="{cls}c-{escape(key)}" data-v="{escape(sort)}">{content}</td>'


def filter_controls(table: str, controls: Iterable[str], noun: str) -> str:
    """The filters of sortable table `table` (made with `select_filter` and `text_filter`) and the
    count of rows shown ("12 of 40 `noun`")."""
    return (
        f'<div class="controls">{"".join(controls)}'
        f'<span data-count-for="{table}" data-noun="{escape(noun)}" class="muted"></span></div>'
    )


def select_filter(
    table: str,
    ident: str,
    label: str,
    attr: str,
    options: Iterable[tuple[str, str]],
    *,
    tokens: bool = False,
) -> str:
    """A drop-down keeping the rows whose `data-<attr>` equals the chosen value (with `tokens`:
    holds it among its space-separated words); `options` are (value, text), "" keeps every row."""
    opts = "".join(f'<option value="{escape(v)}">{escape(t)}</option>' for v, t in options)
    mode = " data-tokens" if tokens else ""
    return (
        f'<label>{label} <select id="{ident}" data-filter-for="{table}" data-match="{attr}"'
        f"{mode}>{opts}</select></label>"
    )


def text_filter(table: str, ident: str) -> str:
    """A search box keeping the rows whose first cell (the name) contains the text typed."""
    return (
        f'<label>name <input id="{ident}" type="search" placeholder="filter by name" '
        f'data-filter-for="{table}" data-match="name"></label>'
    )
