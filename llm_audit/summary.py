"""The model-level summary: counts, alpha statistics by role, traps, verdict."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from llm_audit.architectures import EMBEDDING_ROLES
from llm_audit.config import AuditConfig
from llm_audit.flags import verdict, verdict_flags
from llm_audit.outlier_dims import TrapPlaces
from llm_audit.vocabulary import ANALYZED, CORRELATION_TRAP, FLAGS, OUTLIER_DIMENSION, count_key

WORST = 5


def summarize(
    records: list[dict[str, Any]],
    cfg: AuditConfig,
    seconds: float,
    places: TrapPlaces | None = None,
) -> dict[str, Any]:
    """Summary over the analyzed layers; embeddings and lm_head are left out unless configured.
    `places` (from `outlier_dims.place_traps`) gives the hidden size and outlier dimensions."""
    analyzed = [r for r in records if r["status"] in ANALYZED]
    counted = [
        r for r in analyzed if cfg.include_embeddings_in_summary or r["role"] not in EMBEDDING_ROLES
    ]
    alphas = [r["alpha"] for r in counted if math.isfinite(r.get("alpha", math.nan))]
    by_role: dict[str, list[float]] = {}
    for r in analyzed:
        if math.isfinite(r.get("alpha", math.nan)):
            by_role.setdefault(r["role"], []).append(r["alpha"])
    name, reason = verdict(counted, cfg)
    # Traps on outlier dimensions are counted apart: `total_traps` stays the pathology's count.
    on_dimensions = [r for r in counted if r.get("trap_kind") == OUTLIER_DIMENSION]
    scattered = [r for r in counted if r.get("trap_kind") != OUTLIER_DIMENSION]
    return {
        "num_layers": len(records),
        "num_analyzed": len(analyzed),
        "num_counted": len(counted),
        "excluded_from_summary": [] if cfg.include_embeddings_in_summary else list(EMBEDDING_ROLES),
        "skipped": dict(Counter(r["status"] for r in records if r not in analyzed)),
        "mean_alpha": float(np.mean(alphas)) if alphas else math.nan,
        "median_alpha": float(np.median(alphas)) if alphas else math.nan,
        "alpha_by_role": {
            role: {"mean": float(np.mean(v)), "median": float(np.median(v)), "count": len(v)}
            for role, v in by_role.items()
        },
        **{
            count_key(flag): sum(flag in r["flags"] for r in counted)
            for flag in FLAGS
            if flag != CORRELATION_TRAP  # counted as num_trap_layers below
        },
        "num_trap_layers": sum(CORRELATION_TRAP in r["flags"] for r in counted),
        "total_traps": sum(int(r.get("num_traps", 0)) for r in scattered),
        "total_outlier_dimension_traps": sum(int(r.get("num_traps", 0)) for r in on_dimensions),
        "total_rand_num_spikes": sum(int(r.get("rand_num_spikes", 0)) for r in counted),
        "hidden_size": places.hidden_size if places else None,
        "outlier_dimensions": [d.as_dict() for d in places.dimensions] if places else [],
        "worst_layers": _worst(analyzed, cfg),
        "experts": expert_summary(analyzed),
        "verdict": name,
        "verdict_reason": reason,
        "seconds": seconds,
    }


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


def _worst(analyzed: list[dict[str, Any]], cfg: AuditConfig) -> list[str]:
    """Layers flagged against the verdict, most traps then lowest alpha first: at most WORST."""
    flagged = [r for r in analyzed if verdict_flags(r, cfg.verdict)]

    def severity(r: dict[str, Any]) -> tuple[int, float]:
        alpha = r.get("alpha", math.nan)
        return -int(r.get("num_traps", 0)), alpha if math.isfinite(alpha) else math.inf

    flagged.sort(key=severity)
    return [r["name"] for r in flagged[:WORST]]
