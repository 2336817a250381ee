"""What both calibration tasks share: a model trained by AdamW, and its four metrics.

A task sets the model, the optimizer and the train/test tensors, and says how a batch is drawn
and how loss and accuracy are computed; stepping and evaluating are the same for both.
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
