"""A keyed pseudo-random permutation of a matrix's elements, evaluated for any block of positions.

The trap test needs W's elements in random order. `randperm` + `index_select` holds an index of
every element and a shuffled copy (about 6.5 bytes per stored bf16 element on top of W); this holds
neither: position i of the shuffled matrix holds element π(i) of W, and π is computed for the
positions of one row block at a time, whose values are then gathered from W where it lives.

π is a bijection of [0, n). A Feistel network is a bijection of [0, 2^k) whatever its round
functions; applying it again to the values that land in [n, 2^k) (cycle-walking, Black & Rogaway
2002) restricts it to [0, n), and since 2^k < 2n that takes under two tries on average. The round
functions are tables of random integers drawn from the seed, and four rounds of random functions
make a pseudo-random permutation (Luby & Rackoff 1988). Being integer arithmetic on tables, π is
the same on CPU and GPU, for any block size and any number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from llm_audit.spectral.esd import torch_threads

ROUNDS = 4
INT32_BITS = 31  # indices below 2^31 are computed in int32 (about 1.5x faster than int64)
CHUNK = 2**18  # indices whose rounds run in cache together (1.3x faster than 4M at a time)


class Permutation:
    """π, a pseudo-random bijection of [0, size) keyed by `seed`; call it on a tensor of indices.

    The index is split into a left and a right part (of `bits // 2` and the remaining bits); each
    round maps (L, R) to (R, L xor T[R]) with a table T of random values, so the two widths swap
    from one round to the next and any `bits` works, odd or even.
    """

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError(f"a permutation needs at least one element, got size={size}")
        self.size = size
        self.bits = max(2, (size - 1).bit_length())
        self.dtype = torch.int32 if self.bits <= INT32_BITS else torch.int64
        generator = torch.Generator().manual_seed(seed)
        self._widths = []  # (left, right) bits of each round
        self._tables = []  # per round, R -> (R << left) | T[R], T[R] random in [0, 2^left)
        left, right = self.bits // 2, self.bits - self.bits // 2
        for _ in range(ROUNDS):
            self._widths.append((left, right))
            table = torch.randint(0, 2**left, (2**right,), generator=generator)
            self._tables.append((torch.arange(2**right) << left | table).to(self.dtype))
            left, right = right, left
        self._on: dict[torch.device, list[torch.Tensor]] = {torch.device("cpu"): self._tables}

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """π(index) for indices in [0, size), same shape, in `self.dtype`, on index's device."""
        x = index.to(self.dtype, copy=True)
        self._permute(x.reshape(-1), self._tables_on(x.device))
        return x

    def block(
        self, start: int, stop: int, device: torch.device | None = None, *, threads: int = 1
    ) -> torch.Tensor:
        """π(start), ..., π(stop - 1): where the elements of positions [start, stop) come from.
        `threads` CPU threads share the work; the result does not depend on it."""
        out = torch.empty(stop - start, dtype=self.dtype, device=device)
        self.gather(lambda index: index, start, out, threads=threads)
        return out

    def gather(
        self,
        take: Callable[[torch.Tensor], torch.Tensor],
        start: int,
        out: torch.Tensor,
        *,
        threads: int = 1,
    ) -> None:
        """out[k] = take(π(start + k)) for every k, converted to out's dtype.

        CHUNK positions at a time, and each chunk's source indices are gathered by the thread
        that computed them while they are in cache. On the CPU, `threads` Python threads take
        every `threads`-th chunk, each running torch on one thread: the steps are too short for
        an OpenMP team (each waits for every thread, and with another process on the second
        core two OpenMP threads made π 4-20x slower), and a random gather waits on memory,
        which index_select does on one thread. The result does not depend on `threads`.
        """
        tables = self._tables_on(out.device)
        starts = range(start, start + len(out), CHUNK)
        threads = min(threads, len(starts)) if out.device.type == "cpu" else 1

        def fill(share: range) -> None:
            with torch_threads(1):
                for a in share:
                    b = min(a + CHUNK, start + len(out))
                    index = torch.arange(a, b, device=out.device, dtype=self.dtype)
                    self._permute(index, tables)
                    out[a - start : b - start] = take(index)

        shares = [starts[i::threads] for i in range(max(threads, 1))]
        if len(shares) == 1:
            fill(shares[0])
            return
        with ThreadPoolExecutor(len(shares)) as pool:
            list(pool.map(fill, shares))

    def _permute(self, x: torch.Tensor, tables: list[torch.Tensor]) -> None:
        """π of one chunk in place (its rounds run in cache); cycle-walking goes again on the
        indices that landed outside [0, size) until none is left."""
        self._feistel(x, tables)
        walking = (x >= self.size).nonzero().squeeze(1)
        while walking.numel():
            again = self._feistel(x[walking], tables)
            x[walking] = again
            walking = walking[again >= self.size]

    def _feistel(self, x: torch.Tensor, tables: list[torch.Tensor]) -> torch.Tensor:
        """The Feistel network applied to x in place, with two scratch tensors of x's size.

        A round maps (L, R) to (R, L xor T[R]), that is x to ((R << left) | T[R]) xor L: the
        shift and the or are folded into the round's table, so a round is four passes over x.
        """
        low, looked_up = torch.empty_like(x), torch.empty_like(x)
        for (_, right), table in zip(self._widths, tables, strict=True):
            torch.bitwise_and(x, (1 << right) - 1, out=low)
            x.bitwise_right_shift_(right)  # L, the high part
            torch.index_select(table, 0, low, out=looked_up)
            x.bitwise_xor_(looked_up)
        return x

    def _tables_on(self, device: torch.device) -> list[torch.Tensor]:
        if device not in self._on:
            self._on[device] = [t.to(device) for t in self._tables]
        return self._on[device]
