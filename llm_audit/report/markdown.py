"""summary.md: the verdict, its findings, the counts and the flagged layers in Markdown, the form
people paste into a model card, a pull request or a CI job summary ($GITHUB_STEP_SUMMARY). It
links to the HTML page beside it, and is written from the same counts (`summary.count_lines`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_audit.report.terminal import signed
from llm_audit.report.view import fmt, thresholds, verdict_rule
from llm_audit.summary import count_lines, is_counted

MAX_ROWS = 50  # flagged layers listed; the rest are counted


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _verdict_block(title: str, s: Mapping[str, Any], document: Mapping[str, Any]) -> list[str]:
    counted, found = count_lines(s, thresholds(document), verdict_rule(document))
    findings = [f"- {_cell(f.get('text'))}" for f in s.get("findings") or []]
    return [
        f"{title} **{s.get('verdict', 'unknown')}**: {s.get('verdict_reason', '')}",
        "",
        "Findings (listed beside the verdict, not counted by it):",
        "",
        *(findings or ["- none"]),
        "",
        *_table(
            ["count", "value"],
            [[f"{label} (verdict)", value] for label, value in counted]
            + [[f"{label} (finding)", value] for label, value in found],
        ),
    ]


def scan_markdown(audit: Mapping[str, Any], html: str = "report.html") -> str:
    """summary.md of an audit (`AuditResult.to_json()`), linking to the page `html`."""
    model = audit.get("model") or {}
    s = audit.get("summary") or {}
    flagged = [r for r in audit.get("layers") or [] if r.get("flags")]
    rows = [
        [
            f"`{r.get('name')}`",
            str(r.get("role")),
            fmt(r.get("alpha"), "alpha"),
            fmt(r.get("num_traps")),
            ", ".join(r.get("flags") or []),
            "yes" if is_counted(r, s) else "no",
        ]
        for r in flagged[:MAX_ROWS]
    ]
    more = len(flagged) - MAX_ROWS
    lines = [
        f"## llm-audit: `{_cell(model.get('id', 'model'))}`",
        "",
        *_verdict_block("Verdict:", s, audit),
        "",
        f"### Flagged layers ({len(flagged)})",
        "",
        *(
            _table(["layer", "role", "alpha", "traps", "flags", "counted"], rows)
            if rows
            else ["none"]
        ),
        *(["", f"and {more} more in the report"] if more > 0 else []),
        "",
        f"Full report: [{html}]({html}) (layers, spectra, what the flags mean).",
    ]
    return "\n".join(lines) + "\n"


def compare_markdown(result: Mapping[str, Any], html: str = "compare.html") -> str:
    """summary.md of a comparison (`ComparisonResult.to_json()`), linking to the page `html`."""
    summary = result.get("summary") or {}
    base = result.get("base") or {}
    lines = [f"## llm-audit compare: base `{_cell(base.get('id', 'base'))}`", ""]
    others = summary.get("others") or {}
    for label, s in (summary.get("models") or {}).items():
        lines += [f"### {label}", ""]
        info = others.get(label)
        if info is not None:
            lines += ["Changed from the base:", ""]
            lines += [f"- {_cell(c)}" for c in info.get("changes") or []] + [""]
        lines += [*_verdict_block("Verdict:", s, result), ""]
        if info is not None:
            rows = []
            by_name = {r["name"]: r for r in result.get("layers") or []}
            for name in (info.get("most_changed") or [])[:10]:
                r = by_name[name]
                delta = (r.get("delta") or {}).get(label) or {}
                rows.append(
                    [
                        f"`{name}`",
                        signed((r.get("delta_alpha") or {}).get(label)),
                        fmt(delta.get("relative_norm")),
                        ", ".join((r.get("new_flags") or {}).get(label) or []) or "-",
                    ]
                )
            if rows:
                lines += ["Most changed layers:", ""]
                lines += [*_table(["layer", "Δalpha", "‖ΔW‖/‖W‖", "new flags"], rows), ""]
    lines.append(f"Full comparison: [{html}]({html}).")
    return "\n".join(lines) + "\n"
