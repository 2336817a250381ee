"""Audit a model while it trains, and stop when anti-grokking appears.

`AuditMonitor` fits any PyTorch loop: call `monitor.check(step)` after each optimizer step. On
the monitor's schedule (every `every` steps, or log-spaced) it evaluates the model with your
`evaluate()` callable, audits it in memory with `llm_audit.scan` (traps on), logs one line, keeps
a copy of the weights at the best test accuracy so far, and returns True ("stop") once correlation
traps appear after test accuracy has peaked: the current accuracy is at least `drop` below the best
one seen, and at least `min_traps` traps are counted in the layers the summary counts.

    monitor = AuditMonitor(model, evaluate=lambda: {"test_acc": accuracy(model, test)}, every=1000)
    for step in range(1, steps + 1):
        train_one_step()
        if monitor.check(step):
            break
    model.load_state_dict(monitor.best_state)

`trainer_callback(monitor)` wraps the same logic as a `transformers.TrainerCallback`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm_audit.scan import scan

log = logging.getLogger(__name__)


@dataclass
class AuditMonitor:
    model: torch.nn.Module
    evaluate: Callable[[], dict[str, float]]  # must return at least {"test_acc": ...}
    every: int | None = 1000  # audit every this many steps (ignored when `schedule` is given)
    schedule: list[int] | None = None  # explicit audit steps, e.g. `log_schedule(steps)`
    drop: float = 0.02  # test accuracy this far below its best counts as "after the peak"
    min_traps: int = 1  # traps (summed over the summary's layers) that signal the collapse
    stop: bool = True  # False: only log and keep the best checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_test_acc: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    stopped_at: int | None = None  # the step at which `check` returned True ("stop")
    triggered_at: int | None = None  # first step the collapse condition held (also when stop=False)
    kept_step: int | None = None  # `best_step` at `triggered_at`: the checkpoint from before it

    def __post_init__(self) -> None:
        if self.every is None and not self.schedule:
            raise ValueError("AuditMonitor needs `every` (steps between audits) or a `schedule`")
        if self.every is not None and self.every <= 0:
            raise ValueError(f"every must be a positive number of steps, got {self.every}")
        self._steps = set(self.schedule or [])

    @staticmethod
    def log_schedule(steps: int, num: int = 40) -> list[int]:
        """About `num` log-spaced steps from 1 to `steps`."""
        return sorted({int(s) for s in np.round(np.geomspace(1, steps, num))} | {steps})

    def due(self, step: int) -> bool:
        if self.schedule:
            return step in self._steps
        return self.every is not None and step % self.every == 0

    def check(self, step: int) -> bool:
        """Audit if `step` is on the schedule; True when training should stop."""
        if not self.due(step):
            return False
        was_training = self.model.training
        self.model.eval()
        metrics = dict(self.evaluate())
        self.model.train(was_training)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        summary = scan(state, traps=True, seed=0).summary
        return self.observe(step, metrics, summary, state)

    def observe(
        self,
        step: int,
        metrics: dict[str, float],
        summary: dict[str, Any],
        state: dict[str, torch.Tensor] | None = None,
    ) -> bool:
        """Record one audit (`metrics` with "test_acc"; a scan summary with "total_traps",
        "mean_alpha", "verdict") and decide: True when training should stop. `check` calls this;
        call it yourself to replay recorded audits."""
        row = {"step": step, **metrics, "mean_alpha": summary["mean_alpha"]}
        row |= {"total_traps": summary["total_traps"], "verdict": summary["verdict"]}
        self.history.append(row)
        if metrics["test_acc"] > self.best_test_acc:
            self.best_step, self.best_test_acc, self.best_state = step, metrics["test_acc"], state
        past_peak = metrics["test_acc"] <= self.best_test_acc - self.drop
        collapse = past_peak and summary["total_traps"] >= self.min_traps
        log.info(
            "step %d: test_acc %.4f (best %.4f at %s), mean alpha %.2f, traps %d, verdict %s",
            step, metrics["test_acc"], self.best_test_acc, self.best_step,
            summary["mean_alpha"], summary["total_traps"], summary["verdict"],
        )  # fmt: skip
        if collapse and self.triggered_at is None:
            self.triggered_at, self.kept_step = step, self.best_step
        if collapse and self.stop:
            self.stopped_at = step
            return True
        return False


def trainer_callback(monitor: AuditMonitor) -> Any:
    """A `transformers.TrainerCallback` that runs `monitor` after each optimizer step.

    The monitor's `evaluate` callable supplies the test accuracy (e.g. by calling your own eval
    loop); when it signals the collapse the callback sets `control.should_training_stop`.
    """
    from transformers import TrainerCallback

    class AuditCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if monitor.check(int(state.global_step)):
                control.should_training_stop = True
            return control

    return AuditCallback()
