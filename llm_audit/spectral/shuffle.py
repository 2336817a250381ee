"""A keyed pseudo-random permutation of a matrix's elements, evaluated for any block of positions.

The trap test needs W's elements in random order. `randperm` + `index_select` holds an index of
every element and a shuffled copy (about 6.5 bytes per stored bf16 element on top of W); this holds
neither: position i of the shuffled matrix holds element π(i) of W, and π is computed for the
positions of one row block at a time, whose values are then gathered from W where it lives.

π is a bijection of [0, n). It is a mixed-radix Feistel network (the construction of NIST's
format-preserving FF1): the domain is split as n = a·b, a position x as (x // b, x % b), and each
round maps (L, R) to (R, (L + T[R]) mod a), swapping the two radices, so an even number of rounds
ends where it started. Any tables give a bijection; random tables drawn from the seed make four
rounds a pseudo-random permutation (Luby & Rackoff 1988) when a and b are of like size. A matrix
has n = N·M, which nearly always has a divisor near √n; when it has none (n prime, say) the
network runs on a slightly larger a·b < n + 2√n + 1 and walks the few positions that land past
n through it again (cycle-walking, Black & Rogaway 2002). Being integer arithmetic on tables,
π is the same on CPU and GPU, for any block size and any number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from llm_audit.spectral.esd import torch_threads

ROUNDS = 4
INT32_LIMIT = 2**31  # domains below this are computed in int32 (about 1.5x faster than int64)
CHUNK = 2**18  # positions whose rounds run in cache together (1.3x faster than 4M at a time)
MAX_RADIX_RATIO = 16  # a divisor split more lopsided than b/a = 16 is replaced by a cover


def split(n: int) -> tuple[int, int]:
    """Radices (a, b) of like size with a·b ≥ n: the largest divisor a ≤ √n of n when
    b/a stays within MAX_RADIX_RATIO (then a·b = n exactly), else a cover ⌈√n⌉·⌈n/⌈√n⌉⌉."""
    root = math.isqrt(n)
    lowest = max(2, math.ceil(root / math.sqrt(MAX_RADIX_RATIO)))
    for a in range(root, lowest - 1, -1):
        if n % a == 0:
            return a, n // a
    a = root if root * root == n else root + 1
    return a, -(-n // a)


class Permutation:
    """π, a pseudo-random bijection of [0, size) keyed by `seed`; call it on a tensor of indices."""

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError(f"a permutation needs at least one element, got size={size}")
        self.size = size
        self.a, self.b = split(size)
        self.dtype = torch.int32 if self.a * self.b < INT32_LIMIT else torch.int64
        generator = torch.Generator().manual_seed(seed)
        # Per round (modulus, table): the table maps the low part R to T[R] − modulus, T[R]
        # random in [0, modulus), so that L + table[R] lies in [−modulus, modulus).
        self._rounds: list[tuple[int, torch.Tensor]] = []
        high, low = self.a, self.b
        for _ in range(ROUNDS):
            table = torch.randint(0, high, (low,), generator=generator) - high
            self._rounds.append((high, table.to(self.dtype)))
            high, low = low, high
        self._on: dict[torch.device, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """π(index) for indices in [0, size), same shape, in `self.dtype`, on index's device."""
        flat = index.reshape(-1).to(self.dtype)
        tables, _, _ = self._tables_on(flat.device)
        out = self._walk(self._network(flat // self.b, flat % self.b, tables), tables)
        return out.reshape(index.shape)

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
        tables, quotients, remainders = self._tables_on(out.device)
        starts = range(start, start + len(out), CHUNK)
        threads = min(threads, len(starts)) if out.device.type == "cpu" else 1

        def fill(share: range) -> None:
            with torch_threads(1):
                for first in share:
                    count = min(CHUNK, start + len(out) - first)
                    q, r = divmod(first, self.b)  # positions split by the precomputed tiles
                    high = quotients[r : r + count] + q
                    low = remainders[r : r + count].clone()
                    index = self._walk(self._network(high, low, tables), tables)
                    out[first - start : first - start + count] = take(index)

        shares = [starts[i::threads] for i in range(max(threads, 1))]
        if len(shares) == 1:
            fill(shares[0])
            return
        with ThreadPoolExecutor(len(shares)) as pool:
            list(pool.map(fill, shares))

    def _network(
        self, high: torch.Tensor, low: torch.Tensor, tables: list[torch.Tensor]
    ) -> torch.Tensor:
        """The Feistel network on (x // b, x % b), in place; returns x' = L'·b + R'.

        A round adds table[R] to L (the result lies in [−modulus, modulus)) and adds the
        modulus back where it is negative, by its sign bits: five passes, no division.
        """
        sign_shift = torch.iinfo(self.dtype).bits - 1
        scratch = torch.empty_like(high)
        for (modulus, _), table in zip(self._rounds, tables, strict=True):
            torch.index_select(table, 0, low, out=scratch)
            high.add_(scratch)
            torch.bitwise_right_shift(high, sign_shift, out=scratch)  # −1 where negative
            high.add_(scratch.bitwise_and_(modulus))
            high, low = low, high  # (L, R) → (R, L + T[R] mod modulus)
        return high.mul_(self.b).add_(low)

    def _walk(self, x: torch.Tensor, tables: list[torch.Tensor]) -> torch.Tensor:
        """Cycle-walking: values past `size` (only when the domain is a cover) go through the
        network again until each lands in [0, size)."""
        if self.a * self.b == self.size:
            return x
        walking = (x >= self.size).nonzero().squeeze(1)
        while walking.numel():
            again = x[walking]
            again = self._network(again // self.b, again % self.b, tables)
            x[walking] = again
            walking = walking[again >= self.size]
        return x

    def _tables_on(
        self, device: torch.device
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The round tables, and x // b and x % b for x in [0, CHUNK + b), on `device`."""
        if device not in self._on:
            tile = torch.arange(CHUNK + self.b, dtype=self.dtype, device=device)
            tables = [table.to(device) for _, table in self._rounds]
            self._on[device] = (tables, tile // self.b, tile % self.b)
        return self._on[device]
