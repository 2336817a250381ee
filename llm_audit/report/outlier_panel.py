"""The audit page's outlier-dimension panel: which hidden indices carry the model's extreme weights,
in which layers, how extreme; and which trap layers are scattered instead (see outlier_dims.py)."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from llm_audit.report import page
from llm_audit.report.view import fmt
from llm_audit.summary import is_counted
from llm_audit.vocabulary import OUTLIER_DIMENSION, SCATTERED

MAX_LAYERS = 6  # layer names listed per dimension; the rest are counted


def outlier_panel(summary: Mapping[str, Any], records: list[Mapping[str, Any]]) -> str:
    """The section, or "" when no layer has trap entries (traps off, or none found)."""
    kinds = [r.get("trap_kind") for r in records]
    if not any(kinds):
        return ""
    index = {str(r.get("name")): i for i, r in enumerate(records)}
    dims = [d for d in summary.get("outlier_dimensions") or [] if isinstance(d, Mapping)]
    rows = "".join(_row(d, index) for d in dims)
    table = (
        "<div class='scroll'>"
        "<table class='mini'><thead><tr><th>hidden index</th><th>entries</th><th>largest |z|</th>"
        f"<th>chance</th><th>layers</th></tr></thead><tbody>{rows}</tbody></table></div>"
        if dims
        else "<p>No hidden index holds more of the extreme entries than chance would.</p>"
    )
    hidden = summary.get("hidden_size")
    scattered = [r for r in records if r.get("trap_kind") == SCATTERED]
    on_dims = [r for r in records if r.get("trap_kind") == OUTLIER_DIMENSION]
    return page.section(
        "outliers",
        "Outlier dimensions",
        f"<p class='muted'>Where the trap layers' largest entries lie on the residual stream "
        f"(hidden size {escape(fmt(hidden)) if hidden else 'unknown'}): rows of the matrices that "
        "write to it, columns of those that read it and of the embeddings. <i>entries</i>: how "
        "many of those largest entries (ten per trap layer) lie on the index; <i>chance</i>: "
        "that entries at random positions would pile up that much on any index.</p>",
        table,
        f"<p>{_split(on_dims, summary)} have every trap entry on these dimensions (flag "
        f"{page.flag_badges([OUTLIER_DIMENSION])}); {_split(scattered, summary)} have scattered "
        "ones (flag <span class='flag f-correlation_trap'>correlation_trap</span>)"
        + (
            ": " + ", ".join(_link(str(r.get("name")), index) for r in scattered)
            if scattered
            else ""
        )
        + ".</p>",
    )


def _split(layers: list[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """ "5 counted trap layers (and 1 outside the summary)": the summary's counts, and the rest."""
    inside = sum(is_counted(r, summary) for r in layers)
    text = f"{inside} counted trap layer(s)"
    rest = len(layers) - inside
    return text + (f" (and {rest} outside the summary)" if rest else "")


def has_trap_kinds(audit: Mapping[str, Any]) -> bool:
    """Whether the audit's trap layers were placed, so the page has this panel."""
    return any(isinstance(r, Mapping) and r.get("trap_kind") for r in audit.get("layers") or [])


def _row(d: Mapping[str, Any], index: dict[str, int]) -> str:
    layers = [str(n) for n in d.get("layers") or []]
    names = ", ".join(_link(n, index) for n in layers[:MAX_LAYERS])
    more = f" and {len(layers) - MAX_LAYERS} more" if len(layers) > MAX_LAYERS else ""
    return (
        f"<tr><td>{escape(fmt(d.get('index')))}</td><td>{escape(fmt(d.get('entries')))}</td>"
        f"<td>{escape(fmt(d.get('max_abs_z')))}</td><td>{escape(_chance(d.get('chance')))}</td>"
        f"<td>{names}{more}</td></tr>"
    )


def _link(name: str, index: dict[str, int]) -> str:
    i = index.get(name)
    code = f"<code>{page.tensor_name(name)}</code>"
    return f'<a href="#L{i}" data-pick="{i}">{code}</a>' if i is not None else code


def _chance(value: Any) -> str:
    return f"{value:.1e}" if isinstance(value, (int, float)) else "—"
