"""Eigenvalues of WᵀW, exactly, in WeightWatcher's units (no 1/N).

Computed from the Gram matrix of the smaller side and `eigvalsh`: in float64, 2-4x faster than
the float64 SVD WeightWatcher runs, with absolute error about eps64·λ_max on every eigenvalue. A
float32 Gram and eigensolver (`precision`, spectral/precision.py) are faster again but lose
eigenvalues below about 1e-6·λ_max (some come out negative), which matters on real layers:
MiniLM's position embeddings fit xmin at 1e-4·λ_max; analysis.py bounds that error per layer and
recomputes in float64 where it could matter.
Same-shape matrices can be passed as one batch (one `bmm` and one batched `eigvalsh`), which is what
a GPU wants. A vocab×vocab Gram is never formed: the Gram is always on the smaller side. The pass
that forms the Gram also sums W's elements (`gram_and_sum`), so the trap test's mean needs no
second read of W (for a quantized matrix, no second dequantization)."""

from __future__ import annotations

import abc
import contextlib
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

from llm_audit.errors import LlmAuditWarning
from llm_audit.lazy import torch

EPS64 = sys.float_info.epsilon  # float64's machine epsilon, 2^-52
EPS32 = 2.0**-23  # float32's


CHUNK_BYTES = 16 * 2**20  # rows converted to float at a time: no whole-matrix float copy


# Strings, so that defining them imports no torch:
RowReader: TypeAlias = "Callable[[int, int], torch.Tensor]"  # stored rows [start, stop), on the CPU
Gather: TypeAlias = "Callable[[torch.Tensor], torch.Tensor]"  # elements at flat indices, as floats


