"""`llm-audit calibrate`: train a calibration task, audit log-spaced checkpoints, write the results.

Outputs under the run folder: `checkpoints/step-NNNNNNN.safetensors`, `calibration.json`,
`checkpoints.csv` and `calibration.html`. Each checkpoint is audited in memory with the same engine
as `llm-audit scan` (traps on, seed 0); the phases come from the accuracy curves (see `phases.py`),
and each checkpoint records whether its verdict agrees with its phase.

With `monitor_every` > 0 in the config, an `AuditMonitor` (stop=False, so the run goes on to show
the collapse) also audits every `monitor_every` steps; `calibration.json` then records where it
would have stopped, the checkpoint it kept (saved as `checkpoints/monitor-kept.safetensors`), and
the collapse onset found by the phase rule on its own, denser, evaluations.

With each checkpoint the run also saves its training state (`resume.py`), so that a stopped run
continues with `resume=True` (`calibrate --resume`) exactly as it would have gone on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from llm_audit.calibration import resume as resuming
from llm_audit.calibration.config import config_path, load_task_config
from llm_audit.calibration.monitor import AuditMonitor
from llm_audit.calibration.phases import PHASES, Phases, agrees, find_phases
from llm_audit.calibration.task import Task
from llm_audit.errors import ConfigError, OutputError
from llm_audit.scan import scan

SCHEMA_VERSION = 1


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


def audit_row(
    step: int, metrics: dict[str, float], state: dict[str, torch.Tensor], seeds: int = 1
) -> dict[str, Any]:
    """One checkpoint: step, accuracies and losses, per-layer alpha, traps and trap strength, and
    the verdict at shuffle seed 0; with `seeds` > 1, also the verdicts at seeds 0..seeds-1."""
    results = [scan(state, traps=True, seed=seed) for seed in range(seeds)]
    result = results[0]
    row: dict[str, Any] = {"step": step, **metrics}
    for rec in result.records:
        layer = rec["name"].removesuffix(".weight")
        row[f"alpha[{layer}]"] = rec["alpha"]
        row[f"num_traps[{layer}]"] = rec["num_traps"]
        row[f"rand_num_spikes[{layer}]"] = rec["rand_num_spikes"]
        row[f"trap_strength[{layer}]"] = rec["trap_strength"]
        row[f"trap_share[{layer}]"] = rec["trap_share"]
    row["mean_alpha"] = result.summary["mean_alpha"]
    row["total_traps"] = result.summary["total_traps"]
    row["verdict"] = result.summary["verdict"]
    row["verdict_reason"] = result.summary["verdict_reason"]
    verdicts = [r.summary["verdict"] for r in results]
    row["seed_verdicts"] = {v: verdicts.count(v) for v in sorted(set(verdicts))}
    return row


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Calibration:
    task: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    phases: Phases
    seconds: float | None  # training, with its in-loop audits (None: not known)
    monitor: dict[str, Any] | None = None
    reaudit_seconds: float | None = None  # the last `--reaudit`, when there was one

    def steps(self) -> list[int]:
        return [row["step"] for row in self.rows]

    def disagreements(self) -> list[int]:
        """Steps whose verdict does not match their phase (see `phases.EXPECTED_VERDICTS`)."""
        return [
            row["step"]
            for row, label in zip(self.rows, self.phases.labels, strict=True)
            if not agrees(label, row["verdict"])
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "task": self.task,
            "config": self.config,
            "seconds": self.seconds,
            "reaudit_seconds": self.reaudit_seconds,
            "phases": dataclasses.asdict(self.phases),
            "disagreements": self.disagreements(),
            "monitor": self.monitor,
            "seed_agreement": seed_agreement(self.rows, self.phases.labels),
            "checkpoints": [
                {
                    **row,
                    "phase": label,
                    "agrees": agrees(label, row["verdict"]),
                    "seed_agreement": _agreement(row, label),
                }
                for row, label in zip(self.rows, self.phases.labels, strict=True)
            ],
        }


def _agreement(row: dict[str, Any], phase: str) -> float:
    """The share of a checkpoint's shuffle seeds whose verdict matches its phase."""
    counts = row.get("seed_verdicts") or {row["verdict"]: 1}
    return sum(n for v, n in counts.items() if agrees(phase, v)) / sum(counts.values())


def seed_agreement(rows: list[dict[str, Any]], labels: tuple[str, ...]) -> dict[str, Any]:
    """Verdict-phase agreement over every (checkpoint, seed) pair, in all and per phase."""
    out: dict[str, Any] = {}
    for phase in (None, *PHASES):
        pairs = [
            (row.get("seed_verdicts") or {row["verdict"]: 1}, label)
            for row, label in zip(rows, labels, strict=True)
            if phase is None or label == phase
        ]
        total = sum(sum(c.values()) for c, _ in pairs)
        good = sum(n for c, label in pairs for v, n in c.items() if agrees(label, v))
        key = "all" if phase is None else phase
        out[key] = {"audits": total, "agree": good, "share": good / total if total else None}
    return out


