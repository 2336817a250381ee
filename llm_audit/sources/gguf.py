"""GGUF files (llama.cpp): tensors listed from the header, read and dequantized one at a time.

The header (metadata and tensor table) is read and checked by `gguf_header`, our own bounded
parser; the `gguf` package is used only to dequantize.

GGUF lists dimensions innermost first (ggml's `ne`: in_features, then out_features, then experts);
shapes here are reversed to the (experts, out, in) order of PyTorch checkpoints. Float tensors
(F32, F16, BF16) are read as they are; quantized ones (Q8_0, Q4_K, ...) are dequantized to float32
by `gguf.quants.dequantize` (numpy, slow on large models), and types it cannot decode are left to
the planner to report as `unsupported_dtype`. Every quantization block (32 or 256 values) lies
within one row, so a block of rows is dequantized alone: a matrix is read row block by row block,
never whole, and each read maps only the bytes of its rows (the map goes with the array, so a
scan's file pages stay those of the tensors in flight).

The trap shuffle reads elements from all over a matrix. For Q8_0 and Q4_0 (llama.cpp's usual types
for large embeddings) `element_reader` decodes each element where it is stored, from its block's
fp16 scale and its 8- or 4-bit integer: the same float32 as `gguf.quants.dequantize` (scale times
an integer below 2^8 is exact in float32), without the float copy, 3.8x (Q8_0) or 7.1x (Q4_0) the
stored size. Other types (k-quants, all small matrices in practice) fall back to that copy.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from llm_audit.errors import CheckpointFormatError
from llm_audit.lazy import torch
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.sources.gguf_header import GGUFTensor, parse_header
from llm_audit.spectral.esd import Gather

FLOAT_TYPES = ("F32", "F16", "BF16")
_NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
}  # else raw bytes


@cache
def dequantizable_types() -> frozenset[str]:
    """GGML type names that `gguf.quants.dequantize` turns into floats (empty without `gguf`)."""
    try:
        from gguf import quants
    except ImportError:
        return frozenset()
    traits = getattr(quants, "_type_traits", {})  # the registry `dequantize` dispatches on
    return frozenset(qtype.name for qtype in traits) | set(FLOAT_TYPES)


def is_gguf(path: Path) -> bool:
    """A `.gguf` name, or a file that starts with the GGUF magic bytes."""
    if path.suffix == ".gguf":
        return True
    with path.open("rb") as fh:
        return fh.read(4) == b"GGUF"


class GGUFSource(Source):
    """The tensors of one GGUF file; each read maps only the bytes of the rows it decodes."""

    partial_reads = True

    def __init__(self, path: Path, info: SourceInfo):
        self.info = info
        self._path = path
        self._file = path.open("rb")  # maps come from this handle: the file the header checked
        try:
            header = parse_header(self._file, str(path))
        except BaseException:
            self._file.close()
            raise
        self._raw = {t.name: t for t in header.tensors}
        arch = header.metadata.get("general.architecture")
        arch_name = arch if isinstance(arch, str) else None
        self.info.config = {"model_type": "gguf", "gguf_architecture": arch_name}

    def tensors(self) -> list[TensorInfo]:
        return [
            TensorInfo(
                name=t.name,
                shape=tuple(reversed(t.dims)),
                dtype=t.type_name,
                file=str(self._path),
            )
            for t in self._raw.values()
        ]

    def read(self, tensor: TensorInfo) -> torch.Tensor:
        raw = self._raw[tensor.name]
        return self._decode(self._rows(raw, 0, _outer(raw)), raw, tensor).reshape(_torch_shape(raw))

    def read_slice(self, tensor: TensorInfo, index: int | slice) -> torch.Tensor:
        """One expert of a stacked `ffn_*_exps` tensor, or a block of rows; only those decoded."""
        raw = self._raw[tensor.name]
        if len(raw.dims) < 2:
            return self.read(tensor)[index].clone()
        first = len(raw.dims) - 1  # the outermost axis, in PyTorch order the first
        picked = range(raw.dims[first])[index]
        per_item = _outer(raw) // raw.dims[first] if raw.dims[first] else 0
        if isinstance(picked, int):
            data = self._rows(raw, picked * per_item, per_item)
            return self._decode(data.reshape((*_torch_shape(raw)[1:-1], -1)), raw, tensor)
        if picked.step != 1:
            return self.read(tensor)[index].clone()
        count = len(picked)
        data = self._rows(raw, picked.start * per_item, count * per_item)
        return self._decode(data.reshape((count, *_torch_shape(raw)[1:-1], -1)), raw, tensor)

    def read_rows(
        self, tensor: TensorInfo, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        raw = self._raw[tensor.name]
        rows_per_expert = raw.dims[1] if len(raw.dims) > 1 else 1
        base = 0 if expert is None else expert * rows_per_expert
        start, stop, _ = slice(start, stop).indices(
            rows_per_expert if expert is not None else _outer(raw)
        )
        return self._decode(self._rows(raw, base + start, max(0, stop - start)), raw, tensor)

    def element_reader(self, tensor: TensorInfo, *, expert: int | None = None) -> Gather | None:
        raw = self._raw[tensor.name]
        if raw.type_name not in _ELEMENT_TYPES:
            return None
        block_bytes, decode = _ELEMENT_TYPES[raw.type_name]
        rows_per_expert = raw.dims[1] if len(raw.dims) > 1 else 1
        if expert is None:
            data = self._rows(raw, 0, _outer(raw))
        else:
            data = self._rows(raw, expert * rows_per_expert, rows_per_expert)
        with warnings.catch_warnings():  # the map is read-only, and only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            stored = torch.from_numpy(data).reshape(-1)
        scales = stored.view(-1, block_bytes)[:, :2].contiguous().view(torch.float16).reshape(-1)
        index_dtype = torch.int32 if stored.numel() < 2**31 else torch.int64

        def gather(index: torch.Tensor) -> torch.Tensor:
            block = index.to(index_dtype) >> BLOCK_BITS
            values = decode(stored, block * block_bytes + 2, index & (2**BLOCK_BITS - 1))
            return values.mul_(scales.index_select(0, block).float())

        return gather

    def close(self) -> None:
        self._file.close()

    def _rows(self, raw: GGUFTensor, first: int, count: int) -> np.ndarray:
        """Innermost rows [first, first + count) as stored (uint8 bytes, or the float dtype),
        shape (count, width), through a map of those bytes alone (dropped with the array)."""
        width = raw.dims[0] if raw.dims else 1
        dtype = _NUMPY_TYPES.get(raw.type_name)
        if dtype is None:
            dtype, width = np.dtype(np.uint8), raw.row_bytes
        nbytes = count * raw.row_bytes
        if nbytes == 0:
            return np.empty((count, width), dtype=dtype)
        data = np.memmap(
            self._file, dtype=np.uint8, mode="r", offset=raw.offset + first * raw.row_bytes,
            shape=(nbytes,),
        )  # fmt: skip
        return data.view(dtype).reshape(count, width)

    def _decode(self, data: np.ndarray, raw: GGUFTensor, tensor: TensorInfo) -> torch.Tensor:
        name = raw.type_name
        if name in FLOAT_TYPES:
            if name == "BF16":  # numpy has no bfloat16: the rows are raw bytes
                bits = torch.from_numpy(np.ascontiguousarray(data).view(np.int16))
                return bits.view(torch.bfloat16).clone()
            return torch.from_numpy(np.array(data))
        from gguf import GGMLQuantizationType, quants

        try:
            values = quants.dequantize(np.asarray(data), GGMLQuantizationType[name])
        except NotImplementedError:
            raise CheckpointFormatError(
                f"GGUF type {name} cannot be dequantized by the gguf package",
                path=str(self._path),
                tensor=tensor.name,
            ) from None
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _outer(raw: GGUFTensor) -> int:
    """The number of innermost rows: the product of every dimension but the first."""
    count = 1
    for d in raw.dims[1:]:
        count *= d
    return count


def _torch_shape(raw: GGUFTensor) -> tuple[int, ...]:
    return tuple(reversed(raw.dims))


def _q8_0(stored: torch.Tensor, first: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Each element's int8 as float32; `first` is its block's first integer byte."""
    return stored.index_select(0, first + within).view(torch.int8).float()


def _q4_0(stored: torch.Tensor, first: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Each element's nibble minus 8 as float32: elements 0-15 of a block are the low nibbles
    of its 16 bytes, 16-31 the high ones."""
    byte = stored.index_select(0, first + (within & 15)).to(within.dtype)
    return ((byte >> ((within >> 4) << 2)) & 15).sub_(8).float()


BLOCK_BITS = 5  # Q8_0 and Q4_0 blocks hold 32 = 2^5 elements, after a 2-byte fp16 scale
_ELEMENT_TYPES = {"Q8_0": (34, _q8_0), "Q4_0": (18, _q4_0)}  # bytes per block, integer decoder
