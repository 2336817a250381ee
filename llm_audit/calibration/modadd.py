"""Grokking on modular addition: a one-layer transformer learns (a + b) mod p (after Nanda et al.).

Input tokens [a, b, =] (vocabulary p + 1), learned positions, one attention block with separate
Linear modules W_Q, W_K, W_V, out_proj, a ReLU MLP fc1/fc2, no LayerNorm, and an unembed read at the
last position. Full-batch AdamW with strong weight decay; cross-entropy loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from llm_audit.calibration.data import as_tensors, modadd_splits
from llm_audit.calibration.task import Task


@dataclass(frozen=True)
class ModAddConfig:
    seed: int = 0  # seeds the split and the init
    p: int = 113  # the modulus; p*p pairs in all
    train_fraction: float = 0.3  # share of the pairs used for training
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    lr: float = 1e-3  # AdamW learning rate
    beta1: float = 0.9
    beta2: float = 0.98
    weight_decay: float = 1.0
    steps: int = 40_000  # full-batch optimizer steps
    num_checkpoints: int = 40  # checkpoints (and audits) on a log-spaced schedule
    dtype: str = "float32"
    monitor_every: int = 0  # > 0: also run an AuditMonitor every this many steps


class OneLayerTransformer(nn.Module):
    def __init__(self, p: int, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads = n_heads
        self.embed = nn.Embedding(p + 1, d_model)  # token p is "="
        self.pos = nn.Parameter(torch.randn(3, d_model) / d_model**0.5)
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.fc1 = nn.Linear(d_model, d_mlp)
        self.fc2 = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, p, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, p)
        x = self.embed(tokens) + self.pos  # (B, 3, d)
        B, T, d = x.shape
        q, k, v = (
            w(x).view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
            for w in (self.W_Q, self.W_K, self.W_V)
        )
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.out_proj(att.transpose(1, 2).reshape(B, T, d))
        x = x + self.fc2(F.relu(self.fc1(x)))
        return self.unembed(x[:, -1])  # the answer is read at the "=" position


class ModAddTask(Task):
    """Owns the data, the model and the optimizer; `step()` is one full-batch step."""

    def __init__(self, cfg: ModAddConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        train, test = modadd_splits(p=cfg.p, train_fraction=cfg.train_fraction, seed=cfg.seed)
        self.x_train, self.y_train = self._tokens(train)
        self.x_test, self.y_test = self._tokens(test)
        self.model = OneLayerTransformer(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp)
        self.model.to(getattr(torch, cfg.dtype))
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            weight_decay=cfg.weight_decay,
        )

    def _tokens(self, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, y = as_tensors(ds, ["a", "b", "label"], torch.float32)
        eq = torch.full_like(a, self.cfg.p)
        return torch.stack([a, b, eq], dim=1), y

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()
