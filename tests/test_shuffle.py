"""The keyed Feistel permutation: a bijection, deterministic, blockwise, and as random as randperm
for what the trap test measures (planted entries sharing a row, spikes of Gaussian and offset
matrices)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch

from llm_audit.spectral import shuffle, traps
from llm_audit.spectral.esd import eigenvalues
from llm_audit.spectral.shuffle import Permutation

SIZES = [*range(1, 70), 127, 128, 129, 255, 256, 257, 1000, 4095, 4096, 4097, 65_537]


@pytest.mark.parametrize("seed", [0, 1, 2, 12345, 2**63 - 1])
def test_permutation_is_a_bijection_for_every_small_size(seed: int) -> None:
    for size in SIZES:
        values = Permutation(size, seed).block(0, size).long()
        assert torch.equal(values.sort().values, torch.arange(size)), size


def test_same_seed_same_permutation_other_seed_another() -> None:
    size = 10_007
    a, b = Permutation(size, 7).block(0, size), Permutation(size, 7).block(0, size)
    assert torch.equal(a, b)
    c = Permutation(size, 8).block(0, size)
    assert (a != c).float().mean() > 0.99


def test_known_values_pin_the_permutation() -> None:
    """Trap counts and the calibration tests' seeds depend on π itself: a faster evaluation must
    give the same values (these are from the mixed-radix network of issue 13)."""
    assert Permutation(1000, 0).block(0, 8).tolist() == [195, 963, 463, 130, 620, 929, 436, 885]
    # 3·2^18 + 1 has no divisor near its root: a cover, with cycle-walking, across chunks.
    middle = Permutation(3 * 2**18 + 1, 5).block(2**18 - 2, 2**18 + 2).tolist()
    assert middle == [526224, 327888, 546471, 355237]


@pytest.mark.parametrize("size", [1000, 3 * 2**18 + 1, 384 * 1536, 2**31 + 11])
def test_vectorized_network_equals_the_definition(size: int) -> None:
    """The rounds as written in the docstring, one Python integer at a time: (L, R) → (R,
    (L + T[R]) mod a), radices swapping, cycle-walking past `size`. The tensor version adds
    moduli back by sign bits and splits positions by precomputed tiles."""
    perm = Permutation(size, 21)
    tables = [(modulus, [t + modulus for t in table.tolist()]) for modulus, table in perm._rounds]

    def definition(x: int) -> int:
        while True:
            high, low = divmod(x, perm.b)
            for modulus, table in tables:
                high, low = low, (high + table[low]) % modulus
            x = high * perm.b + low
            if x < size:
                return x

    positions = [0, 1, size // 2, size - 2, size - 1, *range(shuffle.CHUNK - 3, shuffle.CHUNK + 3)]
    positions = [x for x in positions if x < size]
    got = [int(perm.block(x, x + 1)[0]) for x in positions]
    assert got == [definition(x) for x in positions]


def test_any_split_into_blocks_gives_the_same_permutation() -> None:
    """What a rank or a row block computes depends only on its positions, not on the split."""
    size = 30_011
    perm = Permutation(size, 3)
    whole = perm.block(0, size)
    cuts = [0, 1, 17, 4096, 4097, 20_000, size]
    parts = [perm.block(a, b) for a, b in itertools.pairwise(cuts)]
    assert torch.equal(torch.cat(parts), whole)
    index = torch.tensor([5, 29_999, 0, 77])
    assert torch.equal(perm(index), whole[index])


def test_threads_share_the_chunks_without_changing_the_permutation() -> None:
    """Several CPU threads each take every n-th chunk of a block; positions stay where they were."""
    size = 5 * shuffle.CHUNK + 123
    perm = Permutation(size, 11)
    one = perm.block(7, size, threads=1)
    for threads in (2, 3, 8):
        assert torch.equal(perm.block(7, size, threads=threads), one)
    assert torch.equal(torch.sort(perm.block(0, size, threads=2)).values, torch.arange(size))


def test_int64_path_equals_int32_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Matrices of 2^31 elements or more are indexed in int64: the same arithmetic."""
    narrow = Permutation(70_000, 9).block(0, 70_000)
    monkeypatch.setattr(shuffle, "INT32_LIMIT", 0)
    wide = Permutation(70_000, 9)
    assert wide.dtype == torch.int64
    assert torch.equal(wide.block(0, 70_000), narrow.long())


