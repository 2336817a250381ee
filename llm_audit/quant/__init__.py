"""Quantized checkpoints: which tensors make up a quantized weight, and that weight as floats.

One module per format, each finding its weights from tensor names, dtypes and shapes (checked
against `config.json`'s `quantization_config` where it states bits or a layout) and decoding them
row block by row block to float32: `mxfp4` (gpt-oss experts), `gptq`, `awq`, `bnb`
(bitsandbytes NF4/FP4 and int8); `fp8` holds the FP8 weight-and-scale rule. A tensor that looks
quantized in a layout no module decodes is listed as `NotDecoded`, with the reason, so that it is
reported as `unsupported_quantization` rather than dropped. Spectra of dequantized weights include
the quantization noise: they describe the weights the checkpoint holds, not the model before it
was quantized.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llm_audit.quant import awq, bnb, gptq, mxfp4
from llm_audit.quant.base import NotDecoded, QuantizedWeight, Reader
from llm_audit.sources.base import TensorInfo

__all__ = [
    "NotDecoded",
    "Quantized",
    "QuantizedWeight",
    "Reader",
    "describe_config",
    "find_quantized",
]


@dataclass(frozen=True)
class Quantized:
    """The quantized weights of a checkpoint, keyed by the name of their packed tensor."""

    weights: dict[str, QuantizedWeight]
    not_decoded: dict[str, NotDecoded]
    companions: frozenset[str]  # scales, zeros, ...: parts of a weight above, never layers

    def is_part(self, name: str) -> bool:
        """True for a tensor that belongs to a quantized weight (packed values or companion)."""
        return name in self.weights or name in self.not_decoded or name in self.companions


def find_quantized(
    tensors: list[TensorInfo], config: dict[str, Any] | None, *, read: Reader | None = None
) -> Quantized:
    """Every quantized weight among `tensors`. `read` reads a tensor's bytes where a format keeps
    its shape in one (bitsandbytes 4-bit); without it such weights are listed as not decoded."""
    by_name = {t.name: t for t in tensors}
    qconfig = (config or {}).get("quantization_config")
    qconfig = qconfig if isinstance(qconfig, dict) else {}
    found: Iterable[QuantizedWeight | NotDecoded] = (
        *mxfp4.find(by_name, qconfig),
        *gptq.find(by_name, qconfig),
        *awq.find(by_name, qconfig),
        *bnb.find(by_name, qconfig, read),
    )
    weights: dict[str, QuantizedWeight] = {}
    not_decoded: dict[str, NotDecoded] = {}
    companions: set[str] = set()
    for item in found:
        if isinstance(item, QuantizedWeight):
            weights[item.packed.name] = item
        else:
            not_decoded[item.packed.name] = item
        companions.update(t.name for t in item.companions)
    for t in tensors:  # packed-looking tensors that no format claimed
        unclaimed = _unrecognized(t, by_name)
        if unclaimed is not None and t.name not in weights and t.name not in not_decoded:
            not_decoded[t.name] = unclaimed
            companions.update(c.name for c in unclaimed.companions)
    return Quantized(weights, not_decoded, frozenset(companions))


def _unrecognized(t: TensorInfo, by_name: dict[str, TensorInfo]) -> NotDecoded | None:
    stem, _, last = t.name.rpartition(".")
    if last == "qweight":
        parts = tuple(p for s in ("qzeros", "scales", "g_idx") if (p := by_name.get(f"{stem}.{s}")))
        reason = "packed integer weights (qweight) in a layout other than GPTQ's or AWQ gemm's"
        return NotDecoded(t, f"{stem}.weight", reason + "; not dequantized", parts)
    scales = by_name.get(t.name.removesuffix(mxfp4.BLOCKS_SUFFIX) + mxfp4.SCALES_SUFFIX)
    if t.name.endswith(mxfp4.BLOCKS_SUFFIX) and scales is not None:
        reason = (
            f"_blocks/_scales of dtypes {t.dtype}/{scales.dtype} and shapes that are not MXFP4's"
        )
        stem = t.name.removesuffix(mxfp4.BLOCKS_SUFFIX)
        return NotDecoded(t, stem, reason + "; not dequantized", (scales,))
    return None


def describe_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model's `quantization_config` as method, bits and group size (None if there is none)."""
    qconfig = (config or {}).get("quantization_config")
    if not isinstance(qconfig, dict):
        return None
    method = str(qconfig.get("quant_method", "unknown"))
    bits, group = qconfig.get("bits"), qconfig.get("group_size", qconfig.get("q_group_size"))
    if method == mxfp4.METHOD:
        bits, group = 4, mxfp4.BLOCK
    elif method == "fp8":
        bits = 8
    elif method == bnb.METHOD:
        bits = 4 if qconfig.get("load_in_4bit") else 8 if qconfig.get("load_in_8bit") else bits
    return {"method": method, "bits": bits, "group_size": group}
