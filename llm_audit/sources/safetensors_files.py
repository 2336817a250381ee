"""Safetensors checkpoints: one file, or shards listed by `model.safetensors.index.json`.

Headers are parsed and checked here before `safe_open` sees the file, so a truncated shard, a
malformed header or offsets past the end of the file become one clear `CheckpointFormatError`
naming the file. Weights are then read through `safe_open` memory maps, one tensor at a time: the
file is opened for each tensor (about 60 µs) and its handle closed at once, so the mapping lives
exactly as long as the tensor does and the pages of analyzed tensors leave memory with them.
Holding a handle per shard instead keeps every page read so far resident until the shard is done.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from llm_audit.errors import CheckpointFormatError, SourceNotFoundError
from llm_audit.lazy import torch
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.untrusted import MAX_NAME_CHARS, check_model_file, parse_json, read_json

# Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; refused before it is read
INT64_MAX = 2**63 - 1
INDEX_NAME = "model.safetensors.index.json"


def read_header(path: Path) -> list[TensorInfo]:
    """The tensors a safetensors file declares, after checking that the header is consistent.

    The checks are those `safe_open` makes, done first so that a bad file is refused with one
    message naming it, before any weights are read. A header over `MAX_HEADER_BYTES` is refused
    from its 8-byte length alone. Raises `CheckpointFormatError` or `SourceNotFoundError`.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointFormatError("file is too short to be safetensors", path=str(path))
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointFormatError(  # the length is not shown: never echo file bytes
                    f"the header length in its first 8 bytes is over the {MAX_HEADER_BYTES} "
                    "byte limit; the file is corrupt or not safetensors",
                    path=str(path),
                )
            if 8 + length > size:
                raise CheckpointFormatError(
                    f"the header runs past the end of the file ({size} bytes); it is truncated",
                    path=str(path),
                )
            raw = fh.read(length)
    except OSError as exc:
        raise SourceNotFoundError(f"cannot read ({exc.strerror})", path=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError(
            f"header is not valid UTF-8 (byte {exc.start}); the file is corrupt", path=str(path)
        ) from None
    header = parse_json(text, what="header", path=path)
    if not isinstance(header, dict):
        raise CheckpointFormatError("header is not a JSON object", path=str(path))
    return _check_entries(header, data_size=size - 8 - length, path=path)


def _show(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut short: a hostile header can hold a shape of a million dimensions."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_entries(header: dict[str, Any], *, data_size: int, path: Path) -> list[TensorInfo]:
    tensors = []
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise CheckpointFormatError(
                    "__metadata__ must map strings to strings", path=str(path)
                )
            continue
        if len(name) > MAX_NAME_CHARS or "\0" in name:
            raise CheckpointFormatError(
                f"a tensor name is over {MAX_NAME_CHARS} characters long or holds NUL; "
                "the file is corrupt or hostile",
                path=str(path),
                tensor=name,
            )
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointFormatError(
                "malformed header entry: expected exactly dtype, shape and data_offsets",
                path=str(path),
                tensor=name,
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise CheckpointFormatError(
                f"unknown dtype {_show(dtype)} (known: {', '.join(DTYPE_SIZES)})",
                path=str(path),
                tensor=name,
            )
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise CheckpointFormatError(
                f"invalid shape {_show(shape)}: expected a list of counts",
                path=str(path),
                tensor=name,
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise CheckpointFormatError(
                f"invalid offsets {_show(offsets)}: expected [begin, end] byte counts",
                path=str(path),
                tensor=name,
            )
        numel = _checked_numel(shape, path=path, tensor=name)
        begin, end = offsets
        if end > data_size:
            raise CheckpointFormatError(
                f"data ends at byte {end} but the file holds {data_size} data bytes; "
                "the file is truncated or the header is wrong",
                path=str(path),
                tensor=name,
            )
        if begin > end:
            raise CheckpointFormatError(
                f"offsets [{begin}, {end}] end before they begin", path=str(path), tensor=name
            )
        if end - begin != numel * DTYPE_SIZES[dtype]:
            raise CheckpointFormatError(
                f"offsets span {end - begin} bytes but shape {_show(shape)} of {dtype} needs "
                f"{numel * DTYPE_SIZES[dtype]}",
                path=str(path),
                tensor=name,
            )
        spans.append((begin, end, name))
        tensors.append(TensorInfo(name, tuple(shape), dtype, str(path)))
    _check_coverage(spans, data_size=data_size, path=path)
    return tensors


def _checked_numel(shape: list[int], *, path: Path, tensor: str) -> int:
    """The element count, refusing any running product past int64 as safetensors itself does."""
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > INT64_MAX or dim > INT64_MAX:
            raise CheckpointFormatError(
                f"shape {_show(shape)} has more elements than an int64 can count",
                path=str(path),
                tensor=tensor,
            )
    return numel


def _check_coverage(spans: list[tuple[int, int, str]], *, data_size: int, path: Path) -> None:
    """Tensors must tile the data exactly (no overlap, gap, trailing bytes), as `safe_open` asks."""
    spans.sort()
    covered, previous = 0, ""
    for begin, end, name in spans:
        if begin < covered:
            raise CheckpointFormatError(
                f"data overlaps tensor {_show(previous)}", path=str(path), tensor=name
            )
        if begin > covered:
            raise CheckpointFormatError(
                f"data bytes {covered} to {begin} belong to no tensor; the header is wrong",
                path=str(path),
                tensor=name,
            )
        covered, previous = end, name
    if covered != data_size:
        raise CheckpointFormatError(
            f"{data_size - covered} data bytes after the last tensor belong to none; "
            "the file was altered or the header is wrong",
            path=str(path),
        )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files that make up the model in a Hub-layout folder, in index order."""
    index = folder / INDEX_NAME
    if index.exists():
        return files_from_index(index, suffix=".safetensors")
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    return sorted(folder.glob("*.safetensors"))


def files_from_index(index: Path, *, suffix: str) -> list[Path]:
    """The shards an index's `weight_map` names, in order, each checked to lie in its folder.

    Raises `CheckpointFormatError` for a malformed index or a shard name that leaves the folder
    or is not a `suffix` file, and `SourceNotFoundError` for a shard that is missing.
    """
    check_model_file(index, index.parent)
    data = read_json(
        index, what="index", fix="download the checkpoint again", limit=MAX_HEADER_BYTES,
        error=CheckpointFormatError, missing=SourceNotFoundError,
    )  # fmt: skip
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointFormatError(
            "not a valid index: expected a JSON object with a 'weight_map' mapping",
            path=str(index),
        )
    checked: dict[str, Path] = {}  # by the name as written: each shard checked once, in order
    for tensor, shard in weight_map.items():
        if not (isinstance(shard, str) and shard in checked):
            checked[shard] = _shard_path(index, tensor, shard, suffix=suffix)
    return list(dict.fromkeys(checked.values()))


def _shard_path(index: Path, tensor: str, shard: object, *, suffix: str) -> Path:
    if not isinstance(shard, str) or not shard.endswith(suffix):
        raise CheckpointFormatError(
            f"names {_show(shard)} as the shard of this tensor, which is not a {suffix} file name",
            path=str(index),
            tensor=tensor,
        )
    # Checked on the name, not the resolved path: Hub caches link shards to blobs elsewhere.
    relative = os.path.normpath(shard)
    target = index.parent / relative
    if os.path.isabs(relative) or relative.split(os.sep)[0] == "..":
        raise CheckpointFormatError(
            f"shard {_show(shard)} lies outside the model folder", path=str(index), tensor=tensor
        )
    if os.path.lexists(target) and not target.exists():
        raise SourceNotFoundError(
            f"shard {_show(shard)} is a broken or looping symbolic link; "
            "download the complete checkpoint",
            path=str(index),
        )
    if not target.exists():
        raise SourceNotFoundError(
            f"names shard {_show(shard)} for tensor {_show(tensor)}, but that file is missing; "
            "download the complete checkpoint",
            path=str(index),
        )
    if not target.is_file():
        raise CheckpointFormatError(
            f"shard {_show(shard)} is not a file", path=str(index), tensor=tensor
        )
    return target


class SafetensorsSource(Source):
    """Tensors of one or more safetensors files, memory-mapped, read one at a time."""

    partial_reads = True

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
        return read_tensor(tensor)

    def read_slice(self, tensor: TensorInfo, index: int | slice) -> torch.Tensor:
        """Only the bytes of `tensor[index]`, through `get_slice`."""
        return read_tensor(tensor, index)

    def read_rows(
        self, tensor: TensorInfo, start: int, stop: int, *, expert: int | None = None
    ) -> torch.Tensor:
        """Only the bytes of those rows, through `get_slice`."""
        rows = slice(start, stop)
        return read_tensor(tensor, rows if expert is None else (expert, rows))


def read_tensor(
    tensor: TensorInfo, index: int | slice | tuple[int, slice] | None = None
) -> torch.Tensor:
    """`tensor` (or `tensor[index]`) through a `safe_open` map that lives only as long as it."""
    assert tensor.file is not None
    try:
        with safe_open(tensor.file, framework="pt") as handle:
            if index is None:
                return handle.get_tensor(tensor.name)
            return handle.get_slice(tensor.name)[index]
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointFormatError(
            f"cannot read tensor ({exc}); the file may have changed or be truncated",
            path=tensor.file,
            tensor=tensor.name,
        ) from None
