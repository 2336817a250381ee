"""What every weight source provides: a header-only list of tensors, and reading them one by one."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_audit.lazy import torch


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its header describes it; no weights are read to build this."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: F32, BF16, F8_E4M3, I8, ...
    file: str | None = None  # the file it lives in, for messages and for closing files early

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class SourceInfo:
    """Provenance recorded in every report."""

    id: str
    kind: str  # safetensors-file, folder, hub, module, state-dict, torch-bin
    revision: str | None = None
    files: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None  # the model's config.json, if there is one


class Source(abc.ABC):
    """A model's weights: list them from headers, then read them one by one, in any order."""

    info: SourceInfo
    # True when files are fetched and dropped as the scan goes: read them one file at a time.
    streamed: bool = False
    # True when `read_slice` and `read_rows` touch only the bytes of the part asked for, so a
    # matrix is read block by block; otherwise it is read once and sliced.
    partial_reads: bool = False

    @abc.abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every tensor, from the headers alone."""

    @abc.abstractmethod
    def read(self, tensor: TensorInfo) -> torch.Tensor:
        """The tensor's values, on the CPU, in its stored dtype."""

    def read_slice(self, tensor: TensorInfo, index: int | slice) -> torch.Tensor:
        """`tensor[index]` (one expert of a fused 3-D tensor, or a block of rows), on the CPU.

        Sources that can read part of a tensor override this; the fallback reads it whole.
        """
        return self.read(tensor)[index].clone()

    def read_rows(
        self, tensor: TensorInfo, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        """Rows [start, stop) of a 2-D tensor, or of expert `expert`'s matrix of a 3-D one."""
        if expert is None:
            return self.read_slice(tensor, slice(start, stop))
        return self.read_slice(tensor, expert)[start:stop]

    def element_reader(
        self, tensor: TensorInfo, *, expert: int | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Elements of a quantized tensor (or of expert `expert`'s matrix) decoded one by one at
        flat indices, for the trap shuffle; None where the type is only decoded in whole rows."""
        return None

    def plan_reads(self, tensors: list[TensorInfo]) -> None:  # noqa: B027 - optional hook
        """Told once, before reading, which tensors will be read (a tensor once per read)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Drop every open file."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
