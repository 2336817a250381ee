"""Thresholds to per-layer flags, and flags to a model verdict. The rules live in the config.

The verdict answers one question: do the spectra show an over-fitting / anti-grokking signature?
It counts alpha_lt_2, scattered traps (`correlation_trap`) and failed fits. Findings (alpha_gt_6;
traps whose entries lie on the model's outlier dimensions, or share a few rows and columns of
their layer: `vocabulary.FINDINGS`) are flagged per layer and listed beside the verdict, and count
against it only when the config says so. A trap layer's flag follows its `trap_kind`, set by
`outlier_dims.place_traps`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from llm_audit.config import AuditConfig, Thresholds, VerdictRule
from llm_audit.vocabulary import (
    ALPHA_FIT_FAILED,
    ALPHA_GT_6,
    ALPHA_LT_2,
    ANALYZED,
    FAR_FROM_BASE,
    FINDINGS,
    FIT_FAILED,
    FLAGS,
    HEALTHY,
    PATHOLOGICAL,
    TRAP_FLAGS,
    VERDICTS,
    WATCH,
    trap_flag,
)


def layer_flags(record: dict[str, Any], t: Thresholds) -> list[str]:
    """The flags one analyzed layer raises (skipped layers raise none)."""
    status = record.get("status")
    if status not in ANALYZED:
        return []
    flags = []
    alpha = record.get("alpha", math.nan)
    if status == FIT_FAILED or not math.isfinite(alpha):
        flags.append(ALPHA_FIT_FAILED)
    elif alpha < t.alpha_low:
        flags.append(ALPHA_LT_2)
    elif alpha > t.alpha_high:
        flags.append(ALPHA_GT_6)
    if record.get("num_traps", 0) >= t.min_traps:
        flags.append(trap_flag(record.get("trap_kind")))
    return flags


def verdict_flags(record: dict[str, Any], rule: VerdictRule) -> list[str]:
    """The flags of a layer that count against the verdict (findings only when configured)."""
    return [f for f in record["flags"] if rule.counts(f)]


def findings(record: dict[str, Any], rule: VerdictRule) -> list[str]:
    """The flags of a layer that the verdict does not count: its findings."""
    return [f for f in record["flags"] if not rule.counts(f)]


def verdict(counted: list[dict[str, Any]], cfg: AuditConfig) -> tuple[str, str]:
    """`healthy`, `watch` or `pathological`, and the reason, for the layers the summary counts."""
    name, reason = _verdict(counted, cfg)
    found = Counter(f for r in counted for f in findings(r, cfg.verdict))
    if found:
        listed = ", ".join(f"{found[f]} {f}" for f in FINDINGS if found[f])
        reason += f"; findings, not counted: {listed}"
    return name, reason


def _verdict(counted: list[dict[str, Any]], cfg: AuditConfig) -> tuple[str, str]:
    n = len(counted)
    if n == 0:
        return WATCH, "no layer could be analyzed"
    rule = cfg.verdict
    counting = [verdict_flags(r, rule) for r in counted]
    trap_layers = sum(any(f in TRAP_FLAGS for f in flags) for flags in counting)
    low = sum(ALPHA_LT_2 in f for f in counting)
    if (
        trap_layers >= rule.pathological_trap_layers
        and low / n >= rule.pathological_alpha_lt_2_fraction
    ):
        return PATHOLOGICAL, (
            f"{trap_layers} layer(s) with correlation traps and {low} of {n} with alpha < "
            f"{cfg.thresholds.alpha_low:g}: the anti-grokking signature"
        )
    if trap_layers / n >= rule.pathological_trap_fraction:
        return PATHOLOGICAL, f"{trap_layers} of {n} layers have correlation traps"
    flagged = sum(bool(f) for f in counting)
    if flagged:
        return WATCH, f"{flagged} of {n} layers flagged, below the pathological thresholds"
    return HEALTHY, f"none of {n} layers flagged"


def parse_fail_on(spec: str | None) -> tuple[str, ...]:
    """`--fail-on alpha_lt_2,correlation_trap` (or a verdict: `pathological`, `watch`)."""
    from llm_audit.errors import ConfigError

    if not spec:
        return ()
    items = tuple(s.strip() for s in spec.split(",") if s.strip())
    for item in items:
        if item not in (*FLAGS, *VERDICTS[1:], FAR_FROM_BASE):
            known = ", ".join((*FLAGS, *VERDICTS[1:], FAR_FROM_BASE))
            raise ConfigError(f"--fail-on: unknown flag {item!r}; use any of {known}")
    return items


def failing(
    items: tuple[str, ...], summary: dict[str, Any], records: list[dict[str, Any]]
) -> list[str]:
    """Which `--fail-on` items fired."""
    flagged = {flag for r in records for flag in r.get("flags", [])}
    worse = {PATHOLOGICAL: (PATHOLOGICAL,), WATCH: (WATCH, PATHOLOGICAL)}
    return [item for item in items if item in flagged or summary["verdict"] in worse.get(item, ())]


def flagged(record: dict[str, Any], t: Thresholds) -> dict[str, Any]:
    """The record with its `flags`: the one place records get them, in scans and compares."""
    return {**record, "flags": layer_flags(record, t)}
