"""Safetensors checkpoints: one file, or shards listed by `model.safetensors.index.json`.

Headers are parsed and checked here before `safe_open` sees the file, so a truncated shard, a
malformed header or offsets past the end of the file become one clear `CheckpointFormatError`
naming the file. Weights are then read through `safe_open` memory maps, one tensor at a time: the
file is opened for each tensor (about 60 µs) and its handle closed at once, so the mapping lives
exactly as long as the tensor does and the pages of analyzed tensors leave memory with them.
Holding a handle per shard instead keeps every page read so far resident until the shard is done.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llm_audit.errors import CheckpointFormatError, SourceNotFoundError
from llm_audit.sources.base import Source, SourceInfo, TensorInfo

# Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; refused before it is read
INDEX_NAME = "model.safetensors.index.json"


def read_header(path: Path) -> list[TensorInfo]:
    """The tensors a safetensors file declares, after checking that the header is consistent."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointFormatError("file is too short to be safetensors", path=str(path))
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointFormatError(
                    f"header claims {length} bytes, over the {MAX_HEADER_BYTES} byte limit",
                    path=str(path),
                )
            if 8 + length > size:
                raise CheckpointFormatError(
                    f"header claims {length} bytes but the file has {size}; it is truncated",
                    path=str(path),
                )
            raw = fh.read(length)
    except OSError as exc:
        raise SourceNotFoundError(f"cannot read ({exc.strerror})", path=str(path)) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointFormatError(
            "header is not valid JSON; the file is corrupt", path=str(path)
        ) from None
    if not isinstance(header, dict):
        raise CheckpointFormatError("header is not a JSON object", path=str(path))
    return _check_entries(header, data_size=size - 8 - length, path=path)


def _check_entries(header: dict[str, Any], *, data_size: int, path: Path) -> list[TensorInfo]:
    tensors = []
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointFormatError("malformed header entry", path=str(path), tensor=name)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointFormatError(
                f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)})",
                path=str(path),
                tensor=name,
            )
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise CheckpointFormatError(f"invalid shape {shape!r}", path=str(path), tensor=name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise CheckpointFormatError(f"invalid offsets {offsets!r}", path=str(path), tensor=name)
        info = TensorInfo(name, tuple(shape), dtype, str(path))
        begin, end = offsets
        if end > data_size:
            raise CheckpointFormatError(
                f"data ends at byte {end} but the file holds {data_size} data bytes; "
                "the file is truncated or the header is wrong",
                path=str(path),
                tensor=name,
            )
        if end - begin != info.numel * DTYPE_SIZES[dtype]:
            raise CheckpointFormatError(
                f"offsets span {end - begin} bytes but shape {shape} of {dtype} needs "
                f"{info.numel * DTYPE_SIZES[dtype]}",
                path=str(path),
                tensor=name,
            )
        spans.append((begin, end, name))
        tensors.append(info)
    spans.sort()
    for (_, prev_end, prev), (begin, _, name) in itertools.pairwise(spans):
        if begin < prev_end:
            raise CheckpointFormatError(
                f"data overlaps tensor {prev!r}", path=str(path), tensor=name
            )
    return tensors


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files that make up the model in a Hub-layout folder, in index order."""
    index = folder / INDEX_NAME
    if index.exists():
        return _files_from_index(index)
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    return sorted(folder.glob("*.safetensors"))


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointFormatError(
            "not a valid index: expected a JSON object with a 'weight_map' mapping",
            path=str(index),
        ) from None
    files: list[Path] = []
    for tensor, shard in weight_map.items():
        # Checked on the name, not the resolved path: Hub caches link shards to blobs elsewhere.
        relative = os.path.normpath(str(shard))
        target = index.parent / relative
        if os.path.isabs(relative) or relative.split(os.sep)[0] == "..":
            raise CheckpointFormatError(
                f"shard {shard!r} lies outside the model folder", path=str(index), tensor=tensor
            )
        if not target.exists():
            raise SourceNotFoundError(
                f"names shard {shard!r} for tensor {tensor!r}, but that file is missing; "
                "download the complete checkpoint",
                path=str(index),
            )
        if target not in files:
            files.append(target)
    return files


class SafetensorsSource(Source):
    """Tensors of one or more safetensors files, memory-mapped, read one at a time."""

    def __init__(self, files: list[Path], info: SourceInfo):
        self.info = info
        self._tensors: list[TensorInfo] = []
        seen: dict[str, str] = {}
        for path in files:
            for t in read_header(path):
                if t.name in seen:
                    raise CheckpointFormatError(
                        f"tensor also defined in {seen[t.name]}", path=str(path), tensor=t.name
                    )
                seen[t.name] = str(path)
                self._tensors.append(t)

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def read(self, tensor: TensorInfo) -> torch.Tensor:
        assert tensor.file is not None
        try:
            with safe_open(tensor.file, framework="pt") as handle:
                return handle.get_tensor(tensor.name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointFormatError(
                f"cannot read tensor ({exc}); the file may have changed or be truncated",
                path=tensor.file,
                tensor=tensor.name,
            ) from None
