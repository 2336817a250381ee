"""Writers of quantized weights, from each format's published layout, for tests and benchmarks.

Each returns the tensors a checkpoint holds for one weight (named as the format names them) and
the float matrix that those tensors stand for, computed here from the integers and scales before
they are packed, so a decoder is checked against the format's arithmetic, not against itself.
Quantization is round-to-nearest (no calibration data): the packing is the point, not the quality.
bitsandbytes checkpoints are written by bitsandbytes itself (see test_quant.py).
"""

from __future__ import annotations

import torch

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of a word holds column AWQ_ORDER[k] of its 8


def mxfp4(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blocks, scales, dequantized) of W (..., rows, cols), cols a multiple of 32, as the OCP MX
    spec quantizes: the shared exponent is floor(log2(max |x|)) − 2 (E2M1's largest exponent),
    then each x / 2^e is rounded to the nearest E2M1 value (clamped to ±6)."""
    *lead, rows, cols = W.shape
    x = W.float().reshape(*lead, rows, cols // 32, 32)
    amax = x.abs().amax(dim=-1, keepdim=True)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2, torch.zeros_like(amax))
    exponent = exponent.clamp(-127, 127)
    scaled = (x / torch.exp2(exponent)).clamp(-6, 6)
    code = (scaled.abs().unsqueeze(-1) - E2M1).abs().argmin(dim=-1)  # nearest magnitude
    code = code + 8 * (scaled < 0)  # sign bit
    values = torch.where(code >= 8, -E2M1[code - 8 * (code >= 8)], E2M1[code % 8])
    dequantized = (values * torch.exp2(exponent)).reshape(*lead, rows, cols)
    code = code.to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)  # even element in the low nibble
    scales = (exponent.squeeze(-1) + 127).to(torch.uint8)
    return blocks, scales, dequantized


def _integer_grid(
    WT: torch.Tensor, bits: int, group: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, zeros, scales): asymmetric round-to-nearest of WT (in, out) per (group, column)."""
    top = 2**bits - 1
    lo = torch.stack([WT[group == g].amin(dim=0) for g in range(groups)]).clamp(max=0)
    hi = torch.stack([WT[group == g].amax(dim=0) for g in range(groups)]).clamp(min=0)
    scales = ((hi - lo) / top).clamp(min=1e-8).to(torch.float16)
    s = scales.float()
    zeros = torch.round(-lo / s).clamp(0, top).to(torch.int64)
    q = torch.round(WT / s[group]).to(torch.int64).add(zeros[group]).clamp(0, top)
    return q, zeros, scales


def pack_stream(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int values (..., n) packed along the last axis as one little-endian bit stream of int32
    words (value j in bits [j·bits, (j+1)·bits)), as GPTQ packs: (..., n · bits / 32)."""
    *lead, n = values.shape
    words = torch.zeros(*lead, n * bits // 32, dtype=torch.int64)
    for j in range(n):
        position = j * bits
        word, offset = divmod(position, 32)
        v = values[..., j].to(torch.int64)
        words[..., word] |= (v << offset) & 0xFFFFFFFF
        if offset + bits > 32:  # the value's high bits continue in the next word
            words[..., word + 1] |= v >> (32 - offset)
    return _int32(words)


def _int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def gptq(
    W: torch.Tensor, bits: int, group_size: int, *, act_order: bool = False, v2: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """GPTQ tensors of W (out, in) and the float W they stand for. With `act_order`, inputs are
    grouped in a shuffled order (g_idx not row // group_size), as `desc_act` checkpoints are."""
    WT = W.float().T  # (in, out): GPTQ stores the transpose
    rows = WT.shape[0]
    groups = -(-rows // group_size)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1)) if act_order else None
    rank = torch.arange(rows) if order is None else torch.argsort(order)
    g_idx = (rank // group_size).to(torch.int32)
    q, zeros, scales = _integer_grid(WT, bits, g_idx.long(), groups)
    dequantized = (q - zeros[g_idx.long()]).float() * scales.float()[g_idx.long()]
    stored_zeros = zeros if v2 else (zeros - 1) & (2**bits - 1)  # v1 stores z − 1
    tensors = {
        "qweight": pack_stream(q.T.contiguous(), bits).T.contiguous(),  # packed along inputs
        "qzeros": pack_stream(stored_zeros, bits),  # packed along outputs
        "scales": scales,
        "g_idx": g_idx,
    }
    return tensors, dequantized.T.contiguous()


def awq(W: torch.Tensor, group_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """AWQ gemm tensors of W (out, in) (4 bits, zero points) and the float W they stand for."""
    WT = W.float().T
    rows = WT.shape[0]
    group = torch.arange(rows) // group_size
    q, zeros, scales = _integer_grid(WT, 4, group, -(-rows // group_size))
    dequantized = (q - zeros[group]).float() * scales.float()[group]
    tensors = {"qweight": pack_awq(q), "qzeros": pack_awq(zeros), "scales": scales}
    return tensors, dequantized.T.contiguous()


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """4-bit values (rows, cols) packed 8 columns per int32 word in AWQ's order."""
    rows, cols = values.shape
    v = values.to(torch.int64).reshape(rows, cols // 8, 8)
    words = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for nibble, column in enumerate(AWQ_ORDER):
        words |= v[..., column] << (4 * nibble)
    return _int32(words)