def test_huge_size_blocks_stay_in_range() -> None:
    size = 262_144 * 16_384 + 3  # over 2^32: int64
    values = Permutation(size, 1).block(size - 100_000, size)
    assert values.dtype == torch.int64
    assert int(values.min()) >= 0 and int(values.max()) < size
    assert len(torch.unique(values)) == len(values)


def test_positions_are_uniform_over_seeds() -> None:
    """Where one element lands, over 1,000 seeds: every row about equally often (chi-square)."""
    rows, cols = 16, 24
    landed = torch.zeros(rows)
    for seed in range(1000):
        position = int((Permutation(rows * cols, seed).block(0, rows * cols) == 5).nonzero()[0])
        landed[position // cols] += 1
    expected = 1000 / rows
    chi2 = float(((landed - expected) ** 2 / expected).sum())
    assert chi2 < 37.7  # the 0.999 quantile of chi-square with 15 degrees of freedom


def _groups_after_shuffle(cells: list[int], rows: int, cols: int, order: torch.Tensor) -> int:
    """Planted elements (flat indices) after a shuffle: groups linked by a shared row or column."""
    order = order.long()
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order))  # position of each element
    spots = [(int(where[c]) // cols, int(where[c]) % cols) for c in cells]
    parent = list(range(len(spots)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(spots):
        for j, b in enumerate(spots[:i]):
            if a[0] == b[0] or a[1] == b[1]:
                parent[root(i)] = root(j)
    return len({root(i) for i in range(len(spots))})


def test_planted_entries_share_rows_as_often_as_with_randperm() -> None:
    """The trap count of planted entries is their number of row/column groups after the shuffle;
    its distribution over 3,000 seeds matches randperm's (two-proportion z-test on merges)."""
    rows, cols, n = 64, 32, 3000
    cells = [3, 500, 1001, 1500, 2047, 700, 1234, 99]
    ours = [
        _groups_after_shuffle(cells, rows, cols, Permutation(rows * cols, s).block(0, rows * cols))
        for s in range(n)
    ]
    g = torch.Generator().manual_seed(0)
    theirs = [
        _groups_after_shuffle(cells, rows, cols, torch.randperm(rows * cols, generator=g))
        for _ in range(n)
    ]
    p1, p2 = np.mean(np.array(ours) < len(cells)), np.mean(np.array(theirs) < len(cells))
    pooled = (p1 + p2) / 2
    z = (p1 - p2) / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert 0.3 < p2 < 0.9  # merges are common at this size, so the test has power
    assert abs(z) < 4, (p1, p2)
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.1


@pytest.mark.parametrize("kind", ["gaussian", "planted", "offset"])
def test_trap_counts_over_seeds_match_randperm(kind: str) -> None:
    """num_traps and rand_num_spikes of one matrix over 30 layer seeds, against the counts a
    randperm shuffle gives the same pipeline (the Feistel shuffle is monkeypatched out)."""
    g = torch.Generator().manual_seed(4)
    W = torch.randn(384, 160, generator=g)
    if kind == "planted":
        W[10, 20] = W[200, 5] = W[300, 150] = 40.0
    if kind == "offset":
        W += 0.3
    evals = eigenvalues(W).numpy()
    ours = [_counts(W, evals, seed) for seed in range(30)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traps, "Permutation", _RandpermPermutation)
        theirs = [_counts(W, evals, seed) for seed in range(30)]
    for column in (0, 1):
        a, b = np.array([c[column] for c in ours]), np.array([c[column] for c in theirs])
        assert abs(a.mean() - b.mean()) <= 0.35, (kind, column, a, b)
    if kind == "gaussian":
        assert ours == theirs == [(0, 0)] * 30
    if kind == "offset":
        assert all(c == (0, 1) for c in ours + theirs)


def _counts(W: torch.Tensor, evals: np.ndarray, seed: int) -> tuple[int, int]:
    record, _ = traps.trap_metrics(W, evals, seed=seed)
    return record["num_traps"], record["rand_num_spikes"]


class _RandpermPermutation:
    """randperm with the Permutation interface: the reference the Feistel shuffle replaces."""

    def __init__(self, size: int, seed: int):
        self._order = torch.randperm(size, generator=torch.Generator().manual_seed(seed % 2**63))

    def gather(
        self, take: Callable[[torch.Tensor], torch.Tensor], start: int, out: torch.Tensor, **_: int
    ) -> None:
        out[:] = take(self._order[start : start + len(out)].to(out.device))
