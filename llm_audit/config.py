"""The audit's options as one frozen, validated object, loaded from YAML.

`configs/default.yaml` (shipped inside the package) holds every default with its meaning; a user
file overrides any subset of it, and command-line flags override both. Unknown keys and values that
make no sense are a `ConfigError`, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llm_audit.errors import ConfigError
from llm_audit.untrusted import read_yaml, show
from llm_audit.vocabulary import ESTIMATORS, FINDINGS

PRECISIONS = ("auto", "float64", "float32")  # of W's Gram and eigensolver (spectral/precision.py)


@dataclass(frozen=True)
class Thresholds:
    alpha_low: float = 2.0
    alpha_high: float = 6.0
    min_traps: int = 1
    outlier_dimension_chance: float = 1e-3


@dataclass(frozen=True)
class VerdictRule:
    pathological_trap_layers: int = 1
    pathological_alpha_lt_2_fraction: float = 0.1
    pathological_trap_fraction: float = 0.5
    count_outlier_dimensions: bool = False
    count_alpha_gt_6: bool = False
    count_structured: bool = False

    def counts(self, flag: str) -> bool:
        """Whether the verdict counts `flag`: always, unless it is a finding not asked for."""
        key = FINDINGS.get(flag)
        return key is None or bool(getattr(self, key))


@dataclass(frozen=True)
class DistanceRule:
    """When `compare` calls a model far from its base (see configs/default.yaml)."""

    far_relative_norm: float = 0.1
    far_delta_alpha: float = 1.0
    far_layer_fraction: float = 0.25


@dataclass(frozen=True)
class AuditConfig:
    estimator: str = "ww"
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    traps: bool = True
    min_evals: int = 8
    include_embeddings_in_summary: bool = False
    split_qkv: bool = False
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    verdict: VerdictRule = dataclasses.field(default_factory=VerdictRule)
    compare: DistanceRule = dataclasses.field(default_factory=DistanceRule)

    def __post_init__(self) -> None:
        _check_values(self)

    def replace(self, **changes: Any) -> AuditConfig:
        """A copy with some top-level options changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_values(cfg: AuditConfig) -> None:
    if cfg.estimator not in ESTIMATORS:
        raise ConfigError(
            f"estimator {cfg.estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}"
        )
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device {cfg.device!r} is unknown; use auto, cpu, cuda or cuda:N")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(
            f"precision {cfg.precision!r} is unknown; use one of {', '.join(PRECISIONS)}"
        )
    if cfg.min_evals < 2:
        raise ConfigError(f"min_evals must be at least 2 to fit anything, got {cfg.min_evals}")
    t = cfg.thresholds
    if not 0 < t.alpha_low < t.alpha_high:
        raise ConfigError(
            f"thresholds need 0 < alpha_low < alpha_high, got {t.alpha_low} and {t.alpha_high}"
        )
    if t.min_traps < 1:
        raise ConfigError(f"thresholds.min_traps must be at least 1, got {t.min_traps}")
    if not 0 < t.outlier_dimension_chance < 1:
        raise ConfigError(
            "thresholds.outlier_dimension_chance must lie strictly between 0 and 1, got "
            f"{t.outlier_dimension_chance}"
        )
    v = cfg.verdict
    for name in ("pathological_alpha_lt_2_fraction", "pathological_trap_fraction"):
        if not 0 <= getattr(v, name) <= 1:
            raise ConfigError(f"verdict.{name} must lie in [0, 1], got {getattr(v, name)}")
    if v.pathological_trap_layers < 1:
        raise ConfigError("verdict.pathological_trap_layers must be at least 1")
    d = cfg.compare
    if not (d.far_relative_norm > 0 and d.far_delta_alpha > 0 and 0 < d.far_layer_fraction <= 1):
        raise ConfigError(
            "compare.far_relative_norm and far_delta_alpha must be positive and "
            "far_layer_fraction in (0, 1]"
        )


def _from_mapping(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a config dataclass, rejecting unknown keys and wrong types (a bool is not an int)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}; valid keys: {', '.join(fields)}", path=where
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a mapping", path=where)
            values[name] = _from_mapping(type(default), value, where)
        elif isinstance(default, bool) != isinstance(value, bool) or not isinstance(
            value, (type(default), int) if isinstance(default, float) else type(default)
        ):
            raise ConfigError(
                f"{name} must be of type {type(default).__name__}, got {show(value)}", path=where
            )
        else:
            values[name] = value
    return cls(**values)


def default_config_path() -> Path:
    return Path(str(resources.files("llm_audit") / "_data" / "default.yaml"))


def load_config(path: str | Path | None = None) -> AuditConfig:
    """The shipped defaults, overridden by the YAML file at `path` if given."""
    merged = _read_yaml(default_config_path())
    if path is not None:
        merged = _deep_merge(merged, _read_yaml(Path(path)))
    try:
        return _from_mapping(AuditConfig, merged, str(path or default_config_path()))
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), path=str(path)) from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, what="config file", fix="check the --config path and its YAML")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("a config file must be a YAML mapping of keys to values", path=str(path))
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
