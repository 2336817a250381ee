"""FP8 weights with their scales (DeepSeek-V3 block-wise, or per tensor / per channel).

An FP8 weight `x.weight` (F8_E4M3 or F8_E5M2) is read with its scale `x.weight_scale_inv`
(DeepSeek-V3: one per 128×128 block) or `x.weight_scale` (per tensor or per output channel); the
matrix is their product. The FP8 values are read as stored, one block of rows at a time.
"""

from __future__ import annotations

from llm_audit.lazy import torch
from llm_audit.sources.base import TensorInfo

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
FP8_SCALES = ("weight_scale_inv", "weight_scale")  # DeepSeek-V3 block-wise; per-tensor/channel
FP8_BLOCK = 128  # DeepSeek-V3 FP8: one scale per 128×128 block


def fp8_scale(t: TensorInfo, by_name: dict[str, TensorInfo]) -> TensorInfo | None:
    """The scale tensor of an FP8 weight (`x.weight` + `x.weight_scale_inv` or `x.weight_scale`)."""
    if t.dtype not in FP8_DTYPES or not t.name.endswith("weight"):
        return None
    for suffix in FP8_SCALES:
        scale = by_name.get(t.name.removesuffix("weight") + suffix)
        if scale is not None and len(scale.shape) <= 2:
            return scale
    return None


def dequantize_scaled(
    W: torch.Tensor, scale: torch.Tensor, *, first_row: int = 0, rows: int | None = None
) -> torch.Tensor:
    """W * scale as float32, the scale per tensor, per row, or per block (DeepSeek-V3: 128×128).

    A (R, C) scale for an (out, in) weight covers 128×128 blocks when R = ceil(out/128) (the
    DeepSeek-V3 `weight_block_size`), else blocks of ceil(out/R) rows (likewise for columns).
    W may be the rows [first_row, first_row + len(W)) of a weight of `rows` rows.
    """
    W32 = W.to(torch.float32)
    s = scale.to(torch.float32)
    if s.numel() == 1:
        return W32 * s.reshape(())
    if s.dim() == 1:
        s = s.reshape(-1, 1)
    cols = W32.shape[1]
    br = _block_size(rows or W32.shape[0], s.shape[0])
    bc = _block_size(cols, s.shape[1])
    per_row = s[torch.arange(first_row, first_row + W32.shape[0]) // br]
    return W32 * per_row.repeat_interleave(bc, dim=1)[:, :cols]


def _block_size(n: int, blocks: int) -> int:
    return FP8_BLOCK if -(-n // FP8_BLOCK) == blocks else -(-n // blocks)
