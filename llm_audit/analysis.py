"""One matrix in, one outcome out: spectrum, power-law fit, MP metrics and traps of a layer.

Pure computation: no scheduling, files or ranks. The scheduler calls `analyze` on its pool with
matrices already on the compute device, one at a time.

On the CPU only the Gram products and the trap shuffle (`trap_metrics`' `threads`) may use several
threads: their results are bitwise the same for any thread count, while LAPACK's eigvalsh is not
(1e-11 relative differences between one and two threads), so everything else runs single-threaded
and a report never depends on how the scheduler happened to share the cores.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm_audit.config import AuditConfig
from llm_audit.layers import Layer
from llm_audit.spectral.esd import Matrix, gram, gram_eigenvalues, nonfinite_count, torch_threads
from llm_audit.spectral.metrics import mp_metrics, shape_columns, spectrum_metrics
from llm_audit.spectral.powerlaw import fit_power_law
from llm_audit.spectral.traps import trap_metrics
from llm_audit.vocabulary import FIT_FAILED, NONFINITE, SUCCESS, ZERO_MATRIX


@dataclass
class Outcome:
    """One row of a layer table (before flags), and the spectra kept for spectra.npz."""

    record: dict[str, Any]
    spectra: dict[str, np.ndarray] = field(default_factory=dict)


def layer_seed(base: int, name: str) -> int:
    """A per-layer seed that depends only on the base seed and the layer name, not on order."""
    return (base * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def base_record(layer: Layer) -> dict[str, Any]:
    """The columns every row has, analyzed or not: identity, shape and dtype."""
    out_f, in_f = layer.out_in
    return {
        "name": layer.name,
        "block": layer.block,
        "stack": layer.stack,
        "role": layer.role,
        "expert": layer.expert,
        "shape": [out_f, in_f],
        "dtype": layer.tensor.dtype,
        "quantization": layer.quantization,
        **shape_columns(out_f, in_f),
    }


def skipped(layer: Layer, status: str, reason: str | None) -> Outcome:
    """The row of a layer that is not analyzed, with its status and reason."""
    return Outcome({**base_record(layer), "status": status, "reason": reason})


def analyze(layer: Layer, W: Matrix, cfg: AuditConfig, *, gram_threads: int = 1) -> Outcome:
    """The outcome of one matrix (on the compute device, as (out, in)).

    On the CPU, the Gram of W and the trap shuffles use `gram_threads` threads and the rest one
    (see the docstring).
    """
    on_gpu = isinstance(W, torch.Tensor) and W.is_cuda
    with torch_threads(gram_threads if not on_gpu else torch.get_num_threads()):
        G = gram(W)
    problem = _matrix_problem(W, G)
    if problem:
        return skipped(layer, *problem)
    evals = gram_eigenvalues(G, long_side=max(W.shape)).cpu().numpy()
    return _outcome(layer, W, evals, cfg, threads=gram_threads)


def _matrix_problem(W: Matrix, G: torch.Tensor) -> tuple[str, str] | None:
    """NaN/Inf or all-zero weights, seen on the small Gram rather than by a pass over W."""
    if not bool(torch.isfinite(G).all()):
        bad = nonfinite_count(W)
        return NONFINITE, f"{bad} NaN or Inf weights"
    if float(torch.diagonal(G).sum()) == 0.0:
        return ZERO_MATRIX, "every weight is zero"
    return None


def _outcome(
    layer: Layer, W: Matrix, evals: np.ndarray, cfg: AuditConfig, *, threads: int
) -> Outcome:
    fit = fit_power_law(evals, estimator=cfg.estimator)
    record = {**base_record(layer), **spectrum_metrics(evals, fit)}
    record.update(mp_metrics(evals, Q=record["Q"], M=record["M"]))
    record["status"] = SUCCESS if fit.status == SUCCESS else FIT_FAILED
    record["reason"] = fit.reason
    spectra = {"evals": evals.astype(np.float64)}
    if cfg.traps:
        seed = layer_seed(cfg.seed, layer.name)
        traps, rand_spectra = trap_metrics(W, evals, seed=seed, threads=threads)
        record.update(traps)
        spectra.update(rand_spectra)
    return Outcome(record, spectra)
