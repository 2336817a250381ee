"""GPTQ (AutoGPTQ / GPTQModel checkpoints, `quant_method: gptq`), 2, 3, 4 or 8 bits.

A linear layer `x` (out, in) is stored transposed and packed: `x.qweight` (int32,
(in·bits/32, out)), packed along the input axis; `x.scales` (float16, (groups, out)); `x.qzeros`
(int32, (groups, out·bits/32)), packed along the output axis; and `x.g_idx` (int32, (in,)), the
group of each input row, which with act-order (`desc_act`) is not `row // group_size` (older
checkpoints without `g_idx` group rows in order). Integers
are packed as one little-endian bit stream per column (see `base.unpack_last`). The float weight is

    Wᵀ[i, o] = scales[g, o] · (q[i, o] − z[g, o]),   g = g_idx[i],

where the stored zero is z − 1 in the original format (`checkpoint_format: gptq`, what AutoGPTQ
writes and the Hub holds; AutoGPTQ adds the 1 back modulo 2^bits) and z itself in GPTQModel's
`gptq_v2`. Bits and group size are read from the tensor shapes and checked against `config.json`.
As AutoGPTQ's `QuantLinear` (qlinear_cuda) dequantizes, in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llm_audit.lazy import torch
from llm_audit.quant.base import (
    WORD_BITS,
    LayoutError,
    NotDecoded,
    QuantizedWeight,
    bits_at,
    unpack_last,
)
from llm_audit.sources.base import Source, TensorInfo
from llm_audit.spectral.esd import Gather

METHOD = "gptq"
BITS = (2, 3, 4, 8)
V2 = "gptq_v2"  # checkpoint_format whose zeros are stored as they are


@dataclass(frozen=True)
class GptqWeight(QuantizedWeight):
    """qweight/qzeros/scales/g_idx as the float matrix Wᵀ (rows = input features)."""

    zero_offset: int  # 1 for the original format, 0 for gptq_v2

    def rows(
        self, source: Source, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        qzeros, scales = self.companions[:2]
        # Every `bits` word rows hold 32 input rows: read whole units of 32 rows.
        first, last = start // WORD_BITS * WORD_BITS, min(self.shape[0], -(-stop // 32) * 32)
        words = source.read_rows(self.packed, first * self.bits // 32, last * self.bits // 32)
        q = unpack_last(words.T.contiguous(), self.bits).T[start - first : stop - first]
        group = self._groups(source, start, stop)
        zeros = self._zeros(source.read(qzeros))
        scale = source.read(scales).to(torch.float32)
        return (q - zeros[group]).to(torch.float32).mul_(scale[group])

    def _groups(self, source: Source, start: int, stop: int) -> torch.Tensor:
        """The group of each input row in [start, stop): `g_idx`, or in order without one."""
        if len(self.companions) == 3:
            return source.read_rows(self.companions[2], start, stop).to(torch.int64)
        assert self.group_size is not None
        return torch.arange(start, stop) // self.group_size

    def _zeros(self, qzeros: torch.Tensor) -> torch.Tensor:
        """Every group's zero points, (groups, out), as int64."""
        z = unpack_last(qzeros, self.bits)
        return (z + self.zero_offset) & ((1 << self.bits) - 1)

    def element_reader(self, source: Source, *, expert: int | None = None) -> Gather:
        qzeros, scales = self.companions[:2]
        words = source.read(self.packed).reshape(-1)
        zeros = self._zeros(source.read(qzeros)).reshape(-1)
        scale = source.read(scales).to(torch.float32).reshape(-1)
        groups = self._groups(source, 0, self.shape[0])
        cols = self.shape[1]

        def gather(index: torch.Tensor) -> torch.Tensor:
            index = index.to(torch.int64)
            row, col = index // cols, index % cols
            position = row * self.bits  # the row's bits in its column's stream
            word = position // WORD_BITS * cols + col
            q = bits_at(words, word, position % WORD_BITS, self.bits, stride=cols)
            at = groups.index_select(0, row) * cols + col
            return (q - zeros.index_select(0, at)).to(torch.float32).mul_(scale.index_select(0, at))

        return gather


def find(
    by_name: dict[str, TensorInfo], qconfig: dict[str, Any]
) -> Iterator[GptqWeight | NotDecoded]:
    """Every `x.qweight` packed along its input axis, with its zeros, scales and g_idx."""
    for name, qweight in by_name.items():
        if not name.endswith(".qweight"):
            continue
        stem = name.removesuffix(".qweight")
        parts = [by_name.get(f"{stem}.{p}") for p in ("qzeros", "scales", "g_idx")]
        qzeros, scales, g_idx = parts
        if qzeros is None or scales is None:
            continue
        if qweight.shape[1:] != scales.shape[1:]:
            continue  # packed along the output axis: AWQ's layout
        try:
            bits, group_size = layout(qweight, qzeros, scales, qconfig)
            if g_idx is not None and g_idx.shape != (qweight.shape[0] * WORD_BITS // bits,):
                raise LayoutError(f"GPTQ g_idx of shape {list(g_idx.shape)}")
        except LayoutError as exc:
            yield NotDecoded(
                qweight,
                f"{stem}.weight",
                f"{exc}; not dequantized",
                tuple(p for p in parts if p is not None),
            )
            continue
        offset = 0 if str(qconfig.get("checkpoint_format", "gptq")) == V2 else 1
        yield GptqWeight(
            name=f"{stem}.weight",
            packed=qweight,
            companions=(qzeros, scales) if g_idx is None else (qzeros, scales, g_idx),
            shape=(qweight.shape[0] * WORD_BITS // bits, qweight.shape[1]),
            stored_in_out=True,
            method=METHOD,
            bits=bits,
            group_size=group_size,
            zero_offset=offset,
        )


def layout(
    qweight: TensorInfo, qzeros: TensorInfo, scales: TensorInfo, qconfig: dict[str, Any]
) -> tuple[int, int]:
    """(bits, group size) from the shapes, checked against `quantization_config`'s; raises
    `LayoutError` for tensors that cannot be GPTQ's."""
    dtypes = (qweight.dtype, qzeros.dtype, scales.dtype)
    if dtypes[:2] != ("I32", "I32") or scales.dtype not in ("F16", "BF16", "F32"):
        raise LayoutError(f"GPTQ tensors of dtypes {', '.join(dtypes)}")
    if not (len(qweight.shape) == len(qzeros.shape) == len(scales.shape) == 2):
        raise LayoutError("GPTQ tensors that are not 2-D")
    groups, out = scales.shape
    bits = qzeros.shape[1] * WORD_BITS // max(out, 1)
    stated = qconfig.get("bits", bits)
    if bits not in BITS or qzeros.shape[1] * WORD_BITS != bits * out or stated != bits:
        raise LayoutError(
            f"GPTQ qzeros {list(qzeros.shape)} for {out} outputs is not a 2, 3, 4 or 8-bit "
            "packing" + (f" (config.json says {stated} bits)" if stated != bits else "")
        )
    if qweight.shape[0] % bits or qzeros.shape[0] != groups:
        raise LayoutError(f"GPTQ qweight {list(qweight.shape)} is not whole units of 32 rows")
    rows = qweight.shape[0] * WORD_BITS // bits
    return bits, -(-rows // groups)
