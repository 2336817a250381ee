"""PEFT LoRA adapters: the update ΔW = B·A·scale of each adapted matrix, without merging a model.

An adapter folder (`adapter_config.json` + `adapter_model.safetensors`) is a source on its own,
whose layers are the updates ΔW, named like the base tensors they modify. Given its base,
`delta_for` names the update of a base tensor, so compare can analyze W + ΔW one matrix at a time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from llm_audit.errors import CheckpointFormatError, SourceNotFoundError
from llm_audit.lazy import torch
from llm_audit.sources.base import Source, SourceInfo, TensorInfo
from llm_audit.sources.safetensors_files import SafetensorsSource
from llm_audit.untrusted import check_model_file, expect, read_json

CONFIG_NAME = "adapter_config.json"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[\w-]+)?\.weight$"
)


def is_adapter_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).exists()


class LoraAdapterSource(Source):
    """Each adapted matrix's update ΔW = B·A·(lora_alpha/r) (or /√r with rsLoRA), as (out, in)."""

    def __init__(self, folder: Path):
        config_path = folder / CONFIG_NAME
        check_model_file(config_path, folder)
        config = _read_config(config_path)
        weights = folder / "adapter_model.safetensors"
        if not weights.exists():
            raise SourceNotFoundError(
                "adapter_model.safetensors is missing; only safetensors adapters are read",
                path=str(folder),
            )
        check_model_file(weights, folder)
        self._files = SafetensorsSource([weights], SourceInfo(id=str(folder), kind="adapter"))
        self.info = SourceInfo(
            id=str(folder), kind="lora-adapter", files=[str(weights)], config=config
        )
        self.base_model = config.get("base_model_name_or_path")
        self.fan_in_fan_out = config["fan_in_fan_out"]
        self._pairs = _pair_factors(self._files.tensors(), weights)
        r, alpha = config["r"], config.get("lora_alpha", config["r"])
        self.scale = _scaled(alpha, r, rslora=config["use_rslora"])  # modules without a pattern
        self._scales = {
            module: _scale(config, module, rank=a.shape[0], path=config_path)
            for module, (a, _) in self._pairs.items()
        }

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
        scale = self._scales[tensor.name.removesuffix(".weight")]
        delta = (self._files.read(b).float() @ self._files.read(a).float()) * scale
        return delta.T if self.fan_in_fan_out else delta

    def delta_for(self, base_name: str) -> TensorInfo | None:
        """The update of base tensor `base_name` (matched as a name suffix), if there is one."""
        for t in self.tensors():
            if base_name == t.name or base_name.endswith("." + t.name):
                return t
        return None

    def close(self) -> None:
        self._files.close()


def _read_config(path: Path) -> dict[str, Any]:
    """adapter_config.json, each key this reader uses checked for its type and range."""
    config = read_json(path, what=CONFIG_NAME, fix=_FIX, error=CheckpointFormatError)
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
    ranks = {"r": config["r"]}
    alphas = {"lora_alpha": config.get("lora_alpha", config["r"])}
    for name, found in (("rank_pattern", ranks), ("alpha_pattern", alphas)):
        pattern = _expect(config.get(name) or {}, dict, name, path)
        found.update({f"{name}[{key!r}]": value for key, value in pattern.items()})
    for name, value in ranks.items():
        if _expect(value, int, name, path) < 1:
            raise CheckpointFormatError(
                f"{name} must be a positive integer, got {value}; {_FIX}", path=str(path)
            )
    for name, value in alphas.items():
        if not math.isfinite(_expect(value, (int, float), name, path)):
            raise CheckpointFormatError(
                f"{name} must be a finite number, got {value}; {_FIX}", path=str(path)
            )
    for name in ("use_rslora", "fan_in_fan_out"):
        config[name] = _expect(config.get(name, False), bool, name, path)
    return config


_FIX = "fix adapter_config.json to match the adapter's weights"


def _expect(value: Any, kind: type | tuple[type, ...], name: str, path: Path) -> Any:
    return expect(value, kind, name=name, fix=_FIX, path=path, error=CheckpointFormatError)


def _scale(config: dict[str, Any], module: str, *, rank: int, path: Path) -> float:
    """lora_alpha / r (or / sqrt(r) with rsLoRA) of `module`, after checking that r is the rank of
    its factors: a wrong r would scale every update silently. `rank_pattern` and `alpha_pattern`
    keys are matched as module-name suffixes (PEFT also accepts regular expressions there)."""
    r = _pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
    if r != rank:
        raise CheckpointFormatError(
            f"r is {r} but the lora_A and lora_B of {module} have rank {rank}; "
            "set r (or its rank_pattern entry) to the rank the adapter was trained with",
            path=str(path),
        )
    return _scaled(alpha, r, rslora=config["use_rslora"])


def _scaled(alpha: float, r: int, *, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def _pattern_value(pattern: dict[str, Any] | None, module: str, default: Any) -> Any:
    for key, value in (pattern or {}).items():
        if module == key or module.endswith("." + key):
            return value
    return default


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
