"""bitsandbytes checkpoints (`quant_method: bitsandbytes`): 4-bit NF4/FP4 and LLM.int8().

4-bit: `x.weight` is uint8, two values per byte (the even element in the high nibble) of the
flattened (out, in) matrix; `x.weight.quant_map` holds the 16 code values (NF4 or FP4) and
`x.weight.absmax` one scale per block of `blocksize` values, so value i is
`quant_map[code_i] · absmax[i // blocksize]`. With double quantization (`compress_statistics`) the
absmax are themselves uint8 codes: `nested_quant_map[a_j] · nested_absmax[j // nested_blocksize] +
nested_offset`. The shape, block sizes and offset are JSON in the bytes of
`x.weight.quant_state.bitsandbytes__nf4` (or `__fp4`), which is read when the layers are planned.
As bitsandbytes' `functional.dequantize_4bit`, in float32 (it then rounds to the stored dtype).

8-bit: `x.weight` is int8 (out, in) and `x.SCB` float32 (out,), the absolute maximum of each row,
so the weight is `int8 · SCB / 127`, computed as bitsandbytes' `int8_vectorwise_dequant` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llm_audit.lazy import torch
from llm_audit.quant.base import LayoutError, NotDecoded, QuantizedWeight, Reader
from llm_audit.sources.base import Source, TensorInfo
from llm_audit.spectral.esd import Gather

METHOD = "bitsandbytes"
STATE = ".quant_state.bitsandbytes__"
INT8_SCALE = 7.874015718698502e-3  # 1/127 as bitsandbytes multiplies by it
STATE_BYTES = 1 << 16  # a quant_state is a few hundred bytes of JSON; more is not one


@dataclass(frozen=True)
class Bnb4bitWeight(QuantizedWeight):
    """A 4-bit weight (NF4 or FP4), double-quantized when `nested` is set."""

    quant_type: str  # nf4 or fp4
    nested_blocksize: int | None
    nested_offset: float

    @property
    def dtype(self) -> str:
        return self.quant_type.upper()

    def rows(
        self, source: Source, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        cols = self.shape[1]
        first, last = start * cols, stop * cols  # flat elements [first, last)
        packed = source.read_rows(self.packed, first // 2, -(-last // 2)).reshape(-1)
        codes = torch.stack((packed >> 4, packed & 15), dim=-1).reshape(-1).to(torch.int64)
        codes = codes[first % 2 : first % 2 + last - first]
        assert self.group_size is not None
        b0, b1 = first // self.group_size, (last - 1) // self.group_size + 1
        absmax = self._absmax(source, b0, b1)
        block = torch.arange(first, last) // self.group_size - b0
        table = source.read(self.companions[0]).to(torch.float32)
        return (table[codes] * absmax[block]).reshape(stop - start, cols)

    def _absmax(self, source: Source, b0: int, b1: int) -> torch.Tensor:
        """The float32 scales of blocks [b0, b1), decoded from their codes when nested."""
        absmax = source.read_rows(self.companions[1], b0, b1)
        if self.nested_blocksize is None:
            return absmax.to(torch.float32)
        table, scales = (source.read(t).to(torch.float32) for t in self.companions[2:])
        outer = torch.arange(b0, b1) // self.nested_blocksize
        return table[absmax.to(torch.int64)] * scales[outer] + self.nested_offset

    def element_reader(self, source: Source, *, expert: int | None = None) -> Gather:
        packed = source.read(self.packed).reshape(-1)
        table = source.read(self.companions[0]).to(torch.float32)
        assert self.group_size is not None
        absmax = self._absmax(source, 0, self.companions[1].shape[0])
        group_size = self.group_size

        def gather(index: torch.Tensor) -> torch.Tensor:
            index = index.to(torch.int64)
            byte = packed.index_select(0, index >> 1).to(torch.int64)
            code = (byte >> (4 - ((index & 1) << 2))) & 15  # even elements in the high nibble
            return table[code] * absmax.index_select(0, index // group_size)

        return gather


@dataclass(frozen=True)
class Int8Weight(QuantizedWeight):
    """An LLM.int8() weight with its per-row absolute maxima `SCB`."""

    @property
    def dtype(self) -> str:
        return "INT8"

    def rows(
        self, source: Source, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        values = source.read_rows(self.packed, start, stop).to(torch.float32)
        scb = source.read_rows(self.companions[0], start, stop).to(torch.float32)
        return values.mul_(scb.unsqueeze(1)).mul_(INT8_SCALE)

    def element_reader(self, source: Source, *, expert: int | None = None) -> Gather:
        values = source.read(self.packed).reshape(-1)
        scb = source.read(self.companions[0]).to(torch.float32)
        cols = self.shape[1]

        def gather(index: torch.Tensor) -> torch.Tensor:
            index = index.to(torch.int64)
            v = values.index_select(0, index).to(torch.float32)
            return v.mul_(scb.index_select(0, index // cols)).mul_(INT8_SCALE)

        return gather


def find(
    by_name: dict[str, TensorInfo], qconfig: dict[str, Any], read: Reader | None
) -> Iterator[QuantizedWeight | NotDecoded]:
    """Every 4-bit weight with its quant_state, and every int8 weight with its SCB."""
    states_of = _states_by_weight(by_name)
    for name, weight in by_name.items():
        stem = name.removesuffix(".weight")
        if name.endswith(".weight") and weight.dtype == "I8" and stem + ".SCB" in by_name:
            scb = by_name[stem + ".SCB"]
            extra = tuple(t for n in (stem + ".weight_format",) if (t := by_name.get(n)))
            if len(weight.shape) != 2 or scb.shape != weight.shape[:1]:
                yield NotDecoded(weight, name, "bitsandbytes int8 weights whose SCB is not one "
                                 "scale per row; not dequantized", (scb, *extra))  # fmt: skip
                continue
            yield Int8Weight(name, weight, (scb,), weight.shape, False, METHOD, 8, None)
            continue
        states = states_of.get(name, [])
        if weight.dtype != "U8" or len(states) != 1:
            continue
        parts = {p: by_name.get(f"{name}.{p}") for p in PARTS}
        companions = tuple(t for t in (*parts.values(), *states) if t is not None)
        try:
            yield four_bit(name, weight, parts, states[0], read)
        except LayoutError as exc:
            yield NotDecoded(weight, name, f"{exc}; not dequantized", companions)


PARTS = ("quant_map", "absmax", "nested_quant_map", "nested_absmax")


def _states_by_weight(by_name: dict[str, TensorInfo]) -> dict[str, list[TensorInfo]]:
    """The quant_state tensors (`NAME.quant_state.*`) of every NAME, in one pass over the names:
    searching all names for each weight took minutes on a header of 100 000 tensors."""
    states: dict[str, list[TensorInfo]] = {}
    for n, t in by_name.items():
        at = n.find(STATE)
        while at >= 0:
            states.setdefault(n[:at], []).append(t)
            at = n.find(STATE, at + 1)
    return states


def four_bit(
    name: str,
    weight: TensorInfo,
    parts: dict[str, TensorInfo | None],
    state: TensorInfo,
    read: Reader | None,
) -> Bnb4bitWeight:
    """The 4-bit weight that `state` (read now: its shape is in there) describes."""
    if read is None:
        raise LayoutError("bitsandbytes 4-bit weights, whose shape is in a quant_state not read")
    if state.numel > STATE_BYTES or state.dtype != "U8":
        raise LayoutError(f"bitsandbytes quant_state {state.name} that is not short JSON bytes")
    try:
        info = json.loads(bytes(read(state).tolist()).decode("utf-8"))
        shape = tuple(int(d) for d in info["shape"])
        blocksize, quant_type = int(info["blocksize"]), str(info["quant_type"])
        nested = info.get("nested_blocksize")
        offset = float(info.get("nested_offset", 0.0))
    except (ValueError, KeyError, TypeError):
        raise LayoutError(f"bitsandbytes quant_state {state.name} that is not valid") from None
    quant_map, absmax = parts["quant_map"], parts["absmax"]
    if quant_map is None or absmax is None or len(shape) != 2 or blocksize <= 0:
        raise LayoutError("bitsandbytes 4-bit weights without quant_map and absmax")
    numel = shape[0] * shape[1]
    if weight.numel != -(-numel // 2) or absmax.numel != -(-numel // blocksize):
        raise LayoutError(f"bitsandbytes 4-bit tensors that do not hold a {list(shape)} matrix")
    tables: tuple[TensorInfo, ...] = ()
    if nested is not None:
        found = [parts["nested_quant_map"], parts["nested_absmax"]]
        tables = tuple(t for t in found if t is not None)
        if len(tables) != 2 or absmax.dtype != "U8":
            raise LayoutError("double-quantized bitsandbytes weights without nested tensors")
    return Bnb4bitWeight(
        name=name,
        packed=weight,
        companions=(quant_map, absmax, *tables),
        shape=shape,
        stored_in_out=False,
        method=METHOD,
        bits=4,
        group_size=blocksize,
        quant_type=quant_type,
        nested_blocksize=None if nested is None else int(nested),
        nested_offset=offset,
    )
