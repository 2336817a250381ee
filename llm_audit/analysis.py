"""One matrix in, one outcome out: spectrum, power-law fit, MP metrics and traps of a layer.

Pure computation: no scheduling, files or ranks. The scheduler calls `analyze` on its pool with
matrices already on the compute device, one at a time.

On the CPU only the Gram products and the trap shuffle (`trap_metrics`' `threads`) may use several
threads: their results are bitwise the same for any thread count, while LAPACK's eigvalsh is not
(1e-11 relative differences between one and two threads), so everything else runs single-threaded
and a report never depends on how the scheduler happened to share the cores.

The spectrum is computed in the configured precision (spectral/precision.py). A float32 spectrum
comes with its error bound, and a layer whose alpha could lie on the other side of a threshold
within that bound, under any xmin the bound admits, is computed again in float64: float32 never
decides a flag. Each record says which precision its numbers come from.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm_audit.config import AuditConfig
from llm_audit.layers import Layer
from llm_audit.spectral.esd import (
    Matrix,
    gram_and_sum,
    gram_eigenvalues,
    nonfinite_count,
    torch_threads,
)
from llm_audit.spectral.metrics import mp_metrics, shape_columns, spectrum_metrics
from llm_audit.spectral.powerlaw import PowerLawFit, fit_bounds, fit_power_law
from llm_audit.spectral.precision import dtype_name, eigenvalue_bound, settled, spectrum_dtype
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


@dataclass(frozen=True)
class Spectrum:
    """W's eigenvalues (float64, ascending), its mean weight from the same pass, the dtype they
    were computed in and their error bound (0 in float64, whose rounding is far below any fit's
    concern)."""

    evals: np.ndarray
    mean: float
    dtype: torch.dtype
    bound: float


def spectrum(W: Matrix, dtype: torch.dtype, *, threads: int = 1) -> Spectrum | tuple[str, str]:
    """W's spectrum from a Gram in `dtype` and a float64 eigensolver, or the status and reason
    of a matrix with no spectrum (NaN/Inf or all-zero weights). `threads` run the Gram on the CPU.

    The eigensolver is float64 whatever `dtype`: a float32 one errs by about eps32·λ_max on
    every eigenvalue, which moved alpha by up to 8.8e-4 on SmolLM2 (the small eigenvalues near
    xmin), where a float32 Gram with a float64 eigensolver moved it by at most 2.4e-6
    (benchmarks/results_precision.md). The Gram is where a float32 spectrum saves time.
    """
    on_gpu = isinstance(W, torch.Tensor) and W.is_cuda
    with torch_threads(threads if not on_gpu else torch.get_num_threads()):
        G, total = gram_and_sum(W, dtype)
    problem = _matrix_problem(W, G)
    if problem:
        return problem
    N, M = max(W.shape), min(W.shape)
    evals = gram_eigenvalues(G, long_side=N).cpu().numpy()
    bound = 0.0
    if dtype != torch.float64:
        bound = eigenvalue_bound(N, M, float(G.diagonal().max()), float(evals[-1]))
    return Spectrum(evals, float(total) / (N * M), dtype, bound)


def analyze(layer: Layer, W: Matrix, cfg: AuditConfig, *, gram_threads: int = 1) -> Outcome:
    """The outcome of one matrix (on the compute device, as (out, in)).

    On the CPU, the Gram of W and the trap shuffles use `gram_threads` threads and the rest one
    (see the docstring).
    """
    device = W.device if isinstance(W, torch.Tensor) else torch.device("cpu")
    dtype = spectrum_dtype(cfg.precision, device)
    found = spectrum(W, dtype, threads=gram_threads)
    fit = _fit(found, cfg)
    columns: dict[str, Any] = {"precision_used": dtype_name(dtype), "recomputed_float64": False}
    if dtype != torch.float64:
        why, bound_columns = _float32_check(found, fit, cfg)
        columns.update(bound_columns)
        if why is not None:
            found = spectrum(W, torch.float64, threads=gram_threads)
            fit = _fit(found, cfg)
            columns.update(precision_used="float64", recomputed_float64=True, recompute_reason=why)
    if isinstance(found, tuple):
        out = skipped(layer, *found)
    else:
        assert fit is not None
        out = _outcome(layer, W, found, fit, cfg, threads=gram_threads)
    out.record.update(columns)
    return out


def _fit(found: Spectrum | tuple[str, str], cfg: AuditConfig) -> PowerLawFit | None:
    if isinstance(found, tuple):
        return None
    return fit_power_law(found.evals, estimator=cfg.estimator)


def _float32_check(
    found: Spectrum | tuple[str, str], fit: PowerLawFit | None, cfg: AuditConfig
) -> tuple[str | None, dict[str, Any]]:
    """Why a float32 spectrum cannot decide the flags (None: it can), and its bound's columns:
    the eigenvalue error bound, alpha's range within it, and whether another xmin could be
    chosen (which may move alpha within that range, never across a threshold)."""
    if isinstance(found, tuple):
        return "the float32 Gram is not finite or zero", {}  # float32 overflows sooner
    assert fit is not None
    t = cfg.thresholds
    bounds = fit_bounds(found.evals, fit, found.bound)
    columns = {
        "eval_error_bound": found.bound,
        "alpha_range_low": bounds.alpha_low,
        "alpha_range_high": bounds.alpha_high,
        "xmin_settled": bounds.xmin_settled,
    }
    return settled(fit, bounds, (t.alpha_low, t.alpha_high)), columns


def _matrix_problem(W: Matrix, G: torch.Tensor) -> tuple[str, str] | None:
    """NaN/Inf or all-zero weights, seen on the small Gram rather than by a pass over W."""
    if not bool(torch.isfinite(G).all()):
        bad = nonfinite_count(W)
        return NONFINITE, f"{bad} NaN or Inf weights"
    if float(torch.diagonal(G).sum()) == 0.0:
        return ZERO_MATRIX, "every weight is zero"
    return None


def _outcome(
    layer: Layer, W: Matrix, found: Spectrum, fit: PowerLawFit, cfg: AuditConfig, *, threads: int
) -> Outcome:
    evals = found.evals
    record = {**base_record(layer), **spectrum_metrics(evals, fit)}
    record.update(mp_metrics(evals, Q=record["Q"], M=record["M"]))
    record["status"] = SUCCESS if fit.status == SUCCESS else FIT_FAILED
    record["reason"] = fit.reason
    spectra = {"evals": evals.astype(np.float64)}
    if cfg.traps:
        seed = layer_seed(cfg.seed, layer.name)
        traps, rand_spectra = trap_metrics(W, evals, seed=seed, threads=threads, mu=found.mean)
        record.update(traps)
        spectra.update(rand_spectra)
    return Outcome(record, spectra)
