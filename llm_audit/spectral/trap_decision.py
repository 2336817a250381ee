"""Whether a layer has a correlation trap, decided so that the answer does not hang on one shuffle.

One shuffle's top centred eigenvalue λ₁ is a random variable: which large entries a permutation
puts in the same row or column moves it. Far from the trap threshold t that does not matter; near
it, a single shuffle is a coin toss (the MNIST fixture's test-accuracy peak fired at 10 of 24
seeds). So each layer is decided in two steps:

1. **Clear or near.** λ₁ fluctuates over shuffles on the Tracy–Widom scale of the largest
   eigenvalue of an N×M matrix of i.i.d. entries of variance v (Johnstone 2001),
   σ_TW = v·(√N + √M)·(1/√N + 1/√M)^(1/3), widened for heavy-tailed entries: a shuffle of entries
   with kurtosis κ spreads the row and column norms that set λ₁ by √((κ − 1)/2) more than
   Gaussian ones do (κ = 3). After n shuffles the layer is *clear* when the mean λ₁/t lies more
   than `CLEAR_Z` standard errors (σ/(t·√n)) from 1, and is decided by that side: a clear trap,
   or a clear absence, is decided by its first shuffle and costs no more. `CLEAR_Z` = 5 leaves a
   one-sided error below 1e-3 even where the widened scale underestimates the spread by 1.5x, the
   most measured (MNIST fixtures and MiniLM layers, over 16-24 shuffles each; it overestimated
   as often); benchmarks/bench_detector.py measures how often a clear call disagrees with the
   majority of many shuffles.
2. **Near: a vote with a significance level.** More shuffles are drawn, up to `MAX_SHUFFLES`, and
   the layer has a trap only when the share of shuffles that trapped is above one half at
   significance `ALPHA`: at least `critical_count` of them, the smallest k with
   P(Binomial(MAX_SHUFFLES, ½) ≥ k) ≤ ALPHA. Drawing stops as soon as the outcome is settled.
   A layer sitting on its threshold (share ≈ ½) therefore reads trap-free at every seed but a
   fraction ≤ ALPHA of them, and one that traps at most shuffles reads trapped.

The record keeps the evidence: `trap_share` (the share of shuffles that trapped), `trap_draws`,
`trap_strength` (median λ₁/t over the shuffles drawn) and `trap_threshold` (t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CLEAR_Z = 5.0
MAX_SHUFFLES = 24
ALPHA = 0.01
# Up to this size a shuffle's λ₁ (and its trap count) come from a full eigvalsh: 13 ms at M = 384
# on one core, where Lanczos, a Python loop of small products, takes 15 ms and holds the GIL for
# most of it, stalling the scan's other worker (scipy's single-eigenvalue syevr, 5 ms, holds it
# throughout). Above it, Lanczos.
EXACT_BELOW = 512
LANCZOS_STEPS = 96


def critical_count(n: int = MAX_SHUFFLES, alpha: float = ALPHA) -> int:
    """The smallest k with P(Binomial(n, ½) ≥ k) ≤ alpha (n + 1 if none)."""
    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.comb(n, k) / 2**n
        if tail > alpha:
            return k + 1
    return 0


def fluctuation_scale(N: int, M: int, variance: float, kurtosis: float) -> float:
    """σ of a shuffle's top eigenvalue (original units): Tracy–Widom, widened for heavy tails."""
    sn, sm = math.sqrt(N), math.sqrt(M)
    tw = variance * (sn + sm) * (1 / sn + 1 / sm) ** (1 / 3)
    return tw * math.sqrt(max(1.0, (kurtosis - 1) / 2))


@dataclass(frozen=True)
class Vote:
    """The shuffles drawn so far for one layer: did each trap, and its λ₁/t."""

    trapped: tuple[bool, ...] = ()
    ratios: tuple[float, ...] = ()

    def add(self, trapped: bool, ratio: float) -> Vote:
        return Vote((*self.trapped, trapped), (*self.ratios, ratio))

    @property
    def fired(self) -> int:
        return sum(self.trapped)

    def mean(self) -> float:
        return sum(self.ratios) / len(self.ratios)

    def clear(self, spread: float) -> bool:
        """Whether the mean λ₁/t of the n shuffles drawn lies more than CLEAR_Z standard errors
        (spread/√n, spread = σ/t) from 1: the side of the threshold is then beyond doubt."""
        n = len(self.ratios)
        return n > 0 and abs(self.mean() - 1) > CLEAR_Z * spread / math.sqrt(n)

    def settled(self, spread: float) -> bool:
        """Whether more shuffles could not change the decision (see the module docstring)."""
        if self.clear(spread):
            return True
        k, left = critical_count(), MAX_SHUFFLES - len(self.trapped)
        return self.fired >= k or self.fired + left < k or left <= 0

    def has_trap(self, spread: float) -> bool:
        if self.clear(spread):
            return self.mean() > 1
        return self.fired >= critical_count()

    def share(self) -> float:
        return self.fired / len(self.trapped)

    def strength(self) -> float:
        ordered = sorted(self.ratios)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def lanczos_top_eigenvalue(G: torch.Tensor) -> float:
    """The largest eigenvalue of symmetric G by Lanczos with full reorthogonalization from a
    fixed start: deterministic (no randomness, one thread's products), a lower bound within
    ~1e-4 of λ₁ at the bulk edge, exact spikes to rounding. 34 ms at M = 1024 against a full
    eigvalsh's 135; below `EXACT_BELOW` rows the eigvalsh is cheaper (`traps._centred_test`).
    """
    M = G.shape[0]
    G = G.to(torch.float64)
    steps = min(LANCZOS_STEPS, M)
    basis = torch.zeros(steps, M, dtype=torch.float64, device=G.device)
    q = torch.cos(torch.arange(M, dtype=torch.float64, device=G.device) * 0.7 + 0.3)
    q /= q.norm()
    alphas, betas = [], []
    for j in range(steps):
        basis[j] = q
        w = G @ q
        alphas.append(float(q @ w))
        for _ in range(2):  # twice is enough (Kahan's "twice is enough")
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        if beta <= 1e-12 * abs(alphas[0]) or j == steps - 1:
            break
        betas.append(beta)
        q = w / beta
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(T)[-1])
