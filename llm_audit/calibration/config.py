"""Calibration configs: the shipped presets (`quick`, `long`, `long64`, `paper`) or a user's file.

A file must set every field of the task's config dataclass (a missing key is an error, so a typo in
a hand-written file is not silently replaced by a default) and nothing else.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from llm_audit.errors import ConfigError
from llm_audit.untrusted import read_yaml, show

C = TypeVar("C")
PRESETS = ("quick", "long", "long64", "paper")


def config_path(task: str, spec: str | Path) -> Path:
    """A preset -> the shipped file for `task`; anything else is a path to a YAML file.

    Raises ConfigError for a preset `task` does not ship (`long` and `long64` are MNIST's)."""
    if str(spec) not in PRESETS:
        return Path(spec)
    shipped = resources.files("llm_audit.calibration") / "configs"
    if not (shipped / f"{task}-{spec}.yaml").is_file():
        own = [p for p in PRESETS if (shipped / f"{task}-{p}.yaml").is_file()]
        raise ConfigError(f"{task} has no {spec} preset; use {', '.join(own)} or a YAML path")
    return Path(str(shipped / f"{task}-{spec}.yaml"))


def load_task_config(cls: type[C], path: Path) -> C:
    """Read `path` into the dataclass `cls`, checking keys, types and that rates are positive."""
    data = read_yaml(path, what="config file", fix=f"use {', '.join(PRESETS)} or a YAML path")
    if not isinstance(data, dict):
        raise ConfigError(
            "a calibration config must be a YAML mapping of keys to values", path=str(path)
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    missing = sorted(set(fields) - set(data))
    unknown = sorted(set(data) - set(fields))
    if missing or unknown:
        problem = f"missing keys {missing}" if missing else f"unknown keys {unknown}"
        raise ConfigError(f"{problem}; a config sets exactly: {', '.join(fields)}", path=str(path))
    values: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls, name)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(
                f"{name} must be a {type(default).__name__}, got {show(value)}", path=str(path)
            )
        values[name] = value
    _check_ranges(values, str(path))
    return cls(**values)


def _check_ranges(values: dict[str, Any], where: str) -> None:
    for name, value in values.items():
        positive = name in (
            "lr",
            "steps",
            "batch_size",
            "num_checkpoints",
            "init_scale",
        ) or name in ("width", "p", "d_model", "n_heads", "d_mlp", "downsample", "train_per_class")
        if positive and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value!r}", path=where)
        if name in ("weight_decay", "monitor_every") and value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value!r}", path=where)
        if name == "dtype" and value not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, got {value!r}", path=where)
