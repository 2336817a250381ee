"""`--stream`: audit a Hub model larger than free disk, one shard at a time.

Tensor headers come from the Hub without downloading the weights (`get_safetensors_metadata`
reads each shard's header with an HTTP range request). A shard is downloaded through the normal
cache when its first tensor is read and deleted as soon as its last tensor has been read, unless it
was already in the cache before the scan; the engine reads layers shard by shard for such a source,
so at most the shard being read and the next one are on disk.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from llm_audit.errors import CheckpointFormatError, SourceNotFoundError
from llm_audit.lazy import torch
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.sources.hub import download_file, hub_errors
from llm_audit.sources.safetensors_files import read_header, read_tensor
from llm_audit.untrusted import read_json, show


class StreamingHubSource(Source):
    """A Hub model's safetensors shards, fetched one at a time and deleted after use."""

    streamed = True

    def __init__(self, repo_id: str, *, revision: str | None):
        from huggingface_hub import get_safetensors_metadata, model_info

        with hub_errors(repo_id, revision):
            commit = model_info(repo_id, revision=revision).sha or revision or "main"
            meta = get_safetensors_metadata(repo_id, revision=commit)
        files = list(dict.fromkeys(meta.weight_map.values()))
        self.repo_id, self.commit = repo_id, commit
        self._tensors = [
            TensorInfo(name, tuple(t.shape), t.dtype, filename)
            for filename in files
            for name, t in meta.files_metadata[filename].tensors.items()
        ]
        self._announced: dict[str, set[tuple[str, tuple[int, ...], str]]] = {
            f: set() for f in files
        }
        for t in self._tensors:
            self._announced[str(t.file)].add((t.name, t.shape, t.dtype))
        self._left: Counter[str | None] = Counter()  # reads still to come per file: plan_reads
        self._local: dict[str, tuple[Path, bool]] = {}  # file -> (path, was cached before)
        self.info = SourceInfo(
            id=repo_id, kind="hub-stream", revision=commit, files=files, config=self._config()
        )

    def _config(self) -> dict[str, Any] | None:
        try:
            path = download_file(self.repo_id, "config.json", revision=self.commit)
        except SourceNotFoundError:
            return None
        config = read_json(
            path, what="config.json", fix="run again to fetch it anew", error=CheckpointFormatError
        )
        return config if isinstance(config, dict) else None

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def plan_reads(self, tensors: list[TensorInfo]) -> None:
        self._left = Counter(t.file for t in tensors)

    def read(self, tensor: TensorInfo) -> torch.Tensor:
        return self._read(tensor, None)

    def read_slice(self, tensor: TensorInfo, index: int | slice) -> torch.Tensor:
        return self._read(tensor, index)

    def _read(self, tensor: TensorInfo, index: int | slice | None) -> torch.Tensor:
        assert tensor.file is not None
        local = TensorInfo(tensor.name, tensor.shape, tensor.dtype, str(self._fetch(tensor.file)))
        values = read_tensor(local, index)
        self._left[tensor.file] -= 1
        if self._left[tensor.file] <= 0:
            self._drop(tensor.file)
        return values

    def _fetch(self, filename: str) -> Path:
        if filename not in self._local:
            from huggingface_hub import try_to_load_from_cache

            cached = isinstance(
                try_to_load_from_cache(self.repo_id, filename, revision=self.commit), str
            )
            path = Path(download_file(self.repo_id, filename, revision=self.commit))
            self._local[filename] = (path, cached)
            self._check_announced(filename, path)
        return self._local[filename][0]

    def _check_announced(self, filename: str, path: Path) -> None:
        """The downloaded file's header must declare exactly the tensors (names, shapes, dtypes)
        that the header read by range request announced and the scan was planned from: else a
        server could announce 16 rows and deliver 64 (16 analysed, silently) or the reverse."""
        try:
            found = {(t.name, t.shape, t.dtype) for t in read_header(path)}
        except CheckpointFormatError:
            self._drop(filename)
            raise
        announced = self._announced[filename]
        if found != announced:
            name, shape, dtype = min(found ^ announced)
            self._drop(filename)
            raise CheckpointFormatError(
                f"the downloaded file's header differs from the one the Hub announced (tensor "
                f"{show(name)}: {dtype} {list(shape)} in one, not the other); the repository "
                "changed during the scan or the server is not consistent: scan again without "
                "--stream",
                path=f"{self.repo_id}/{filename}",
            )

    def _drop(self, filename: str) -> None:
        """Delete a shard this scan downloaded (its snapshot link and its blob)."""
        path, was_cached = self._local.pop(filename)
        if not was_cached:
            blob = path.resolve()
            for item in (path, blob):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(item)