def run(
    name: str,
    cfg: Any,
    out: Path,
    *,
    progress: bool = True,
    save_checkpoints: bool = True,
    resume: bool = False,
) -> Calibration:
    """Train task `name` with `cfg`, auditing checkpoints; write everything under `out`.
    `resume`: go on from the training state a stopped run saved in `out`."""
    _, task_cls = task_classes(name)
    _writable(out)
    torch.manual_seed(cfg.seed)
    task: Task = task_cls(cfg)
    schedule = set(checkpoint_schedule(cfg.steps, cfg.num_checkpoints))
    monitor = None
    if cfg.monitor_every:
        # stop=False: record where it would stop, and train on to show the collapse
        monitor = AuditMonitor(
            task.model, evaluate=task.evaluate, every=cfg.monitor_every, stop=False
        )
    done = resuming.Progress(0, 0.0, [])
    if resume:
        done = resuming.load(out, cfg, task, monitor)
    rows = done.rows
    started = time.perf_counter() - done.seconds
    bar = _bar(cfg.steps, name, progress, done.step)
    for step in range(done.step + 1, cfg.steps + 1):
        loss = task.step()
        saved = False
        if monitor is not None:
            if save_checkpoints and monitor.due(step):
                # kept so the dense grid can be audited again (other seeds, a newer detector)
                _save_checkpoint(
                    task.model, out / "checkpoints" / "monitor" / f"step-{step:08d}.safetensors"
                )
                saved = True
            monitor.check(step)
            kept = monitor.best_state
            if monitor.triggered_at == step and kept is not None and save_checkpoints:
                _save_tensors(kept, out / "checkpoints" / "monitor-kept.safetensors")
        if step in schedule:
            rows.append(audit_row(step, task.evaluate(), model_state(task.model)))
            if save_checkpoints:
                _save_checkpoint(task.model, out / "checkpoints" / f"step-{step:08d}.safetensors")
                saved = True
            bar.set_postfix(
                loss=f"{loss:.3g}", test_acc=f"{rows[-1]['test_acc']:.3f}", refresh=False
            )
        if saved:
            now = resuming.Progress(step, time.perf_counter() - started, rows)
            resuming.save(out, cfg, task, now, monitor)
        bar.update()
    bar.close()
    phases = find_phases(
        [r["step"] for r in rows], [r["train_acc"] for r in rows], [r["test_acc"] for r in rows]
    )
    seconds = time.perf_counter() - started
    cal = Calibration(name, dataclasses.asdict(cfg), rows, phases, seconds, monitor_record(monitor))
    write_outputs(cal, out)
    resuming.remove(out)
    return cal


def monitor_record(monitor: AuditMonitor | None) -> dict[str, Any] | None:
    """Where the monitor would have stopped, what it kept, and the collapse onset on its grid."""
    if monitor is None or not monitor.history:
        return None
    hist = monitor.history
    dense = find_phases(
        [r["step"] for r in hist], [r["train_acc"] for r in hist], [r["test_acc"] for r in hist]
    )
    hist = [
        {**r, "phase": label, "seed_agreement": _agreement(r, label)}
        for r, label in zip(hist, dense.labels, strict=True)
    ]
    by_step = {r["step"]: r for r in hist}
    stop, kept = monitor.triggered_at, monitor.kept_step
    return {
        "every": monitor.every,
        "drop": monitor.drop,
        "min_traps": monitor.min_traps,
        "would_stop_at": stop,
        "stop_test_acc": None if stop is None else by_step[stop]["test_acc"],
        "stop_total_traps": None if stop is None else by_step[stop]["total_traps"],
        "kept_step": kept,
        "kept_test_acc": None if kept is None else by_step[kept]["test_acc"],
        "dense_peak_step": dense.peak_step,
        "dense_peak_test_acc": dense.peak_test_acc,
        "dense_collapse_step": dense.collapse_step,
        "seed_agreement": seed_agreement(hist, dense.labels),
        "stop_minus_collapse_onset": (
            None if stop is None or dense.collapse_step is None else stop - dense.collapse_step
        ),
        "history": hist,
    }


def write_outputs(cal: Calibration, out: Path) -> None:
    """calibration.json, checkpoints.csv and calibration.html under `out`."""
    import pandas as pd

    from llm_audit.calibration.page import render_page
    from llm_audit.report.files import write_csv

    try:
        (out / "calibration.json").write_text(json.dumps(cal.to_json(), indent=1) + "\n")
        table = pd.DataFrame(
            [{k: v for k, v in r.items() if k != "seed_verdicts"} for r in cal.rows]
        )
        table.insert(1, "phase", list(cal.phases.labels))
        table.insert(2, "agrees", [s not in cal.disagreements() for s in cal.steps()])
        table.insert(
            3,
            "seed_agreement",
            [_agreement(r, p) for r, p in zip(cal.rows, cal.phases.labels, strict=True)],
        )
        write_csv(table, out / "checkpoints.csv")
        (out / "calibration.html").write_text(render_page(cal.to_json()))
    except OSError as exc:
        raise OutputError(f"cannot write results ({exc.strerror})", path=str(out)) from None


def _save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    _save_tensors(model.state_dict(), path)


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    try:
        save_file(tensors, str(path))
    except OSError as exc:
        raise OutputError(f"cannot write checkpoint ({exc.strerror})", path=str(path)) from None


def _writable(out: Path) -> None:
    """Create `out/checkpoints` and prove it is writable before any training time is spent."""
    probe = out / "checkpoints" / "monitor" / ".write-test"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"output folder is not writable ({exc.strerror}); pass --out DIR", path=str(out)
        ) from None


def _bar(total: int, name: str, enabled: bool, done: int) -> Any:
    from llm_audit.progress import progress_bar

    bar = progress_bar(total, desc=f"calibrate {name}", unit="step", enabled=enabled)
    bar.update(done)
    return bar
