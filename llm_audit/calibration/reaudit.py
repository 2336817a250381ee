"""Audit a calibration run's saved checkpoints again: at many shuffle seeds, or a newer detector.

Training is the slow part of a calibration run and the detector is the part that changes, so a run
keeps its checkpoints (`checkpoints/step-*.safetensors` on the log schedule, and
`checkpoints/monitor/step-*.safetensors` on the monitor's grid) and this rebuilds
`calibration.json`, `checkpoints.csv` and the page from them alone: each checkpoint's metrics are
evaluated again from its weights (the data split is fixed by the config's seed), its verdict is
taken at shuffle seeds 0..seeds-1 (seed 0's is the row's verdict), and the monitor's decisions are
replayed on the dense grid. A run stopped before its last step is re-audited up to its last
checkpoint, and `calibration.json` says so (`stopped_at`). The training time of the run's own
`calibration.json` is kept; the re-audit's is `reaudit_seconds`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

from safetensors.torch import load_file

from llm_audit.calibration.monitor import AuditMonitor
from llm_audit.calibration.phases import find_phases
from llm_audit.calibration.run import Calibration, audit_row, monitor_record, task_classes
from llm_audit.errors import LlmAuditError, SourceNotFoundError
from llm_audit.untrusted import read_json

CHECKPOINT = re.compile(r"step-(\d{8})\.safetensors")


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in `folder`, in step order."""
    found = [(CHECKPOINT.fullmatch(p.name), p) for p in folder.glob("step-*.safetensors")]
    return sorted((int(m.group(1)), p) for m, p in found if m)


def _audit(job: tuple[str, Any, Path, int, int]) -> dict[str, Any]:
    """One checkpoint's row (in a worker process: one thread, its own task for evaluation)."""
    import torch

    torch.set_num_threads(1)
    name, cfg, path, step, seeds = job
    _, task_cls = task_classes(name)
    task = task_cls(cfg)
    state = load_file(str(path))
    task.model.load_state_dict(state)
    task.model.eval()
    return audit_row(step, task.evaluate(), state, seeds)


def reaudit(
    name: str, cfg: Any, out: Path, *, seeds: int = 24, monitor_seeds: int = 8, workers: int = 1
) -> Calibration:
    """Rebuild the outputs of the run in `out` from its checkpoints (see the module docstring).
    Raises SourceNotFoundError when `out` holds no checkpoints."""
    started = time.perf_counter()
    logged = checkpoints(out / "checkpoints")
    dense = checkpoints(out / "checkpoints" / "monitor")
    if not logged:
        raise SourceNotFoundError("no step-*.safetensors checkpoints to re-audit", path=str(out))
    jobs = [(name, cfg, p, step, seeds) for step, p in logged]
    jobs += [(name, cfg, p, step, monitor_seeds) for step, p in dense]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(_audit, jobs))
    rows, grid = rows[: len(logged)], rows[len(logged) :]
    phases = find_phases(
        [r["step"] for r in rows], [r["train_acc"] for r in rows], [r["test_acc"] for r in rows]
    )
    monitor = None
    if grid and cfg.monitor_every:
        replay = AuditMonitor(cast(Any, None), evaluate=dict, every=cfg.monitor_every, stop=False)
        for row in grid:
            metrics = {k: row[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
            replay.observe(row["step"], metrics, row)
            replay.history[-1]["seed_verdicts"] = row["seed_verdicts"]
        monitor = monitor_record(replay)
    config = dataclasses.asdict(cfg)
    last = max(row["step"] for row in rows + grid)
    if last < cfg.steps:
        config["stopped_at"] = last
    spent = time.perf_counter() - started
    return Calibration(name, config, rows, phases, training_seconds(out), monitor, spent)


def training_seconds(out: Path) -> float | None:
    """The training time the run's own `calibration.json` records (kept through a re-audit),
    None when there is none to read."""
    try:
        data = read_json(out / "calibration.json", what="calibration.json", fix="")
    except LlmAuditError:
        return None
    seconds = data.get("seconds") if isinstance(data, dict) else None
    if isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0:
        return float(seconds)
    return None
