"""GGUF files (llama.cpp): tensors listed from the header, read and dequantized one at a time.

GGUF lists dimensions innermost first (ggml's `ne`: in_features, then out_features, then experts);
shapes here are reversed to the (experts, out, in) order of PyTorch checkpoints. Float tensors
(F32, F16, BF16) are read as they are; quantized ones (Q8_0, Q4_K, ...) are dequantized to float32
by `gguf.quants.dequantize` (numpy, slow on large models), and types it cannot decode are left to
the planner to report as `unsupported_dtype`. The file is memory-mapped, so a tensor's pages are
read only when the tensor is. Every quantization block (32 or 256 values) lies within one row, so
a block of rows is dequantized alone: a matrix is read row block by row block, never whole.

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
import torch

from llm_audit.errors import CheckpointFormatError, ConfigError
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.spectral.esd import Gather

FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


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
    """The tensors of one GGUF file, memory-mapped."""

    partial_reads = True

    def __init__(self, path: Path, info: SourceInfo):
        try:
            from gguf import GGUFReader
        except ImportError:
            raise ConfigError(
                "reading GGUF files needs the gguf package; pip install gguf", path=str(path)
            ) from None
        self.info = info
        self._path = path
        try:
            reader: Any = GGUFReader(path)
        except (ValueError, OSError, IndexError, KeyError) as exc:
            raise CheckpointFormatError(
                f"cannot be read as GGUF ({exc}); it is truncated or corrupt, download it again",
                path=str(path),
            ) from None
        # The reader is not kept: its metadata (a 262k-token vocabulary for Gemma 3) is Python
        # objects, ~500 MB of Gemma-3-270M's header; the tensors are views of the memory map.
        self._raw = {t.name: t for t in reader.tensors}
        self._check_extent()
        arch = reader.get_field("general.architecture")
        try:
            arch_name = arch.contents() if arch is not None else None
        except (UnicodeDecodeError, ValueError, IndexError):
            raise CheckpointFormatError(
                "general.architecture is not valid UTF-8 text; the file is corrupt",
                path=str(path),
            ) from None
        self.info.config = {"model_type": "gguf", "gguf_architecture": arch_name}

    def _check_extent(self) -> None:
        """Refuse a file whose tensor data ends past the end of the file (a truncated download)."""
        size = self._path.stat().st_size
        for t in self._raw.values():
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise CheckpointFormatError(
                    f"tensor {t.name!r} ends at byte {end} but the file has {size} bytes; "
                    "it is truncated, download it again",
                    path=str(self._path),
                )

    def tensors(self) -> list[TensorInfo]:
        return [
            TensorInfo(
                name=t.name,
                shape=tuple(int(d) for d in reversed(t.shape.tolist())),
                dtype=t.tensor_type.name,
                file=str(self._path),
            )
            for t in self._raw.values()
        ]

    def read(self, tensor: TensorInfo) -> torch.Tensor:
        raw = self._raw[tensor.name]
        return self._decode(raw.data, raw.tensor_type, tensor)

    def read_slice(self, tensor: TensorInfo, index: int | slice) -> torch.Tensor:
        """One expert of a stacked `ffn_*_exps` tensor, or a block of rows; only those decoded."""
        raw = self._raw[tensor.name]
        return self._decode(raw.data[index], raw.tensor_type, tensor)

    def read_rows(
        self, tensor: TensorInfo, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        raw = self._raw[tensor.name]
        data = raw.data if expert is None else raw.data[expert]
        return self._decode(data[start:stop], raw.tensor_type, tensor)

    def element_reader(self, tensor: TensorInfo, *, expert: int | None = None) -> Gather | None:
        raw = self._raw[tensor.name]
        if raw.tensor_type.name not in _ELEMENT_TYPES:
            return None
        block_bytes, decode = _ELEMENT_TYPES[raw.tensor_type.name]
        data = raw.data if expert is None else raw.data[expert]
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

    def _decode(self, data: np.ndarray, qtype: Any, tensor: TensorInfo) -> torch.Tensor:
        name = qtype.name
        if name in FLOAT_TYPES:
            if name == "BF16":  # numpy has no bfloat16: the reader yields raw uint8 bytes
                raw = torch.from_numpy(np.ascontiguousarray(data).view(np.int16))
                return raw.view(torch.bfloat16).clone()
            return torch.from_numpy(np.array(data))
        from gguf import quants

        try:
            values = quants.dequantize(np.asarray(data), qtype)
        except NotImplementedError:
            raise CheckpointFormatError(
                f"GGUF type {name} cannot be dequantized by the gguf package",
                path=str(self._path),
                tensor=tensor.name,
            ) from None
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


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
