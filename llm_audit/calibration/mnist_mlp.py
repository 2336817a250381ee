"""Grokking and anti-grokking of an MLP on 1,000 MNIST digits (Prakash & Martin 2026).

784 -> 200 -> 200 -> 10 ReLU MLP, PyTorch's default init with every parameter multiplied by
`init_scale` (a large init makes the net memorize first and generalize late), MSE on one-hot
targets, AdamW with mini-batches. Read top to bottom: config, data, model, one training step, eval.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llm_audit.calibration.data import as_tensors, mnist_splits
from llm_audit.calibration.task import Task


@dataclass(frozen=True)
class MnistConfig:
    seed: int = 0  # seeds the data split, the init and the batch order
    train_per_class: int = 100  # 100 per class: 1,000 training images, 4,000 test images
    downsample: int = 1  # average-pool the 28x28 images by this factor (2: 14x14 = 196 inputs)
    width: int = 200  # hidden units in each of the two hidden layers
    init_scale: float = 8.0  # every parameter of the default init is multiplied by this
    lr: float = 5e-4  # AdamW learning rate
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0  # 0: the collapse happens; 0.01 is the paper's control
    batch_size: int = 200
    steps: int = 10_000_000  # optimizer steps
    num_checkpoints: int = 40  # checkpoints (and audits) on a log-spaced schedule
    dtype: str = "float32"  # or float64, as in the paper
    monitor_every: int = 0  # > 0: also run an AuditMonitor every this many steps


class MLP(nn.Module):
    """Three Linear layers in `layers` (so the audit sees roles "other", never embed/up/down)."""

    def __init__(self, n_in: int, width: int, n_out: int = 10):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(n_in, width), nn.Linear(width, width), nn.Linear(width, n_out)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n_in) -> (B, 10)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MnistTask(Task):
    """Data, model and optimizer; `step()` trains on one batch, `evaluate()` measures."""

    def __init__(self, cfg: MnistConfig):
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        torch.manual_seed(cfg.seed)
        train, test = mnist_splits(train_per_class=cfg.train_per_class, seed=cfg.seed)
        self.x_train, self.y_train = (
            self._inputs(t) for t in as_tensors(train, ["pixels", "label"], dtype)
        )
        self.x_test, self.y_test = (
            self._inputs(t) for t in as_tensors(test, ["pixels", "label"], dtype)
        )
        self.model = MLP(self.x_train.shape[1], cfg.width).to(dtype)
        with torch.no_grad():
            for p in self.model.parameters():
                p.mul_(cfg.init_scale)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            weight_decay=cfg.weight_decay,
        )
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self._order = torch.empty(0, dtype=torch.long)

    def _inputs(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.long or self.cfg.downsample == 1:
            return t
        side = 28 // self.cfg.downsample
        pooled = F.avg_pool2d(t.view(-1, 1, 28, 28), self.cfg.downsample)  # (N, 1, side, side)
        return pooled.reshape(-1, side * side)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        target = F.one_hot(y, 10).to(logits.dtype)
        return F.mse_loss(logits, target), (logits.argmax(1) == y).to(logits.dtype).mean()

    def _batch_state(self) -> dict[str, torch.Tensor]:
        return {"generator": self._gen.get_state(), "order": self._order}

    def _load_batch_state(self, state: dict[str, torch.Tensor]) -> None:
        self._gen.set_state(state["generator"])
        self._order = state["order"]

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next mini-batch (epochs reshuffled with the task's generator)."""
        if len(self._order) < self.cfg.batch_size:
            self._order = torch.randperm(len(self.y_train), generator=self._gen)
        idx, self._order = self._order[: self.cfg.batch_size], self._order[self.cfg.batch_size :]
        return self.x_train[idx], self.y_train[idx]
