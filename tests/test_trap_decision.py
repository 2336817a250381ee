"""The trap decision: the significance vote, the spread scale, λ₁ by Lanczos, seed stability."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm_audit.scan import scan
from llm_audit.spectral import trap_decision as td
from llm_audit.spectral.traps import trap_metrics, trap_threshold

FIXTURES = Path(__file__).parent / "fixtures" / "calibration"


def test_critical_count_is_the_smallest_significant_majority() -> None:
    k = td.critical_count(24, 0.01)
    tail = sum(math.comb(24, j) for j in range(k, 25)) / 2**24
    below = sum(math.comb(24, j) for j in range(k - 1, 25)) / 2**24
    assert k == 19 and tail <= 0.01 < below


def _top_ratio_spread(W: torch.Tensor, shuffles: int) -> float:
    """The measured σ/t of a shuffle's top centred eigenvalue over `shuffles` shuffles."""
    N, M = W.shape
    x = (W - W.mean()).reshape(-1)
    t = trap_threshold(float(x.square().mean()) * N, N / M, M)
    tops = []
    for s in range(shuffles):
        S = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(s))].view(N, M)
        tops.append(float(torch.linalg.eigvalsh(S.T @ S)[-1]))
    return float(np.std(tops)) / t


@pytest.mark.parametrize("kind", ["gaussian", "student5"])
def test_fluctuation_scale_matches_the_measured_spread(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(600, 150, generator=g, dtype=torch.float64)
    if kind == "student5":
        W = torch.distributions.StudentT(5.0).sample((600, 150)).double()
    x = W - W.mean()
    v = float(x.square().mean())
    kurtosis = float(x.pow(4).mean()) / v**2
    N, M = W.shape
    estimate = td.fluctuation_scale(N, M, v, kurtosis) / trap_threshold(v * N, N / M, M)
    measured = _top_ratio_spread(W, 40)
    assert measured / 2 < estimate < 2 * measured


def test_lanczos_top_eigenvalue_matches_eigvalsh() -> None:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(900, 300, generator=g, dtype=torch.float64)
    bulk = X.T @ X
    exact = float(torch.linalg.eigvalsh(bulk)[-1])
    assert td.lanczos_top_eigenvalue(bulk) == pytest.approx(exact, rel=1e-3)
    assert td.lanczos_top_eigenvalue(bulk) <= exact * (1 + 1e-12)  # a Ritz value: a lower bound
    X[7, 11] = 400.0  # a spike far out: converges to rounding
    spiked = X.T @ X
    assert td.lanczos_top_eigenvalue(spiked) == pytest.approx(
        float(torch.linalg.eigvalsh(spiked)[-1])
    )


def test_a_clear_shuffle_decides_alone_and_a_coin_toss_reads_trap_free() -> None:
    spread = 0.01
    assert td.Vote().add(True, 1.2).settled(spread)  # 20σ above: one shuffle
    assert td.Vote().add(False, 0.8).settled(spread)
    near = td.Vote().add(True, 1.01)
    assert not near.settled(spread)
    # half the shuffles trap, right at the threshold: never significant, settled trap-free early
    vote = td.Vote()
    for i in range(td.MAX_SHUFFLES):
        vote = vote.add(i % 2 == 0, 1.0 + (0.001 if i % 2 == 0 else -0.001))
        if vote.settled(spread):
            break
    assert not vote.has_trap(spread) and len(vote.trapped) < td.MAX_SHUFFLES
    # every shuffle traps, but barely: settled trapped by the vote
    vote = td.Vote()
    while not vote.settled(spread):
        vote = vote.add(True, 1.004)
    assert vote.has_trap(spread) and vote.fired == td.critical_count()


def test_record_carries_the_evidence() -> None:
    W = torch.randn(400, 120, generator=torch.Generator().manual_seed(3))
    W[5, 6] = 60.0
    evals = torch.linalg.eigvalsh((W.T @ W).double()).numpy()
    rec, _ = trap_metrics(W, evals, seed=0)
    assert rec["num_traps"] == 1 and rec["trap_share"] == 1.0 and rec["trap_draws"] == 1
    assert rec["trap_strength"] > 2 and rec["trap_threshold"] > 0
    W[5, 6] = 0.0
    rec, _ = trap_metrics(W, torch.linalg.eigvalsh((W.T @ W).double()).numpy(), seed=0)
    assert rec["num_traps"] == 0 and rec["trap_strength"] < 1


@pytest.mark.slow
def test_verdicts_of_the_fixtures_do_not_depend_on_the_seed() -> None:
    """Seeds 100-123, none of which any threshold was chosen on."""
    for fixture, expected in (("peak", {"healthy", "watch"}), ("collapsed", {"pathological"})):
        tensors = load_file(str(FIXTURES / f"{fixture}.safetensors"))
        verdicts = [scan(tensors, traps=True, seed=s).summary["verdict"] for s in range(100, 124)]
        assert set(verdicts) <= expected, (fixture, verdicts)
