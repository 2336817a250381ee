"""PEFT LoRA adapters: the update ΔW = B·A·scale of each adapted matrix, without merging a model.

An adapter folder (`adapter_config.json` + `adapter_model.safetensors`) is a source on its own,
whose layers are the updates ΔW, named like the base tensors they modify. Given its base,
`delta_for` names the update of a base tensor, so compare can analyze W + ΔW one matrix at a time.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from llm_audit.errors import CheckpointFormatError, SourceNotFoundError
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.sources.safetensors_files import SafetensorsSource

CONFIG_NAME = "adapter_config.json"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[\w-]+)?\.weight$"
)


def is_adapter_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).exists()


class LoraAdapterSource(Source):
    """Each adapted matrix's update ΔW = B·A·(lora_alpha/r) (or /√r with rsLoRA), as (out, in)."""

    def __init__(self, folder: Path):
        config = _read_config(folder)
        weights = folder / "adapter_model.safetensors"
        if not weights.exists():
            raise SourceNotFoundError(
                "adapter_model.safetensors is missing; only safetensors adapters are read",
                path=str(folder),
            )
        self._files = SafetensorsSource([weights], SourceInfo(id=str(folder), kind="adapter"))
        self.info = SourceInfo(
            id=str(folder), kind="lora-adapter", files=[str(weights)], config=config
        )
        self.base_model = config.get("base_model_name_or_path")
        r = int(config["r"])
        alpha = float(config.get("lora_alpha", r))
        self.scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        self.fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
        self._pairs = _pair_factors(self._files.tensors(), weights)

    def tensors(self) -> list[TensorInfo]:
        out = []
        for module, (a, b) in self._pairs.items():
            shape = (b.shape[0], a.shape[1])
            out.append(
                TensorInfo(
                    f"{module}.weight", shape[::-1] if self.fan_in_fan_out else shape, "F32", a.file
                )
            )
        return out

    def read(self, tensor: TensorInfo) -> torch.Tensor:
        a, b = self._pairs[tensor.name.removesuffix(".weight")]
        delta = (self._files.read(b).float() @ self._files.read(a).float()) * self.scale
        return delta.T if self.fan_in_fan_out else delta

    def delta_for(self, base_name: str) -> TensorInfo | None:
        """The update of base tensor `base_name` (matched as a name suffix), if there is one."""
        for t in self.tensors():
            if base_name == t.name or base_name.endswith("." + t.name):
                return t
        return None

    def close(self) -> None:
        self._files.close()


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointFormatError("not valid JSON", path=str(path)) from None
    if (
        not isinstance(config, dict)
        or config.get("peft_type", "LORA") != "LORA"
        or "r" not in config
    ):
        raise CheckpointFormatError(
            "not a LoRA adapter config (needs peft_type LORA and r); "
            "other PEFT types are not supported",
            path=str(path),
        )
    return config


def _pair_factors(
    tensors: list[TensorInfo], path: Path
) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    factors: dict[str, dict[str, TensorInfo]] = {}
    for t in tensors:
        m = _KEY.match(t.name)
        if m:
            factors.setdefault(m["module"], {})[m["which"]] = t
    pairs = {}
    for module, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointFormatError(
                f"lora_{'AB'[('A' in ab)]} factor is missing", path=str(path), tensor=module
            )
        a, b = ab["A"], ab["B"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointFormatError(
                f"lora_A {a.shape} and lora_B {b.shape} do not multiply",
                path=str(path),
                tensor=module,
            )
        pairs[module] = (a, b)
    if not pairs:
        raise CheckpointFormatError("holds no lora_A/lora_B weights", path=str(path))
    return pairs
