"""The model-level summary, and the counts every output shows, each word defined once here.

- **counted layer**: an analyzed layer whose role the summary includes (embeddings and lm_head
  are left out unless `include_embeddings_in_summary`): `is_counted`, `num_counted`. Every count
  below is over counted layers; a layer outside them keeps its flags in the table, and
  `num_flagged_outside` says how many have any.
- **flagged layer**: a counted layer with a flag the verdict counts (`flags.verdict_flags`):
  `num_flagged`.
- **finding**: a flag the verdict does not count (`vocabulary.FINDINGS`, unless configured):
  `findings` {flag: layers}, `num_with_findings` layers with any.
- **trap layer**: a counted layer whose trap flag the verdict counts: `num_trap_layers`, and
  `total_traps` their traps. The traps of a finding's kind: `total_<flag>_traps`.
- `num_<flag>`: counted layers raising each flag, counted by the verdict or not.

The terminal summary, audit.json, layers.csv (its `counted` column) and every page read these.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from llm_audit.architectures import EMBEDDING_ROLES
from llm_audit.config import AuditConfig, Thresholds, VerdictRule
from llm_audit.flags import findings, verdict, verdict_flags
from llm_audit.outlier_dims import TrapPlaces
from llm_audit.vocabulary import (
    ALPHA_FIT_FAILED,
    ALPHA_GT_6,
    ALPHA_LT_2,
    ANALYZED,
    CORRELATION_TRAP,
    FINDINGS,
    FLAGS,
    INFORMATIONAL_TRAP_KINDS,
    OUTLIER_DIMENSION,
    TRAP_FLAGS,
    count_key,
    traps_key,
)

WORST = 5


def is_counted(record: Mapping[str, Any], summary: Mapping[str, Any]) -> bool:
    """Whether the summary and the verdict count the layer: analyzed, and of a role not in the
    summary's `excluded_from_summary`."""
    excluded = set(map(str, summary.get("excluded_from_summary") or []))
    return record.get("status") in ANALYZED and str(record.get("role")) not in excluded


def summarize(
    records: list[dict[str, Any]],
    cfg: AuditConfig,
    seconds: float,
    places: TrapPlaces | None = None,
) -> dict[str, Any]:
    """Summary over the counted layers (see the module docstring for each count).
    `places` (from `outlier_dims.place_traps`) gives the hidden size and outlier dimensions."""
    analyzed = [r for r in records if r["status"] in ANALYZED]
    excluded = [] if cfg.include_embeddings_in_summary else list(EMBEDDING_ROLES)
    counted = [r for r in analyzed if is_counted(r, {"excluded_from_summary": excluded})]
    alphas = [r["alpha"] for r in counted if math.isfinite(r.get("alpha", math.nan))]
    by_role: dict[str, list[float]] = {}
    for r in analyzed:
        if math.isfinite(r.get("alpha", math.nan)):
            by_role.setdefault(r["role"], []).append(r["alpha"])
    name, reason = verdict(counted, cfg)
    rule = cfg.verdict
    trap_layers = [r for r in counted if any(f in TRAP_FLAGS for f in verdict_flags(r, rule))]
    summary = {
        "num_layers": len(records),
        "num_analyzed": len(analyzed),
        "num_counted": len(counted),
        "excluded_from_summary": excluded,
        "skipped": dict(Counter(r["status"] for r in records if r not in analyzed)),
        "mean_alpha": float(np.mean(alphas)) if alphas else math.nan,
        "median_alpha": float(np.median(alphas)) if alphas else math.nan,
        "alpha_by_role": {
            role: {"mean": float(np.mean(v)), "median": float(np.median(v)), "count": len(v)}
            for role, v in by_role.items()
        },
        "num_flagged": sum(bool(verdict_flags(r, rule)) for r in counted),
        "num_with_findings": sum(bool(findings(r, rule)) for r in counted),
        "findings": [],  # filled below from the counts
        "num_flagged_outside": sum(bool(r["flags"]) for r in analyzed if r not in counted),
        **{count_key(flag): sum(flag in r["flags"] for r in counted) for flag in FLAGS},
        "num_trap_layers": len(trap_layers),
        "total_traps": sum(int(r.get("num_traps", 0)) for r in trap_layers),
        **{
            traps_key(kind): sum(int(r.get("num_traps", 0)) for r in counted if kind in r["flags"])
            for kind in INFORMATIONAL_TRAP_KINDS
        },
        "total_rand_num_spikes": sum(int(r.get("rand_num_spikes", 0)) for r in counted),
        "hidden_size": places.hidden_size if places else None,
        "outlier_dimensions": [d.as_dict() for d in places.dimensions] if places else [],
        "worst_layers": worst_layers(counted, cfg),
        "experts": expert_summary(analyzed),
        "verdict": name,
        "verdict_reason": reason,
        "seconds": seconds,
    }
    summary["findings"] = finding_list(summary, cfg)
    return summary


