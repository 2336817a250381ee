"""Jobs: one matrix each, with what the runner needs to place, budget and resume it.

A job has a key (unique in its run: what the journal and the gather store), the layer whose row it
fills, a reader that returns its matrix on the CPU as (out, in), the bytes that matrix occupies once
paged in (known from headers, for the scheduler's byte budget) and its cost in flops (for sharding
over ranks). `scan` makes one job per layer; `compare` one per model and update of each layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_audit.layers import Layer
from llm_audit.sources import Source
from llm_audit.sources.safetensors_files import DTYPE_SIZES
from llm_audit.spectral.esd import Difference, Matrix, RowReader


@dataclass(frozen=True)
class Job:
    """One matrix to analyze; see the module docstring."""

    key: str
    layer: Layer
    read: Callable[[], Matrix]
    nbytes: int
    cost: int


def stored_bytes(layer: Layer) -> int:
    """Bytes of the layer's matrix as stored (float32 where the dtype is not a safetensors one)."""
    out_f, in_f = layer.out_in
    return out_f * in_f * DTYPE_SIZES.get(layer.tensor.dtype, 4)


def cost(layer: Layer) -> int:
    """Flops of the smaller-side Gram of an N x M matrix (M <= N): about N * M**2."""
    n, m = max(layer.out_in), min(layer.out_in)
    return n * m * m


def layer_job(key: str, layer: Layer, source: Source) -> Job:
    """The job reading `layer` from `source`."""
    return Job(key, layer, lambda: layer.matrix(source), stored_bytes(layer), cost(layer))


def oriented(W: torch.Tensor, layer: Layer) -> torch.Tensor:
    """The matrix as (out, in): HF GPT-2 Conv1D weights are stored (in, out)."""
    return W.T if layer.stored_in_out else W


def difference_job(
    key: str, other: Layer, other_source: Source, base: Layer, base_source: Source
) -> Job:
    """The job of the update ΔW = other − base, read in row blocks of both where they can be.

    Its row readers are made when the job is read, so a matrix read whole (a source without
    partial reads) lives only as long as the job; a blockwise update holds no full matrix.
    """

    def read() -> Matrix:
        return Difference(
            _row_reader(other, other_source, like=base.stored_in_out),
            _row_reader(base, base_source, like=base.stored_in_out),
            stored_shape=(base.stored_shape[0], base.stored_shape[1]),
            stored_in_out=base.stored_in_out,
        )

    in_blocks = other_source.partial_reads and base_source.partial_reads
    nbytes = 0 if in_blocks else stored_bytes(base) + stored_bytes(other)
    return Job(key, base, read, nbytes, cost(base))


def _row_reader(layer: Layer, source: Source, *, like: bool) -> RowReader:
    """Stored rows [a, b) of the layer: read alone where the source can, else from one full read.

    Rows are those of the base's storage (`like`: stored as (in, out)): a layer stored the other
    way (a GPTQ weight, stored transposed, against a float base) is read whole and transposed.
    """
    matrix = layer.matrix(source)  # reads it whole now where the source cannot read rows
    if layer.stored_in_out == like:
        return lambda a, b: matrix.rows(a, b, matrix.dtype)
    whole = matrix.materialize()  # (out, in)
    stored = whole.T.contiguous() if like else whole
    return lambda a, b: stored[a:b]
