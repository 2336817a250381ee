"""How a run executes, as opposed to what it measures: devices, processes, journal, progress.

`AuditConfig` (config.py) holds what changes the numbers and is recorded in every report; these
options only decide where and how the same numbers are computed. They are validated here, once,
for `scan` and `compare` alike, so a bad `--devices` fails before any work starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_audit.errors import ConfigError

ModelSpec = str | Path | torch.nn.Module | Mapping[str, torch.Tensor] | None


@dataclass(frozen=True)
class RunOptions:
    """Where and how jobs run; see `run_options` for their meaning and validation."""

    devices: tuple[str, ...] | None = None
    journal: Path | None = None
    resume: bool = False
    progress: bool = False
    workers: int | None = None


def run_options(
    *,
    device: str | None = None,
    devices: Sequence[str] | None = None,
    journal: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    models: Sequence[ModelSpec] = (),
) -> RunOptions:
    """Validated run options.

    `devices` (`["cuda:0", "cuda:1"]`, `["cpu", "cpu"]`) runs one process per device, this one
    being rank 0; it excludes `device` and a launcher, and needs `models` that a spawned process
    can open itself (paths or Hub ids). `device` is checked against this machine here, before
    any work (`resolve_device`). `journal` is a file each finished job is appended to; `resume`
    skips the jobs it holds. Raises `ConfigError` with the fix.
    """
    if devices is not None:
        devices = check_devices(devices)
        if device is not None:
            raise ConfigError("give --device or --devices, not both")
        if len(devices) > 1 and not all(isinstance(m, (str, Path, type(None))) for m in models):
            raise ConfigError("--devices needs a model path or Hub id (workers open it themselves)")
    if device is not None:
        resolve_device(device)
    if resume and journal is None:
        raise ConfigError("resume needs a journal file to resume from; give journal=PATH")
    return RunOptions(
        devices=tuple(devices) if devices is not None else None,
        journal=Path(journal) if journal is not None else None,
        resume=resume,
        progress=progress,
    )


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`, checked against this machine.

    Raises `ConfigError` (one line, with the fix) for a name torch does not know, CUDA asked for
    where there is none, or a GPU number this machine does not have (`cuda:7` on one GPU), which
    would otherwise be CUDA's "invalid device ordinal" at the first copy.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is unknown; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                f"device {name!r}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1}); "
                "use one of them"
            )
    return device


def check_devices(devices: Sequence[str]) -> list[str]:
    """The `--devices` list, validated: `cpu` or `cuda:N` with N a visible GPU; no launcher.

    Raises `ConfigError` (one line, with the fix) for an empty list, an unknown or missing device,
    or a process already under torchrun/accelerate launch.
    """
    devices = [d.strip() for d in devices]
    if not devices or any(not d for d in devices):
        raise ConfigError(
            "--devices: empty device name; give a list such as cuda:0,cuda:1 or cpu,cpu"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.distributed.is_initialized():
        raise ConfigError(
            "--devices starts its own processes and cannot run under torchrun or accelerate "
            "launch; drop --devices or the launcher"
        )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in devices:
        match = re.fullmatch(r"cuda:(\d+)", device)
        if device == "cpu" or (match and int(match.group(1)) < gpus):
            continue
        if match:
            visible = f"cuda:0..cuda:{gpus - 1}" if gpus else "none"
            raise ConfigError(
                f"--devices: no GPU {device} (visible: {visible}); use cpu or a visible GPU"
            )
        raise ConfigError(
            f"--devices: {device!r} is not a device; use cpu or cuda:N (one per process)"
        )
    return devices
