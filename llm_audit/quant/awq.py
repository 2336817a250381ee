"""AWQ (AutoAWQ "gemm" checkpoints, `quant_method: awq`), 4 bits with zero points.

A linear layer `x` (out, in) is stored transposed: `x.qweight` (int32, (in, out/8)) and `x.qzeros`
(int32, (in/group, out/8)) pack 8 four-bit integers per word along the output axis, in AWQ's order:
nibble k of a word (bits 4k to 4k+3) holds column `AWQ_ORDER[k]` of its 8, so columns 0-7 sit in
nibbles 0, 4, 1, 5, 2, 6, 3, 7. `x.scales` is float16 (in/group, out), and

    Wᵀ[i, o] = scales[g, o] · (q[i, o] − z[g, o]),   g = i // group_size

with no offset on the zeros (unlike GPTQ's). As AutoAWQ's `utils.packing_utils.dequantize_gemm`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llm_audit.lazy import torch
from llm_audit.quant.base import WORD_BITS, LayoutError, NotDecoded, QuantizedWeight, unsigned
from llm_audit.sources.base import Source, TensorInfo
from llm_audit.spectral.esd import Gather

METHOD = "awq"
BITS = 4
PER_WORD = WORD_BITS // BITS
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # the column that each nibble of a word holds
NIBBLE_OF_COLUMN = [AWQ_ORDER.index(c) for c in range(PER_WORD)]  # 0 4 1 5 2 6 3 7


@dataclass(frozen=True)
class AwqWeight(QuantizedWeight):
    """qweight/qzeros/scales as the float matrix Wᵀ (rows = input features)."""

    def rows(
        self, source: Source, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        qzeros, scales = self.companions
        assert self.group_size is not None
        q = unpack_columns(source.read_rows(self.packed, start, stop))
        first, last = start // self.group_size, (stop - 1) // self.group_size + 1
        group = torch.arange(start, stop) // self.group_size - first
        zeros = unpack_columns(source.read_rows(qzeros, first, last))[group]
        scale = source.read_rows(scales, first, last).to(torch.float32)[group]
        return (q - zeros).to(torch.float32).mul_(scale)

    def element_reader(self, source: Source, *, expert: int | None = None) -> Gather:
        qzeros, scales = self.companions
        assert self.group_size is not None
        group_size, cols = self.group_size, self.shape[1]
        words = source.read(self.packed).reshape(-1)
        zeros = unpack_columns(source.read(qzeros)).reshape(-1)
        scale = source.read(scales).to(torch.float32).reshape(-1)

        def gather(index: torch.Tensor) -> torch.Tensor:
            index = index.to(torch.int64)
            row, col = index // cols, index % cols
            word = words.index_select(0, row * (cols // PER_WORD) + col // PER_WORD)
            shift = torch.tensor(NIBBLE_OF_COLUMN).index_select(0, col % PER_WORD) * BITS
            q = (unsigned(word) >> shift) & 15
            at = row // group_size * cols + col
            return (q - zeros.index_select(0, at)).to(torch.float32).mul_(scale.index_select(0, at))

        return gather


def unpack_columns(words: torch.Tensor) -> torch.Tensor:
    """int32 words (rows, cols/8) in AWQ's order as int64 integers (rows, cols)."""
    shifts = torch.arange(0, WORD_BITS, BITS)
    nibbles = (unsigned(words).unsqueeze(-1) >> shifts) & 15  # (rows, cols/8, nibble)
    return nibbles[..., torch.tensor(NIBBLE_OF_COLUMN)].reshape(words.shape[0], -1)


def find(
    by_name: dict[str, TensorInfo], qconfig: dict[str, Any]
) -> Iterator[AwqWeight | NotDecoded]:
    """Every `x.qweight` packed along its output axis, with its zeros and scales."""
    for name, qweight in by_name.items():
        if not name.endswith(".qweight"):
            continue
        stem = name.removesuffix(".qweight")
        qzeros, scales = (by_name.get(f"{stem}.{p}") for p in ("qzeros", "scales"))
        if qzeros is None or scales is None or qweight.shape[1:] == scales.shape[1:]:
            continue  # no zeros and scales, or packed along the input axis: GPTQ's layout
        try:
            group_size = layout(qweight, qzeros, scales, qconfig)
        except LayoutError as exc:
            yield NotDecoded(qweight, f"{stem}.weight", f"{exc}; not dequantized", (qzeros, scales))
            continue
        yield AwqWeight(
            name=f"{stem}.weight",
            packed=qweight,
            companions=(qzeros, scales),
            shape=(qweight.shape[0], scales.shape[1]),
            stored_in_out=True,
            method=METHOD,
            bits=BITS,
            group_size=group_size,
        )


def layout(
    qweight: TensorInfo, qzeros: TensorInfo, scales: TensorInfo, qconfig: dict[str, Any]
) -> int:
    """The group size, after checking the shapes against AWQ's gemm layout and `config.json`."""
    version = str(qconfig.get("version", "gemm")).lower()
    if version != "gemm":
        raise LayoutError(f"AWQ version {version!r} (only gemm is decoded)")
    if qconfig.get("bits", BITS) != BITS or qconfig.get("zero_point", True) is False:
        raise LayoutError("AWQ other than 4 bits with zero points")
    if (qweight.dtype, qzeros.dtype) != ("I32", "I32") or scales.dtype not in ("F16", "BF16"):
        raise LayoutError(f"AWQ tensors of dtypes {qweight.dtype}, {qzeros.dtype}, {scales.dtype}")
    if not (len(qweight.shape) == len(qzeros.shape) == len(scales.shape) == 2):
        raise LayoutError("AWQ tensors that are not 2-D")
    rows, groups, cols = qweight.shape[0], scales.shape[0], scales.shape[1]
    packed = (qweight.shape[1], qzeros.shape[1])
    if packed != (cols // PER_WORD,) * 2 or cols % PER_WORD or qzeros.shape[0] != groups:
        raise LayoutError(
            f"AWQ qweight {list(qweight.shape)}, qzeros {list(qzeros.shape)} and scales "
            f"{list(scales.shape)} do not fit 8 columns per word"
        )
    group_size = int(qconfig.get("group_size", qconfig.get("q_group_size", -(-rows // groups))))
    if group_size == -1:
        group_size = rows
    if -(-rows // group_size) != groups:
        raise LayoutError(f"AWQ group size {group_size} gives not {groups} groups of {rows} rows")
    return group_size
