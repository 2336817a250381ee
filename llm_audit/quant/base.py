"""What every quantized weight provides: its shape as a float matrix, and float32 rows on demand.

A quantized weight is stored in several tensors (packed integers, scales, zero points, ...). It is
never dequantized whole: `rows` decodes only the stored rows asked for (the spectra read a matrix
in row blocks of about 16 MiB), and `element_reader` decodes single elements where they are
stored, for the trap shuffle, which reads from all over the matrix. So a quantized vocabulary
matrix costs its packed bytes plus one block of float32, never a float copy of its own size.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from llm_audit.lazy import torch
from llm_audit.sources.base import Source, TensorInfo
from llm_audit.spectral.esd import Gather

WORD_BITS = 32  # GPTQ and AWQ pack integers into int32 words

Reader: TypeAlias = "Callable[[TensorInfo], torch.Tensor]"  # stored values (Source.read)


@dataclass(frozen=True)
class QuantizedWeight(abc.ABC):
    """One weight matrix (or fused 3-D expert tensor) stored quantized.

    `shape` is that of the dequantized tensor as stored, (rows, cols) or (experts, rows, cols);
    `stored_in_out` says that its rows are input features (GPTQ and AWQ store W transposed).
    """

    name: str  # the weight it stands for: `...q_proj.weight`, `...experts.gate_up_proj`
    packed: TensorInfo  # the tensor of quantized values, which names its file
    companions: tuple[TensorInfo, ...]  # scales, zero points, ...: read with it
    shape: tuple[int, ...]
    stored_in_out: bool
    method: str  # `quant_method` as transformers spells it: mxfp4, gptq, awq, bitsandbytes
    bits: int
    group_size: int | None  # values sharing one scale; None: one scale per row

    @property
    def dtype(self) -> str:
        """The name that stands for a dtype in records: `MXFP4`, `GPTQ_INT4`, `NF4`, ..."""
        return f"{self.method.upper()}_INT{self.bits}"

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        return (self.packed, *self.companions)

    def describe(self) -> dict[str, Any]:
        """What a layer record says was dequantized."""
        return {"method": self.method, "bits": self.bits, "group_size": self.group_size}

    def as_tensor(self) -> TensorInfo:
        """The dequantized weight as a tensor header (its name, shape, dtype, the packed file)."""
        return TensorInfo(self.name, self.shape, self.dtype, self.packed.file)

    @abc.abstractmethod
    def rows(
        self, source: Source, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        """Stored rows [start, stop) of the dequantized matrix (of expert `expert`), float32."""

    def element_reader(self, source: Source, *, expert: int | None = None) -> Gather | None:
        """The dequantized elements at flat stored indices, for the trap shuffle; None where
        elements are only decoded in whole rows."""
        return None


@dataclass(frozen=True)
class NotDecoded:
    """A tensor that looks quantized in a layout with no decoder here: listed, with the reason,
    under the name of the weight it stands for, as `unsupported_quantization`."""

    packed: TensorInfo
    name: str
    reason: str
    companions: tuple[TensorInfo, ...] = ()


class LayoutError(ValueError):
    """Raised by a format's layout check; `find` turns it into a `NotDecoded` entry."""


def unsigned(words: torch.Tensor) -> torch.Tensor:
    """int32 words as their unsigned values, in int64."""
    return words.to(torch.int64) & 0xFFFFFFFF


def unpack_last(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers packed along the last axis of int32 `words`, as int64 (..., 32 * n / bits).

    Values are read from the words as one little-endian bit stream: value j occupies bits
    [j·bits, (j+1)·bits), word k bits [32k, 32k+32). That is GPTQ's packing for 2, 4 and 8 bits
    (whole values per word) and for 3 bits (32 values in 3 words, values 10 and 21 split across
    two words).
    """
    w = unsigned(words)
    w = w.reshape(*w.shape[:-1], -1, bits)  # every `bits` words hold 32 values
    position = torch.arange(WORD_BITS) * bits
    word, offset = position // WORD_BITS, position % WORD_BITS
    spill = (offset + bits - WORD_BITS).clamp_min(0)  # bits that continue in the next word
    low = w[..., word] >> offset
    high = (w[..., (word + 1).clamp_max(bits - 1)] & ((1 << spill) - 1)) << (WORD_BITS - offset)
    values = (low | high) & ((1 << bits) - 1)
    return values.reshape(*w.shape[:-2], -1)


def bits_at(
    flat: torch.Tensor, word: torch.Tensor, offset: torch.Tensor, bits: int, stride: int
) -> torch.Tensor:
    """The `bits`-bit integers starting `offset` bits into the int32 words `flat[word]`, a value
    that runs past its word continuing in `flat[word + stride]` (the next word of its stream)."""
    low = unsigned(flat.index_select(0, word)) >> offset
    spill = (offset + bits - WORD_BITS).clamp_min(0)
    if not bool((spill > 0).any()):
        return low & ((1 << bits) - 1)
    after = (word + stride).clamp_max(flat.numel() - 1)
    high = (unsigned(flat.index_select(0, after)) & ((1 << spill) - 1)) << (WORD_BITS - offset)
    return (low | high) & ((1 << bits) - 1)


def read_all(source: Source, tensor: TensorInfo, expert: int | None) -> torch.Tensor:
    """A whole companion tensor (or expert `expert`'s part of it), as stored."""
    return source.read(tensor) if expert is None else source.read_slice(tensor, expert)
