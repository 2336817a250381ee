"""MXFP4 (OCP Microscaling FP4), as gpt-oss publishes its expert weights.

A weight `x` is stored as `x_blocks` (uint8, (..., rows, cols/32, 16)) and `x_scales` (uint8,
(..., rows, cols/32)): 32 consecutive values of a row share one E8M0 scale 2^(s - 127), and each
value is an E2M1 number (1 sign, 2 exponent, 1 mantissa bit: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}), two
per byte, the even element in the low nibble. The rows are output features: gpt-oss's
`gate_up_proj_blocks` is (experts, 2·intermediate, hidden/32, 16), the transpose of the
(experts, hidden, 2·intermediate) `gate_up_proj` that transformers builds when it dequantizes.

Decoded exactly as transformers' `integrations.mxfp4.convert_moe_packed_tensors` (a lookup table and
`ldexp`, in float32 here: an E2M1 value times a power of two is exact in float32, down to 2^-128 as
a subnormal; a scale byte of 255, NaN in the OCP spec, gives ±inf as there).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llm_audit.lazy import torch
from llm_audit.quant.base import QuantizedWeight, read_all
from llm_audit.sources.base import Source, TensorInfo
from llm_audit.spectral.esd import Gather

METHOD = "mxfp4"
BLOCK = 32  # values per scale
SCALE_BIAS = 127  # E8M0: 2^(byte - 127)
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCKS_SUFFIX, SCALES_SUFFIX = "_blocks", "_scales"


@dataclass(frozen=True)
class Mxfp4Weight(QuantizedWeight):
    """`x_blocks` and `x_scales` as the float matrix `x` (or fused experts), rows = outputs."""

    @property
    def dtype(self) -> str:
        return "MXFP4"

    def rows(
        self, source: Source, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        (scales,) = self.companions
        codes = source.read_rows(self.packed, start, stop, expert=expert)  # (n, cols/32, 16)
        exponents = source.read_rows(scales, start, stop, expert=expert)  # (n, cols/32)
        return decode(codes, exponents)

    def element_reader(self, source: Source, *, expert: int | None = None) -> Gather:
        codes = read_all(source, self.packed, expert).reshape(-1)  # two values per byte
        exponents = read_all(source, self.companions[0], expert).reshape(-1)
        table = torch.tensor(E2M1, dtype=torch.float32)

        def gather(index: torch.Tensor) -> torch.Tensor:
            byte = codes.index_select(0, index >> 1).to(torch.int64)
            nibble = (byte >> ((index & 1) << 2)) & 15  # even elements in the low nibble
            power = exponents.index_select(0, index >> 5).to(torch.int32) - SCALE_BIAS
            return torch.ldexp(table[nibble], power)

        return gather


def decode(codes: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """uint8 blocks (..., G, 16) and scales (..., G) as float32 values (..., G * 32)."""
    table = torch.tensor(E2M1, dtype=torch.float32)
    codes = codes.to(torch.int64)
    values = torch.stack((table[codes & 15], table[codes >> 4]), dim=-1)  # low nibble first
    values = values.reshape(*codes.shape[:-1], BLOCK)
    power = (exponents.to(torch.int32) - SCALE_BIAS).unsqueeze(-1)
    return torch.ldexp(values, power).reshape(*codes.shape[:-2], -1)


def find(by_name: dict[str, TensorInfo], qconfig: dict[str, Any]) -> Iterator[QuantizedWeight]:
    """Every `x_blocks` tensor with its `x_scales` whose shapes fit the format."""
    for name, blocks in by_name.items():
        if not name.endswith(BLOCKS_SUFFIX):
            continue
        stem = name.removesuffix(BLOCKS_SUFFIX)
        scales = by_name.get(stem + SCALES_SUFFIX)
        if scales is None or blocks.dtype != "U8" or scales.dtype != "U8":
            continue
        if blocks.shape[-1] != BLOCK // 2 or blocks.shape[:-1] != scales.shape:
            continue
        if len(blocks.shape) not in (3, 4):  # (rows, G, 16) or (experts, rows, G, 16)
            continue
        *lead, groups, _ = blocks.shape
        yield Mxfp4Weight(
            name=stem,
            packed=blocks,
            companions=(scales,),
            shape=(*lead, groups * BLOCK),
            stored_in_out=False,
            method=METHOD,
            bits=4,
            group_size=BLOCK,
        )
