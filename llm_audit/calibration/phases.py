"""The three phases of a calibration run, found from the accuracy curves alone (never the audit).

Rule, on the checkpoints in step order:
- `memorized`: the first checkpoint with train accuracy >= `memorized_acc` (0.99).
- `peak`: the checkpoint of highest test accuracy (the first one, on ties).
- grokking onset: the first checkpoint whose test accuracy is within `drop` of the peak.
- collapse onset: the first checkpoint after the peak whose test accuracy is at least `drop` below
  the peak while train accuracy is still >= `memorized_acc` (the net still fits its training set but
  generalizes worse: anti-grokking). None if there is no such checkpoint.
Each checkpoint is then "pre-grokking" (before the grokking onset), "grokked" (from the onset to
the collapse) or "collapse" (from the collapse onset on).

The audit's verdict agrees with a checkpoint's phase when it is in `EXPECTED_VERDICTS[phase]`:
"pathological" exactly in the collapse; "healthy" or "watch" (a flag such as alpha > 6, but not the
anti-grokking signature) before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm_audit.vocabulary import HEALTHY, PATHOLOGICAL, WATCH

PHASES = ("pre-grokking", "grokked", "collapse")
EXPECTED_VERDICTS = {
    "pre-grokking": (HEALTHY, WATCH),
    "grokked": (HEALTHY, WATCH),
    "collapse": (PATHOLOGICAL,),
}


def agrees(phase: str, verdict: str) -> bool:
    """Whether an audit verdict matches the phase found from the accuracy curves."""
    return verdict in EXPECTED_VERDICTS[phase]


@dataclass(frozen=True)
class Phases:
    memorized_step: int | None
    grokked_step: int  # grokking onset
    peak_step: int
    peak_test_acc: float
    collapse_step: int | None
    labels: tuple[str, ...]  # one of PHASES per checkpoint


def find_phases(
    steps: Sequence[int],
    train_acc: Sequence[float],
    test_acc: Sequence[float],
    *,
    memorized_acc: float = 0.99,
    drop: float = 0.05,
) -> Phases:
    """Apply the rule above. Raises ValueError on empty or unequal-length curves."""
    if not steps or not len(steps) == len(train_acc) == len(test_acc):
        raise ValueError("find_phases needs equally long, non-empty step and accuracy lists")
    memorized = next((s for s, a in zip(steps, train_acc, strict=True) if a >= memorized_acc), None)
    peak = max(range(len(steps)), key=lambda i: (test_acc[i], -i))
    best = test_acc[peak]
    onset = next(i for i, a in enumerate(test_acc) if a >= best - drop)
    collapse = next(
        (
            i
            for i in range(peak + 1, len(steps))
            if test_acc[i] <= best - drop and train_acc[i] >= memorized_acc
        ),
        None,
    )
    labels = tuple(
        "collapse"
        if collapse is not None and i >= collapse
        else "grokked"
        if i >= onset
        else "pre-grokking"
        for i in range(len(steps))
    )
    return Phases(
        memorized_step=memorized,
        grokked_step=steps[onset],
        peak_step=steps[peak],
        peak_test_acc=best,
        collapse_step=None if collapse is None else steps[collapse],
        labels=labels,
    )
