"""In-memory weights: a `torch.nn.Module` or a state dict, e.g. from inside a training loop."""

from __future__ import annotations

from collections.abc import Mapping

from llm_audit.lazy import torch
from llm_audit.sources.base import Source, SourceInfo, TensorInfo

_DTYPE_NAMES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}  # fmt: skip


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return _DTYPE_NAMES.get(name, name)


class StateDictSource(Source):
    """Tensors held in memory. Tensors that share storage (tied weights) are listed once.

    A part of a tensor is a view of it: reading rows costs nothing, so reads are "partial".
    """

    partial_reads = True

    def __init__(self, state: Mapping[str, torch.Tensor], info: SourceInfo):
        self.info = info
        self._state: dict[str, torch.Tensor] = {}
        seen: set[tuple[int, tuple[int, ...]]] = set()
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            key = (value.data_ptr(), tuple(value.shape))
            if value.numel() and key in seen:
                continue  # a tied copy of a tensor already listed
            seen.add(key)
            self._state[name] = value.detach()

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> StateDictSource:
        name = type(module).__name__
        config = getattr(module, "config", None)
        to_dict = getattr(config, "to_dict", None)
        as_dict = to_dict() if callable(to_dict) else None
        return cls(module.state_dict(), SourceInfo(id=name, kind="module", config=as_dict))

    def tensors(self) -> list[TensorInfo]:
        return [
            TensorInfo(name, tuple(t.shape), dtype_name(t.dtype)) for name, t in self._state.items()
        ]

    def read(self, tensor: TensorInfo) -> torch.Tensor:
        return self._state[tensor.name]

    def read_slice(self, tensor: TensorInfo, index: int | slice) -> torch.Tensor:
        return self._state[tensor.name][index]

    def read_rows(
        self, tensor: TensorInfo, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        values = self._state[tensor.name]
        return (values if expert is None else values[expert])[start:stop]
