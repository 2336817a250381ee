"""How far a compared model moved from its base: the `far_from_base` finding of `compare`.

Spectra read over-fitting and anti-grokking signatures, not every kind of damage: MiniLM fine-tuned
at 50x the usual learning rate until every sentence maps to the same vector scans exactly as the
released model. What does show it is the distance itself. A layer has moved far when its update is
large against its weights (|ΔW|/|W|, Frobenius, above `far_relative_norm`) or its alpha moved by
more than `far_delta_alpha`; the model is far from its base when at least `far_layer_fraction` of
the counted layers (embeddings left out unless the summary counts them) moved far. The bounds sit
an order of magnitude above what an ordinary fine-tune measures (configs/default.yaml).
"""

from __future__ import annotations

import math
from typing import Any

from llm_audit.architectures import EMBEDDING_ROLES
from llm_audit.config import AuditConfig
from llm_audit.vocabulary import FAR_FROM_BASE


def distance(records: list[dict[str, Any]], label: str, cfg: AuditConfig) -> dict[str, Any]:
    """The distance block of one compared model in compare.json's summary, with its finding."""
    rule = cfg.compare
    rows = [
        r
        for r in records
        if label in r["delta"]
        and (cfg.include_embeddings_in_summary or r["role"] not in EMBEDDING_ROLES)
    ]
    rel = [r["delta"][label]["relative_norm"] for r in rows]
    d_alpha = [abs(r["delta_alpha"][label]) for r in rows]
    far = [
        r["name"]
        for r, x, a in zip(rows, rel, d_alpha, strict=True)
        if (math.isfinite(x) and x > rule.far_relative_norm)
        or (math.isfinite(a) and a > rule.far_delta_alpha)
    ]
    share = len(far) / len(rows) if rows else 0.0
    finite_rel = sorted(x for x in rel if math.isfinite(x))
    finite_alpha = [a for a in d_alpha if math.isfinite(a)]
    return {
        "layers": len(rows),
        "far_layers": len(far),
        "far_share": share,
        "far_layer_names": far,
        "median_relative_norm": finite_rel[len(finite_rel) // 2] if finite_rel else math.nan,
        "max_relative_norm": finite_rel[-1] if finite_rel else math.nan,
        "max_abs_delta_alpha": max(finite_alpha, default=math.nan),
        "bounds": {
            "relative_norm": rule.far_relative_norm,
            "delta_alpha": rule.far_delta_alpha,
            "layer_fraction": rule.far_layer_fraction,
        },
        "far_from_base": bool(rows) and share >= rule.far_layer_fraction,
    }


def findings(block: dict[str, Any]) -> list[str]:
    """The compare findings of one model's distance block."""
    return [FAR_FROM_BASE] if block["far_from_base"] else []


def as_finding(block: dict[str, Any]) -> dict[str, Any]:
    """The distance block as an entry of a model summary's `findings` (shown first)."""
    bounds = block["bounds"]
    return {
        "name": FAR_FROM_BASE,
        "layers": block["far_layers"],
        "text": (
            f"far from its base: {block['far_layers']} of {block['layers']} layers moved beyond "
            f"|ΔW|/|W| {bounds['relative_norm']:g} or |Δalpha| {bounds['delta_alpha']:g} "
            f"(median |ΔW|/|W| {block['median_relative_norm']:.3g}); the spectra may still "
            "read healthy"
        ),
    }
