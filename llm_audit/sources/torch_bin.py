"""Legacy pickled `.bin` checkpoints, read only when the user opts in.

Even then they go through `torch.load(weights_only=True)`, which refuses any pickle that would build
an object other than tensors and plain containers, so no code from the file is run.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from llm_audit.errors import CheckpointFormatError, SourceNotFoundError
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.sources.memory import dtype_name

BIN_INDEX_NAME = "pytorch_model.bin.index.json"


def bin_files(folder: Path) -> list[Path]:
    index = folder / BIN_INDEX_NAME
    if index.exists():
        try:
            shards = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise CheckpointFormatError("not a valid index", path=str(index)) from None
        files = [folder / str(s) for s in shards]
        for f in files:
            if not f.exists():
                raise SourceNotFoundError(f"names missing shard {f.name!r}", path=str(index))
        return files
    return sorted(folder.glob("*.bin"))


def _load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointFormatError(
            f"refused by torch.load(weights_only=True): {first}", path=str(path)
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointFormatError(
            f"not a readable torch checkpoint ({exc})", path=str(path)
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointFormatError("does not hold a state dict", path=str(path))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


class TorchBinSource(Source):
    """Pickled shards, loaded one shard at a time (memory-mapped where the format allows)."""

    def __init__(self, files: list[Path], info: SourceInfo):
        self.info = info
        self._tensors: list[TensorInfo] = []
        for path in files:
            state = _load(path)
            self._tensors += [
                TensorInfo(k, tuple(v.shape), dtype_name(v.dtype), str(path))
                for k, v in state.items()
            ]
        self._loaded: tuple[str, dict[str, Any]] | None = None

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def read(self, tensor: TensorInfo) -> torch.Tensor:
        assert tensor.file is not None
        if self._loaded is None or self._loaded[0] != tensor.file:
            self._loaded = (tensor.file, _load(Path(tensor.file)))
        return self._loaded[1][tensor.name]

    def close(self) -> None:
        self._loaded = None
