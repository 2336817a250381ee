"""What `scan` and `compare` print on stdout: a table of the layers, then the verdict, the counts
the verdict uses and the findings beside it, in the words of `summary.count_lines`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from llm_audit.report.view import thresholds, verdict_rule
from llm_audit.summary import WORST_RULE, count_lines
from llm_audit.untrusted import quote


def _num(v: Any, spec: str = ".2f") -> str:
    finite = isinstance(v, (int, float)) and math.isfinite(v)
    return format(v, spec) if finite else "-"


def _pairs(pairs: list[tuple[str, str]]) -> str:
    return " · ".join(f"{label}: {value}" for label, value in pairs) or "none"


def format_summary(
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any] | None = None,
) -> str:
    """A compact table of the layers plus the summary lines; `settings` gives the thresholds
    the counts' labels name (the defaults without it)."""
    rows = [
        [
            quote(str(r["name"])),
            str(r["role"]),
            _num(r.get("alpha")),
            _num(r.get("D"), ".3f"),
            str(r.get("num_traps", "-")),
            ",".join(r.get("flags", [])) or str(r["status"]),
        ]
        for r in records
    ]
    document = {"settings": settings or {}}
    t, rule = thresholds(document), verdict_rule(document)
    counted, found = count_lines(summary, t, rule)
    excluded = ", ".join(summary.get("excluded_from_summary") or []) or "nothing"
    outside = summary.get("num_flagged_outside") or 0
    lines = [table(["layer", "role", "alpha", "D", "traps", "flags/status"], rows), ""]
    lines.append(f"verdict: {summary['verdict']} ({summary['verdict_reason']})")
    lines.append(f"counted by the verdict: {_pairs(counted)}")
    lines.append(f"findings (not counted): {_pairs(found)}")
    lines.append(
        f"layers: {summary['num_analyzed']} analyzed of {summary['num_layers']}, "
        f"{summary['num_counted']} counted (excluding {excluded}"
        + (f", of which {outside} flagged" if outside else "")
        + f"); mean alpha {_num(summary['mean_alpha'])}, median {_num(summary['median_alpha'])}; "
        f"time {summary['seconds']:.1f} s"
    )
    worst = summary.get("worst_layers") or []
    if worst:
        rule_text = WORST_RULE.format(low=t.alpha_low, high=t.alpha_high)
        lines.append(f"worst layers ({rule_text}): {', '.join(quote(str(w)) for w in worst)}")
    dimensions = summary.get("outlier_dimensions") or []
    if dimensions:
        where = ", ".join(f"{d['index']} ({len(d['layers'])} layers)" for d in dimensions)
        lines.append(
            f"outlier dimensions (informational): {where}; "
            f"{summary.get('total_outlier_dimension_traps', 0)} traps lie on them"
        )
    return "\n".join(lines)


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, as wide as their widest cell."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)])


def format_comparison(result: Mapping[str, Any]) -> str:
    """The comparison's stdout: each model's verdict and findings, what changed from the base to
    each other model, then its most changed layers. `result` is `ComparisonResult.to_json()`."""
    summary = result["summary"]
    models = summary.get("models") or {}
    by_name = {r["name"]: r for r in result["layers"]}
    lines = []
    for label, m in models.items():
        lines.append(f"{label}: {m['verdict']} ({m['verdict_reason']})")
        info = (summary.get("others") or {}).get(label)
        if info is not None:
            lines.append(f"  changed: {'; '.join(info['changes'])}")
        found = "; ".join(f["text"] for f in m.get("findings") or [])
        lines.append(f"  findings (not counted): {found or 'none'}")
        if info is None:
            continue
        lines.append(f"  layers aligned with the base: {info['alignment']['aligned']}")
        for name in info["most_changed"][:5]:
            record = by_name[name]
            d = record["delta"][label]
            lines.append(
                f"  {quote(name)}: delta alpha {signed(record['delta_alpha'][label])}, "
                f"|dW|/|W| {_num(d['relative_norm'], '.3g')}, "
                f"dW effective rank {_num(d['effective_rank'], '.1f')}, "
                f"new flags {','.join(record['new_flags'][label]) or '-'}"
            )
    return "\n".join(lines)


def signed(value: Any, digits: int = 2) -> str:
    """A difference with its sign, "+0.00" for one that rounds to zero (never "-0.00")."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text
