"""The audit as the page shows it: formatted cells, table columns, and binned spectra per layer.

Everything here is plain data (strings, rounded numbers, integer counts), so the page stays small:
raw eigenvalues stay in spectra.npz, the page carries one histogram of log10 λ per layer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from html import escape
from typing import Any

import numpy as np

from llm_audit.architectures import ROLES, STACKS
from llm_audit.config import Thresholds, VerdictRule
from llm_audit.layers import FLOAT_DTYPES
from llm_audit.report.histogram import drawn, finite, log_counts, log_edges

MAX_SPIKES = 20  # shuffled eigenvalues above the MP edge kept per layer (there are a handful)
MAX_TRAP_ROWS = 20

# Shown by default, in this order; every other key of the layer records becomes an extra column.
MAIN_COLUMNS = (
    "name", "block", "role", "shape", "Q", "alpha", "num_traps", "flags", "D", "xmin", "xmax",
    "num_pl_spikes", "lambda_max", "log_norm", "stable_rank", "entropy", "rand_num_spikes",
    "rand_bulk_max", "max_rand_eval", "status",
)  # fmt: skip
NOT_COLUMNS = ("trap_entries",)
TEXT_COLUMNS = ("name", "role", "shape", "flags", "status", "reason", "dtype", "stack")

# The metrics listed in a layer's detail card.
DETAIL_METRICS = (
    "alpha", "D", "xmin", "xmax", "num_pl_spikes", "lambda_max", "rand_bulk_max", "max_rand_eval",
    "num_traps", "rand_num_spikes", "stable_rank", "log_norm",
)  # fmt: skip

COLUMN_HELP = {
    "name": "tensor name in the checkpoint",
    "block": "transformer block (depth); empty for embeddings and heads",
    "stack": "encoder or decoder, in encoder-decoder models (each stack counts blocks from 0)",
    "role": "what the matrix does: q, k, v, o attention; up, gate, down MLP; embed, lm_head, other "
    "(the README lists every role)",
    "shape": "shape as stored",
    "Q": "aspect ratio N/M ≥ 1 of the matrix; alpha depends on it",
    "alpha": "power-law exponent of the ESD tail (HTSR); 2–6 is the usual range",
    "D": "Kolmogorov–Smirnov distance of the power-law fit (smaller fits better)",
    "xmin": "start of the fitted power-law tail (eigenvalue of WᵀW)",
    "xmax": "end of the fitted tail (largest eigenvalue)",
    "num_pl_spikes": "eigenvalues in the fitted tail",
    "lambda_max": "largest eigenvalue of WᵀW (squared spectral norm)",
    "log_norm": "log10 of the squared Frobenius norm",
    "stable_rank": "squared Frobenius norm / squared spectral norm",
    "entropy": "matrix entropy of the singular values (0 to 1)",
    "num_traps": "correlation traps: shuffled-matrix spikes above the MP edge, mean spike excluded",
    "rand_num_spikes": "WeightWatcher's count of shuffled spikes (includes the mean spike)",
    "rand_bulk_max": "Marchenko–Pastur bulk edge fitted to the shuffled matrix",
    "max_rand_eval": "largest eigenvalue of the shuffled matrix",
    "flags": "thresholds this layer crosses (see 'What the flags mean')",
    "status": "success, fit_failed, or why the layer was skipped",
}

INTEGER = re.compile(r"[IU]\d+|BOOL")  # index tensors (position_ids), never dequantized

# Fixed decimals where a column's scale is known; other floats get 4 significant digits.
DECIMALS = {"alpha": 2, "alpha_weighted": 2, "Q": 2, "D": 3, "entropy": 3}


def num(value: Any) -> float | None:
    """A finite float, or None for missing, null, NaN, Inf, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def rounded(value: Any, digits: int = 4) -> float | None:
    """`value` to `digits` significant digits (for embedding), None if not finite."""
    v = num(value)
    if v is None or v == 0:
        return v
    return round(v, digits - 1 - math.floor(math.log10(abs(v))))


def fmt(value: Any, key: str = "") -> str:
    """A metric as the page prints it (HTML-escaped); "—" when missing or not finite."""
    if isinstance(value, str):
        return escape(value)
    v = num(value)
    if v is None:
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if key in DECIMALS:
        return f"{v:.{DECIMALS[key]}f}"
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3g}"


def shape_text(record: Mapping[str, Any]) -> str:
    shape = record.get("shape")
    if isinstance(shape, (list, tuple)):
        return "×".join(str(s) for s in shape)
    return "—"


def role_order(roles: Any) -> list[str]:
    """Roles (or `panel_of` keys) in the architecture order (q, k, v, o, ..., other), the encoder
    stack's before the decoder's; unknown ones after, sorted."""
    order = [f"{stack} {r}" for stack in ("", *STACKS) for r in ROLES]
    known = [key for key in order if key.strip() in roles]
    return [k.strip() for k in known] + sorted(set(roles) - {k.strip() for k in known})


def panel_of(record: Mapping[str, Any]) -> str:
    """A depth plot's panel for the layer: its role, with its stack in encoder-decoder models
    (`encoder q`, `decoder q`), whose stacks both count blocks from 0."""
    stack, role = record.get("stack"), str(record.get("role"))
    return f"{stack} {role}" if stack else role


