"""`llm-audit calibrate`: train a calibration task, audit log-spaced checkpoints, write the results.

Outputs under the run folder: `checkpoints/step-NNNNNNN.safetensors`, `calibration.json`,
`checkpoints.csv` and `calibration.html`. Each checkpoint is audited in memory with the same engine
as `llm-audit scan` (traps on, seed 0); the phases come from the accuracy curves (see `phases.py`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file

import llm_audit
from llm_audit.calibration.config import config_path, load_task_config
from llm_audit.calibration.phases import Phases, find_phases
from llm_audit.errors import ConfigError, OutputError

SCHEMA_VERSION = 1


class Task(Protocol):
    model: torch.nn.Module

    def step(self) -> float: ...

    def evaluate(self) -> dict[str, float]: ...


def task_classes(name: str) -> tuple[type, type]:
    """(config dataclass, task class) of a task name; ConfigError if unknown."""
    if name == "mnist":
        from llm_audit.calibration.mnist_mlp import MnistConfig, MnistTask

        return MnistConfig, MnistTask
    if name == "modadd":
        from llm_audit.calibration.modadd import ModAddConfig, ModAddTask

        return ModAddConfig, ModAddTask
    raise ConfigError(f"unknown calibration task {name!r}; choose mnist or modadd")


def load(name: str, spec: str | Path) -> Any:
    """The config dataclass of task `name` from `quick`, `paper` or a YAML path."""
    cfg_cls, _ = task_classes(name)
    return load_task_config(cfg_cls, config_path(name, spec))


def checkpoint_schedule(steps: int, num: int) -> list[int]:
    """About `num` log-spaced steps from 1 to `steps` (both included), unique and sorted."""
    points = np.unique(np.round(np.geomspace(1, steps, max(num, 2))).astype(int))
    return sorted({int(s) for s in points} | {steps})


def audit_row(step: int, metrics: dict[str, float], model: torch.nn.Module) -> dict[str, Any]:
    """One checkpoint: step, accuracies and losses, per-layer alpha and traps, verdict."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = llm_audit.scan(state, traps=True, seed=0)
    row: dict[str, Any] = {"step": step, **metrics}
    for rec in result.records:
        layer = rec["name"].removesuffix(".weight")
        row[f"alpha[{layer}]"] = rec["alpha"]
        row[f"num_traps[{layer}]"] = rec["num_traps"]
        row[f"rand_num_spikes[{layer}]"] = rec["rand_num_spikes"]
    row["mean_alpha"] = result.summary["mean_alpha"]
    row["total_traps"] = result.summary["total_traps"]
    row["verdict"] = result.summary["verdict"]
    return row


@dataclass
class Calibration:
    task: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    phases: Phases
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "task": self.task,
            "config": self.config,
            "seconds": self.seconds,
            "phases": dataclasses.asdict(self.phases),
            "checkpoints": [
                {**row, "phase": label}
                for row, label in zip(self.rows, self.phases.labels, strict=True)
            ],
        }


def run(
    name: str, cfg: Any, out: Path, *, progress: bool = True, save_checkpoints: bool = True
) -> Calibration:
    """Train task `name` with `cfg`, auditing checkpoints; write everything under `out`."""
    _, task_cls = task_classes(name)
    _writable(out)
    torch.manual_seed(cfg.seed)
    task: Task = task_cls(cfg)
    schedule = set(checkpoint_schedule(cfg.steps, cfg.num_checkpoints))
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = _bar(cfg.steps, name, progress)
    for step in range(1, cfg.steps + 1):
        loss = task.step()
        if step in schedule:
            rows.append(audit_row(step, task.evaluate(), task.model))
            if save_checkpoints:
                _save_checkpoint(task.model, out / "checkpoints" / f"step-{step:08d}.safetensors")
            bar.set_postfix(
                loss=f"{loss:.3g}", test_acc=f"{rows[-1]['test_acc']:.3f}", refresh=False
            )
        bar.update()
    bar.close()
    phases = find_phases(
        [r["step"] for r in rows], [r["train_acc"] for r in rows], [r["test_acc"] for r in rows]
    )
    cal = Calibration(name, dataclasses.asdict(cfg), rows, phases, time.perf_counter() - started)
    write_outputs(cal, out)
    return cal


def write_outputs(cal: Calibration, out: Path) -> None:
    """calibration.json, checkpoints.csv and calibration.html under `out`."""
    import pandas as pd

    from llm_audit.calibration.page import render_page

    try:
        (out / "calibration.json").write_text(json.dumps(cal.to_json(), indent=1) + "\n")
        table = pd.DataFrame(cal.rows)
        table.insert(1, "phase", list(cal.phases.labels))
        table.to_csv(out / "checkpoints.csv", index=False)
        (out / "calibration.html").write_text(render_page(cal.to_json()))
    except OSError as exc:
        raise OutputError(f"cannot write results ({exc.strerror})", path=str(out)) from None


def _save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    try:
        save_file(tensors, str(path))
    except OSError as exc:
        raise OutputError(f"cannot write checkpoint ({exc.strerror})", path=str(path)) from None


def _writable(out: Path) -> None:
    """Create `out/checkpoints` and prove it is writable before any training time is spent."""
    probe = out / "checkpoints" / ".write-test"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"output folder is not writable ({exc.strerror}); pass --out DIR", path=str(out)
        ) from None


def _bar(total: int, name: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=f"calibrate {name}", disable=not enabled, file=sys.stderr, mininterval=1.0
    )
