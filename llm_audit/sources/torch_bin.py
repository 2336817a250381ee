"""Legacy pickled `.bin` checkpoints, read only when the user opts in.

Even then they go through `torch.load(weights_only=True)`, which refuses any pickle that would build
an object other than tensors and plain containers, so no code from the file is run.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from llm_audit.errors import CheckpointFormatError
from llm_audit.lazy import torch
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.sources.memory import dtype_name
from llm_audit.sources.safetensors_files import files_from_index

BIN_INDEX_NAME = "pytorch_model.bin.index.json"


def bin_files(folder: Path) -> list[Path]:
    """The pickled shards of a Hub-layout folder: those its index names (checked), else `*.bin`."""
    index = folder / BIN_INDEX_NAME
    if index.exists():
        return files_from_index(index, suffix=".bin")
    return sorted(folder.glob("*.bin"))


def _load(path: Path) -> dict[str, Any]:
    try:
        # mmap needs the zip format of torch.save; legacy pickles are read whole, weights_only too.
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as exc:
        # torch's own message suggests loading with weights_only=False: never repeat that advice.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it calls {found[1]}" if found else "it holds objects other than tensors"
        raise CheckpointFormatError(
            f"refused by torch.load(weights_only=True): {what}, which could run code; "
            "do not load this file unsafely",
            path=str(path),
        ) from None
    except Exception as exc:  # any error from parsing untrusted bytes is the file's fault
        first = str(exc).strip().split("\n")[0].split(". ")[0][:200] or type(exc).__name__
        raise CheckpointFormatError(
            f"not a readable torch checkpoint ({first}); the file is corrupt", path=str(path)
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