def columns(records: list[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(main columns, extra columns): every key any record has, except the trap entries."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    extra = [k for k in seen if k not in MAIN_COLUMNS and k not in NOT_COLUMNS]
    return list(MAIN_COLUMNS), extra


def cell(record: Mapping[str, Any], key: str) -> tuple[str, str]:
    """(text shown, sort key) of one table cell; the sort key is empty when there is no value."""
    value = record.get(key)
    if key == "shape":
        return shape_text(record), shape_text(record)
    if key == "flags":
        text = ", ".join(str(f) for f in value or [])
        return text, text
    if isinstance(value, str):
        return value, value
    if value is None:
        return "—", ""
    if num(value) is None:
        return (fmt(value), "") if not isinstance(value, (list, dict)) else ("…", "")
    return fmt(value, key), sort_key(value)


def sort_key(value: Any) -> str:
    """A number as a table cell's sort key (`data-v`): 7 significant digits; "" when missing."""
    v = num(value)
    return "" if v is None else repr(rounded(v, 7))


def block_of(record: Mapping[str, Any]) -> int | None:
    """The layer's block (depth) index, None for layers outside the blocks."""
    block = record.get("block")
    return block if isinstance(block, int) and not isinstance(block, bool) else None


def thresholds(document: Mapping[str, Any]) -> Thresholds:
    """The flag thresholds an audit or comparison was made with; the defaults where not given."""
    given = (document.get("settings") or {}).get("thresholds") or {}
    return dataclasses.replace(Thresholds(), **_numbers(given, Thresholds))


def verdict_rule(document: Mapping[str, Any]) -> VerdictRule:
    """The verdict rule an audit was made with; the defaults where not given."""
    given = (document.get("settings") or {}).get("verdict") or {}
    fields = [f.name for f in dataclasses.fields(VerdictRule)]
    switches = {k: given[k] for k in fields if isinstance(given.get(k), bool)}  # count_*
    return dataclasses.replace(VerdictRule(), **_numbers(given, VerdictRule), **switches)


def _numbers(given: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """The finite numbers `given` has for the fields of dataclass `cls`."""
    out = {f.name: num(given.get(f.name)) for f in dataclasses.fields(cls)}
    return {k: v for k, v in out.items() if v is not None}


def esd_view(
    record: Mapping[str, Any], spectrum: Mapping[str, np.ndarray]
) -> dict[str, Any] | None:
    """Binned ESD of one layer (`histogram`): the eigenvalues and the shuffled ones counted on one
    grid, below-floor eigenvalues in `below`, plus the fit and the marks the plot draws.

    None when the layer has no eigenvalue above zero.
    """
    evals = finite(spectrum.get("evals"))
    rand = finite(spectrum.get("rand_evals"))
    if evals.size == 0 or not np.any(evals > 0):
        return None
    top = float(max(evals.max(), rand.max() if rand.size else 0.0))
    shown, rand_shown = drawn(evals, top), drawn(rand, top)
    edges = log_edges([shown, rand_shown])  # `top` itself is drawn: not both empty
    bulk = num(record.get("rand_bulk_max"))
    spikes = np.sort(rand[rand > bulk])[::-1][:MAX_SPIKES] if bulk is not None else rand[:0]
    return {
        "lo": float(edges[0]),
        "hi": float(edges[-1]),
        "e": log_counts(shown, edges),
        "ne": int(evals.size),
        "below": int(evals.size - shown.size),
        "r": log_counts(rand_shown, edges),
        "nr": int(rand.size),
        "spikes": [rounded(s) for s in spikes],
        "alpha": rounded(record.get("alpha"), 6),
        "xmin": rounded(record.get("xmin"), 6),
        "xmax": rounded(record.get("xmax"), 6),
        "npl": num(record.get("num_pl_spikes")),
        "bulk": rounded(bulk),
        "mre": rounded(record.get("max_rand_eval")),
    }


def layer_view(
    index: int, record: Mapping[str, Any], spectrum: Mapping[str, np.ndarray] | None
) -> dict[str, Any]:
    """What a layer's detail card shows, with every number already formatted."""
    entries = record.get("trap_entries") or []
    return {
        "i": index,
        "name": str(record.get("name", "")),
        "role": str(record.get("role", "")),
        "block": fmt(record.get("block")),
        "shape": shape_text(record),
        "Q": fmt(record.get("Q"), "Q"),
        "flags": [str(f) for f in record.get("flags") or []],
        "status": str(record.get("status", "")),
        "reason": str(record.get("reason") or ""),
        "m": [[k, fmt(record.get(k), k)] for k in DETAIL_METRICS if k in record],
        "te": [
            [fmt(e.get("row")), fmt(e.get("col")), fmt(e.get("value")), fmt(e.get("z"))]
            for e in entries[:MAX_TRAP_ROWS]
            if isinstance(e, Mapping)
        ],
        "te_total": len(entries),
        "esd": esd_view(record, spectrum) if spectrum is not None else None,
    }


def quantization_note(model: Mapping[str, Any]) -> str:
    """The caveat for weights dequantized from a quantized checkpoint (GGUF, GPTQ, AWQ, FP8, ...):
    their spectra include quantization noise. "" for float weights."""
    quant = model.get("quantization")
    dtypes = model.get("dtype")
    dtypes = [str(d) for d in (dtypes if isinstance(dtypes, list) else [dtypes]) if d]
    stored = [d for d in dtypes if d not in FLOAT_DTYPES and not INTEGER.fullmatch(d)]
    if isinstance(quant, Mapping):
        bits = quant.get("bits")
        what = f"{quant.get('method')}" + (f", {bits} bits" if bits else "")
    elif stored:
        what = ", ".join(stored)
    else:
        return ""
    return (
        f'<p class="note warn quant">Quantized weights ({escape(what)}): the spectra are those of '
        "the dequantized matrices and include quantization noise, which lowers alpha and can "
        "add spikes; read an alpha just below the threshold with that in mind.</p>"
    )
