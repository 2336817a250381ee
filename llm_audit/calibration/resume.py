"""Continue a stopped calibration run: a run of hours outlives a job limit or a reboot.

Each time a run saves a checkpoint it also writes `resume.safetensors` in its folder: the task's
training state (weights, AdamW's moments and step count, the batch order), the monitor's kept
weights, and in the file's metadata the step, the config, the seconds spent so far, the audited
rows and the monitor's record. The file is replaced atomically, so a stop at any moment leaves the
last whole one. `calibrate --resume` loads it, refuses one made with another config, and training
goes on bit for bit. The file is removed once the run's results are written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llm_audit.calibration.monitor import AuditMonitor
from llm_audit.calibration.task import Task, under
from llm_audit.errors import (
    CheckpointFormatError,
    ConfigError,
    LlmAuditError,
    OutputError,
    SourceNotFoundError,
)
from llm_audit.untrusted import parse_json

FILE = "resume.safetensors"
_MONITOR_FIELDS = (
    "history", "best_step", "best_test_acc", "stopped_at", "triggered_at", "kept_step"
)  # fmt: skip


@dataclass
class Progress:
    """Where a run stood: its last trained step, its seconds so far and its audited rows."""

    step: int
    seconds: float
    rows: list[dict[str, Any]]


def saved_step(out: Path) -> int | None:
    """The step of the resume state in `out`, None when there is none (or it cannot be read)."""
    try:
        with safe_open(str(out / FILE), framework="pt") as f:
            text = (f.metadata() or {})["progress"]
        return int(parse_json(text, what="the resume state's metadata", path=out / FILE)["step"])
    except (OSError, SafetensorError, LlmAuditError, KeyError, ValueError, TypeError):
        return None


def save(
    out: Path,
    cfg: Any,
    task: Task,
    progress: Progress,
    monitor: AuditMonitor | None,
) -> None:
    """Write the run's state after `progress.step` (atomically: a temporary file, then rename)."""
    tensors = {f"task.{k}": v.contiguous() for k, v in task.training_state().items()}
    record = None
    if monitor is not None:
        record = {name: getattr(monitor, name) for name in _MONITOR_FIELDS}
        best = monitor.best_state or {}
        tensors |= {f"monitor_best.{k}": v.contiguous() for k, v in best.items()}
    meta = {
        "step": progress.step,
        "seconds": progress.seconds,
        "config": dataclasses.asdict(cfg),
        "rows": progress.rows,
        "monitor": record,
    }
    staged = out / f".{FILE}.tmp"
    try:
        save_file(tensors, str(staged), metadata={"progress": json.dumps(meta)})
        os.replace(staged, out / FILE)
    except OSError as exc:
        raise OutputError(
            f"cannot write the resume state ({exc.strerror})", path=str(out)
        ) from None
    finally:  # a stop (Ctrl-C, SIGTERM) while writing leaves no partial file either
        staged.unlink(missing_ok=True)


def require(out: Path) -> Path:
    """The resume state's path in `out`; SourceNotFoundError when there is none."""
    path = out / FILE
    if not path.is_file():
        raise SourceNotFoundError(
            f"no {FILE} to resume from (a run saves one with each checkpoint); "
            "run without --resume to start over",
            path=str(out),
        )
    return path


def load(out: Path, cfg: Any, task: Task, monitor: AuditMonitor | None) -> Progress:
    """Restore the state saved in `out` into `task` and `monitor`; where the run stood.

    SourceNotFoundError when there is none; ConfigError when it was made with another config;
    CheckpointFormatError when it is not a resume state of this task."""
    path = require(out)
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("progress", "")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError) as exc:
        raise CheckpointFormatError(
            f"the resume state cannot be read ({exc})", path=str(path)
        ) from None
    meta = parse_json(text, what="the resume state's metadata", path=path)
    if not isinstance(meta, dict) or not isinstance(meta.get("rows"), list):
        raise CheckpointFormatError("the resume state has no progress record", path=str(path))
    if meta.get("config") != dataclasses.asdict(cfg):
        raise ConfigError(
            f"the resume state was saved by a run with another config ({_difference(meta, cfg)}); "
            "pass the config that run used",
            path=str(path),
        )
    try:
        task.load_training_state(under(tensors, "task."))
        if monitor is not None and meta.get("monitor") is not None:
            for name in _MONITOR_FIELDS:
                setattr(monitor, name, meta["monitor"][name])
            monitor.best_state = under(tensors, "monitor_best.") or None
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointFormatError(
            f"the resume state does not fit this task ({str(exc).splitlines()[0]})", path=str(path)
        ) from None
    return Progress(int(meta["step"]), float(meta["seconds"]), meta["rows"])


def remove(out: Path) -> None:
    (out / FILE).unlink(missing_ok=True)


def _difference(meta: dict[str, Any], cfg: Any) -> str:
    """The first config key whose saved value differs, with both values."""
    saved = meta.get("config")
    saved = saved if isinstance(saved, dict) else {}
    for key, value in dataclasses.asdict(cfg).items():
        if saved.get(key) != value:
            return f"{key} {saved.get(key)!r} there, {value!r} here"
    return "other keys"