def flag_label(flag: str, t: Thresholds) -> str:
    """A flag's count in words: "alpha < 2", "traps on outlier dimensions"."""
    words = {
        ALPHA_LT_2: f"alpha < {t.alpha_low:g}",
        ALPHA_GT_6: f"alpha > {t.alpha_high:g}",
        ALPHA_FIT_FAILED: "fit failed",
        CORRELATION_TRAP: "scattered traps",
        OUTLIER_DIMENSION: "traps on outlier dimensions",
    }
    return words.get(flag, f"{flag} traps" if flag in INFORMATIONAL_TRAP_KINDS else flag)


def _layers(n: int) -> str:
    return f"{n} layer" + ("" if n == 1 else "s")


def finding_list(summary: Mapping[str, Any], cfg: AuditConfig) -> list[dict[str, Any]]:
    """The findings present, each {"name": flag, "layers": n, "traps": n (trap kinds), "text"}:
    what every output lists beside the verdict."""
    out = []
    for flag in FINDINGS:
        n = int(summary.get(count_key(flag)) or 0)
        if not n or cfg.verdict.counts(flag):
            continue
        item: dict[str, Any] = {"name": flag, "layers": n}
        text = f"{flag_label(flag, cfg.thresholds)} in {_layers(n)}"
        if flag in INFORMATIONAL_TRAP_KINDS:
            item["traps"] = int(summary.get(traps_key(flag)) or 0)
            text += f" ({item['traps']} traps)"
        out.append({**item, "text": text})
    return out


def count_lines(
    summary: Mapping[str, Any], t: Thresholds, rule: VerdictRule
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(label, value) pairs of the counts, those the verdict counts and the findings apart: the
    lines the terminal, summary.md and the page's flags card all print."""

    def n(key: str) -> int:
        value = summary.get(key)
        return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0

    counted = [
        ("flagged layers", f"{n('num_flagged')} of {n('num_counted')}"),
        (flag_label(ALPHA_LT_2, t), str(n(count_key(ALPHA_LT_2)))),
        (flag_label(ALPHA_FIT_FAILED, t), str(n(count_key(ALPHA_FIT_FAILED)))),
        ("trap layers", f"{n('num_trap_layers')} ({n('total_traps')} traps)"),
    ]
    found: list[tuple[str, str]] = []
    for flag in FINDINGS:
        value = str(n(count_key(flag)))
        if flag in INFORMATIONAL_TRAP_KINDS:
            value += f" ({n(traps_key(flag))} traps)"
        (counted if rule.counts(flag) else found).append((flag_label(flag, t), value))
    return counted, found


def expert_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mixture-of-experts blocks, each with its expert matrices pooled: {block: statistics}."""
    by_block: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("expert") is not None and r["block"] is not None:
            by_block.setdefault(r["block"], []).append(r)
    pooled = {}
    for block, rows in sorted(by_block.items()):
        alphas = [r["alpha"] for r in rows if math.isfinite(r.get("alpha", math.nan))]
        pooled[str(block)] = {
            "num_experts": len({r["expert"] for r in rows}),
            "num_matrices": len(rows),
            "mean_alpha": float(np.mean(alphas)) if alphas else math.nan,
            "min_alpha": min(alphas, default=math.nan),
            "max_alpha": max(alphas, default=math.nan),
            "max_traps": max((int(r.get("num_traps", 0)) for r in rows), default=0),
        }
    return pooled


def worst_layers(counted: list[dict[str, Any]], cfg: AuditConfig) -> list[str]:
    """The counted layers with any flag, worst first (`severity`): at most WORST names."""
    flagged = [r for r in counted if r["flags"]]
    flagged.sort(key=lambda r: severity(r, cfg))
    return [r["name"] for r in flagged[:WORST]]


WORST_RULE = (
    "flags the verdict counts before findings, then more traps, then alpha farther outside "
    "[{low:g}, {high:g}] (a failed fit counts as farthest)"
)


def severity(record: Mapping[str, Any], cfg: AuditConfig) -> tuple[int, int, float]:
    """The sort key of the worst-layers ranking, smallest first (WORST_RULE says it in words)."""
    counting = bool(verdict_flags(dict(record), cfg.verdict))
    return -counting, -int(record.get("num_traps", 0) or 0), -outside(record, cfg.thresholds)


def outside(record: Mapping[str, Any], t: Thresholds) -> float:
    """How far alpha lies outside [alpha_low, alpha_high] (0 inside, inf when not fitted)."""
    alpha = record.get("alpha", math.nan)
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        return math.inf
    return max(t.alpha_low - alpha, alpha - t.alpha_high, 0.0)
