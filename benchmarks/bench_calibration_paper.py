"""Run the paper's MNIST MLP calibration (1e7 steps, float64) for as long as a time budget allows.

    python benchmarks/bench_calibration_paper.py --budget-s 3600 [--device cuda] [--out DIR]

Meant for a machine with a GPU: the paper's schedule needs ~1e6 steps to grok and ~1e7 to collapse.
Trains `configs/calibration/mnist-paper.yaml` on the chosen device, audits log-spaced checkpoints
(on the CPU, with the same engine as `llm-audit scan`), stops when the budget is spent, and writes
the usual calibration.json / checkpoints.csv / calibration.html plus the steps per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from llm_audit.calibration import run
from llm_audit.calibration.mnist_mlp import MnistTask
from llm_audit.calibration.phases import find_phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--budget-s", type=float, default=3600.0, help="wall-clock budget in seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default="paper", help="paper, quick or a YAML file")
    ap.add_argument("--out", type=Path, default=Path("reports/calibration/mnist-paper"))
    args = ap.parse_args()

    cfg = run.load("mnist", args.config)
    task = MnistTask(cfg)
    device = torch.device(args.device)
    task.model.to(device)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        setattr(task, name, getattr(task, name).to(device))
    task.optimizer = torch.optim.AdamW(  # rebuilt so its state lives on the device
        task.model.parameters(),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
    )
    schedule = set(run.checkpoint_schedule(cfg.steps, cfg.num_checkpoints))
    rows, started, step = [], time.perf_counter(), 0
    while step < cfg.steps and time.perf_counter() - started < args.budget_s:
        step += 1
        task.step()
        if step in schedule:
            rows.append(run.audit_row(step, task.evaluate(), task.model.cpu()))
            task.model.to(device)
            print(f"step {step}: {rows[-1]['test_acc']:.4f} test acc, {rows[-1]['verdict']}")
    seconds = time.perf_counter() - started
    if step not in schedule:  # always audit where the budget ended
        rows.append(run.audit_row(step, task.evaluate(), task.model.cpu()))
    phases = find_phases(
        [r["step"] for r in rows], [r["train_acc"] for r in rows], [r["test_acc"] for r in rows]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(cfg) | {"device": args.device, "steps_done": step}
    run.write_outputs(run.Calibration("mnist", config, rows, phases, seconds), args.out)
    print(f"{step} steps in {seconds:.0f} s ({step / seconds:.0f} steps/s); results in {args.out}")


if __name__ == "__main__":
    main()
