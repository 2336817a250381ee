"""What both calibration tasks share: a model trained by AdamW, and its four metrics.

A task sets the model, the optimizer and the train/test tensors, and says how a batch is drawn
and how loss and accuracy are computed; stepping, evaluating and the training state a resumed run
restores are the same for both.
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class Task(abc.ABC):
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @abc.abstractmethod
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, accuracy) of the model on inputs `x` with labels `y`."""

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch: the whole training set unless a task draws mini-batches."""
        return self.x_train, self.y_train

    def _batch_state(self) -> dict[str, torch.Tensor]:
        """What the next batches depend on (a task that draws mini-batches adds its sampler)."""
        return {}

    def _load_batch_state(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027 (a hook)
        """Restore what `_batch_state` gave (nothing, unless a task draws mini-batches)."""

    def training_state(self) -> dict[str, torch.Tensor]:
        """Everything the next step depends on: the weights, AdamW's moments and step count, the
        batch order. Restored by `load_training_state`, training goes on bit for bit."""
        state = {f"model.{k}": v.detach() for k, v in self.model.state_dict().items()}
        for index, moments in self.optimizer.state_dict()["state"].items():
            state |= {f"optimizer.{index}.{k}": v for k, v in moments.items()}
        return state | {f"batches.{k}": v for k, v in self._batch_state().items()}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `training_state()`; KeyError or RuntimeError when it is another task's."""
        self.model.load_state_dict(under(state, "model."))
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in under(state, "optimizer.").items():
            index, name = key.split(".", 1)
            moments.setdefault(int(index), {})[name] = value
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": moments, "param_groups": groups})
        self._load_batch_state(under(state, "batches."))

    def step(self) -> float:
        """One optimizer step on the next batch; its loss."""
        loss, _ = self._loss(*self._batch())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy on the whole training and test sets."""
        train_loss, train_acc = self._loss(self.x_train, self.y_train)
        test_loss, test_acc = self._loss(self.x_test, self.y_test)
        return {
            "train_loss": float(train_loss),
            "train_acc": float(train_acc),
            "test_loss": float(test_loss),
            "test_acc": float(test_acc),
        }


def under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` whose keys start with `prefix`, without it."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