class LazyMatrix(abc.ABC):
    """A matrix read in blocks of its stored rows, so that no whole float copy is ever needed.

    Its Gram is accumulated block by block (`gram`), and the trap shuffle gathers from `elements`,
    which for a checkpoint is the memory map itself. `shape` is (out, in), like a tensor's.
    """

    stored_shape: tuple[int, int]
    stored_in_out: bool  # stored as (in, out) (GPT-2 Conv1D): the matrix is the transpose
    dtype: torch.dtype  # what `rows` gives without a conversion

    @abc.abstractmethod
    def rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Stored rows [start, stop) as `dtype`, on the CPU."""

    def elements(self) -> torch.Tensor:
        """Every stored element, flat, in stored order (a memory map where the source has one)."""
        return self.rows(0, self.stored_shape[0], self.dtype).reshape(-1)

    def gatherer(self) -> Gather:
        """Stored elements at flat indices (the trap shuffle's reads, from all over the matrix);
        the function holds `elements()` while it lives."""
        values = self.elements()
        return lambda index: values.index_select(0, index)

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in), like the tensors it stands for."""
        rows, cols = self.stored_shape
        return (cols, rows) if self.stored_in_out else (rows, cols)

    def materialize(self) -> torch.Tensor:
        """The whole (out, in) matrix in `dtype` (a GPU, or a caller that needs a tensor)."""
        stored = self.rows(0, self.stored_shape[0], self.dtype)
        return stored.T if self.stored_in_out else stored

    def to(self, device: torch.device, non_blocking: bool = False) -> Matrix:
        """Itself on the CPU; materialized on a GPU, whose memory is not what bounds a scan."""
        if device.type == "cpu":
            return self
        return self.materialize().to(device, non_blocking=non_blocking)


@dataclass(frozen=True)
class RowMatrix(LazyMatrix):
    """A stored matrix behind a row reader: a checkpoint tensor, a slice of one, a dequantized one.

    `whole` reads every stored row at once where that is cheaper than concatenating blocks (a
    memory map: the pages come and go, no copy); without it `elements` reads them through `read`.
    `gather` decodes single elements where they are stored (quantized GGUF blocks), so that the
    trap shuffle needs no float copy of a quantized matrix, which is 4-7x its stored size.
    """

    read: RowReader
    stored_shape: tuple[int, int]
    stored_in_out: bool = False
    dtype: torch.dtype = field(default_factory=lambda: torch.float32)
    whole: Callable[[], torch.Tensor] | None = None
    gather: Gather | None = None

    def rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return self.read(start, stop).to(dtype)

    def elements(self) -> torch.Tensor:
        """`whole()` flat, or else the row blocks copied one by one into one tensor (a
        dequantized matrix: no temporaries of its full size)."""
        if self.whole is not None:
            return self.whole().reshape(-1)
        rows, cols = self.stored_shape
        out = torch.empty(rows, cols, dtype=self.dtype)
        for start, block in row_blocks(self, self.dtype):
            out[start : start + len(block)] = block
        return out.reshape(-1)

    def gatherer(self) -> Gather:
        return self.gather or super().gatherer()


@dataclass(frozen=True)
class Difference(LazyMatrix):
    """The update ΔW = other − base of two same-shape matrices, never held whole for its Gram.

    Both operands are read in blocks of stored rows (for a checkpoint file, a short-lived view of
    just those bytes) and subtracted in the Gram's dtype (float64), so the update of a vocabulary
    matrix costs two blocks of memory, not two more matrices. `elements` (the trap shuffle, which
    gathers from everywhere) and `materialize` hold it whole in float32, exact for bf16/fp16
    operands of like magnitude.
    """

    other: RowReader
    base: RowReader
    stored_shape: tuple[int, int]
    stored_in_out: bool
    dtype: torch.dtype = field(default_factory=lambda: torch.float32)

    def rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return self.other(start, stop).to(dtype, copy=True).sub_(self.base(start, stop))


Matrix: TypeAlias = "torch.Tensor | LazyMatrix"


def as_lazy(W: Matrix) -> LazyMatrix:
    """Any (out, in) matrix as a `LazyMatrix`; a tensor's rows stay on its device.

    A transposed view (a GPT-2 Conv1D weight read as (out, in)) keeps its storage order, so that
    `elements` is a view, not a copy, and the shuffle sees the same order on every device.
    """
    if isinstance(W, LazyMatrix):
        return W
    stored, in_out = (W.mT, True) if not W.is_contiguous() and W.mT.is_contiguous() else (W, False)
    rows, cols = stored.shape
    return RowMatrix(
        lambda a, b: stored[a:b], (rows, cols), in_out, dtype=stored.dtype, whole=lambda: stored
    )


def row_blocks(
    M: LazyMatrix, dtype: torch.dtype, *, chunk_bytes: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, block) over M's stored rows, each block at most `chunk_bytes` as `dtype`."""
    rows, cols = M.stored_shape
    size = torch.empty((), dtype=dtype).element_size()
    step = max(1, (chunk_bytes or CHUNK_BYTES) // (size * max(cols, 1)))
    for start in range(0, rows, step):
        yield start, M.rows(start, min(rows, start + step), dtype)


def float32_tolerance(N: int, max_diagonal: float) -> float:
    """Bound on the eigenvalue error of a float32 Gram summed over N rows.

    Rounding errors of a sum of N terms add up like a random walk, about sqrt(N)·eps32 of its
    largest diagonal entry; 4x that covers the errors measured on Gaussian, planted and offset
    matrices (tests/test_traps.py) by a wide margin, and stays far below the Tracy–Widom margin
    (a few percent of the mean eigenvalue) that separates the bulk from the threshold.
    """
    return 4 * math.sqrt(N) * EPS32 * max_diagonal


def nonfinite_count(W: Matrix) -> int:
    """How many entries are NaN or ±Inf, counted block by block."""
    return sum(int((~torch.isfinite(block)).sum()) for _, block in row_blocks(as_lazy(W), W.dtype))


def gram(W: Matrix, dtype: torch.dtype | None = None) -> torch.Tensor:
    """WᵀW or WWᵀ, whichever is smaller, in `dtype` (default float64); a tensor W may be a batch
    (B, rows, cols)."""
    return gram_and_sum(W, dtype)[0]


def gram_and_sum(W: Matrix, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram (`gram`, default float64) and the sum of W's elements (float64, one per batch
    entry), in one pass.

    The long side is consumed in chunks, each cast into `dtype`, so memory beyond W itself is the
    small Gram plus one chunk, whatever W's dtype. A `LazyMatrix` whose long side runs along its
    stored rows (an embedding, most layers) is read block by block and never held whole; a wide
    one is read whole as stored (a memory map) and consumed in column chunks.
    """
    dtype = dtype or torch.float64
    if isinstance(W, LazyMatrix):
        rows, cols = W.stored_shape
        if rows >= cols:
            return _accumulate(rows, cols, (), dtype, W.rows)
        return _accumulate(cols, rows, (), dtype, _column_reader(W))
    tall = W.mT if W.shape[-2] < W.shape[-1] else W
    return _accumulate(
        tall.shape[-2],
        tall.shape[-1],
        tall.shape[:-2],
        dtype,
        lambda a, b, t: tall[..., a:b, :].to(t),
    )


def _column_reader(W: LazyMatrix) -> Callable[[int, int, torch.dtype], torch.Tensor]:
    """Columns [a, b) of a wide matrix read whole as stored, as rows of its transpose; a
    difference is subtracted chunk by chunk in the Gram's dtype, like its row blocks."""
    rows = W.stored_shape[0]
    if isinstance(W, Difference):
        other, base = W.other(0, rows).mT, W.base(0, rows).mT
        return lambda a, b, t: other[a:b].to(t, copy=True).sub_(base[a:b])
    wide = W.rows(0, rows, W.dtype).mT
    return lambda a, b, t: wide[a:b].to(t)


def _accumulate(
    rows: int,
    cols: int,
    batch: tuple[int, ...],
    dtype: torch.dtype,
    read: Callable[[int, int, torch.dtype], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ chunkᵀ·chunk over the row chunks [a, b) that `read` gives of a tall matrix, on their
    device, and the sum of their elements: rows summed in `dtype`, those sums in float64 (a
    float64 sum of every element costs 11x more, and the mean only centres the trap shuffle)."""
    size = torch.empty((), dtype=dtype).element_size()
    step = min(rows, max(1, CHUNK_BYTES // (size * cols * math.prod(batch))))
    total: GramSum | None = None
    elements: torch.Tensor | None = None
    for start in range(0, rows, step):
        chunk = read(start, min(rows, start + step), dtype)
        total = total or GramSum(cols, batch, dtype, chunk.device)
        total.add(chunk)
        rows_sum = chunk.sum(dim=-1).sum(dim=-1, dtype=torch.float64)
        elements = rows_sum if elements is None else elements + rows_sum
    assert total is not None and elements is not None, "a matrix has at least one row"
    return total.result(), elements


GRAM_PANEL = 256  # columns per panel of the upper triangle (panels narrower than this run slower)
MAX_GRAM_PANELS = 8


class GramSum:
    """Σ chunkᵀ·chunk over row chunks, computed on the upper triangle only (a SYRK).

    The M×M Gram is cut into column panels [a, b); each chunk adds chunk[:, a:b]ᵀ·chunk[:, a:]
    to rows [a, b) of the Gram, skipping the blocks below the diagonal. With p panels that is
    (p+1)/(2p) of a full product: measured 25-40% faster than one GEMM for M of 1024-4096 on
    these 2 cores, float32 and float64 alike (torch has no SYRK). `result` mirrors the upper
    blocks below the diagonal. The panels depend only on M, so the sum is the same whatever
    the chunk, the batch or the thread count.
    """

    def __init__(self, cols: int, batch: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        self.G = torch.zeros(*batch, cols, cols, dtype=dtype, device=device)
        panels = min(MAX_GRAM_PANELS, max(1, cols // GRAM_PANEL))
        edges = [round(cols * i / panels) for i in range(panels + 1)]
        self.panels = list(itertools.pairwise(edges))

    def add(self, chunk: torch.Tensor) -> None:
        """G += chunkᵀ·chunk for a (…, rows, M) chunk, upper panels only."""
        for a, b in self.panels:
            target, left, right = self.G[..., a:b, a:], chunk[..., :, a:b].mT, chunk[..., :, a:]
            if target.dim() == 3:
                target.baddbmm_(left, right)
            else:
                target.addmm_(left, right)

    def result(self) -> torch.Tensor:
        """The whole symmetric Gram."""
        for a, b in self.panels:
            self.G[..., b:, a:b] = self.G[..., a:b, b:].mT
        return self.G


def eigenvalues(W: Matrix, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Ascending eigenvalues of WᵀW (min(rows, cols) of them, float64, same device as W), from
    a Gram in `dtype` (default float64) and a float64 eigensolver."""
    return gram_eigenvalues(gram(W, dtype), long_side=max(W.shape[-2], W.shape[-1]))


def gram_eigenvalues(G: torch.Tensor, *, long_side: int) -> torch.Tensor:
    """Ascending eigenvalues (float64) of a Gram matrix (or a batch of them) from `gram`, by a
    float64 eigensolver whatever the Gram's dtype (`analysis.spectrum` says why).

    Values within the Gram's rounding error of zero are set to exactly 0: they are numerically
    zero, and a rank count needs them to be. For a float64 Gram that error is at most
    long_side·eps64·λ_max; for a float32 one, summed over long_side rows, 4·√long_side·eps32
    times its largest diagonal entry (`float32_tolerance`, which `precision.eigenvalue_bound`
    counts in).
    """
    evals = torch.linalg.eigvalsh(G.to(torch.float64))
    lam_max = evals[..., -1:].clamp_min(0)
    if G.dtype == torch.float64:
        tol = long_side * EPS64 * lam_max
    else:
        largest = G.diagonal(dim1=-2, dim2=-1).amax(dim=-1, keepdim=True).to(torch.float64)
        tol = float32_tolerance(long_side, 1.0) * largest
    if bool((evals < -100 * tol).any()):
        warnings.warn(
            "eigenvalues of WᵀW below -100·tolerance were clipped to 0; the matrix may hold "
            f"values near the {str(G.dtype).removeprefix('torch.')} range",
            LlmAuditWarning,
            stacklevel=2,
        )
    return torch.where(evals.abs() <= tol, torch.zeros_like(evals), evals).clamp_min(0)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch with `n` intra-op threads on this thread, restoring its setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
