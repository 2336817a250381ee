"""Per-layer metrics from an ESD, with WeightWatcher's column names and formulas.

Units are WeightWatcher's: eigenvalues of WᵀW without 1/N, so `norm` is the squared Frobenius norm
and `spectral_norm`/`lambda_max` the squared largest singular value. Metrics that depend on alpha
are NaN when the fit failed (WeightWatcher computes them from its alpha = -1 sentinel instead).
"""

from __future__ import annotations

import math

import numpy as np

from llm_audit.spectral.mp import fit_mp
from llm_audit.spectral.powerlaw import PowerLawFit

WEAK_RANK_TOL = 1e-6  # WeightWatcher's `tolerance`: eigenvalues below it count in weak_rank_loss


def shape_columns(rows: int, cols: int) -> dict[str, float | int]:
    n, m = max(rows, cols), min(rows, cols)
    return {"N": n, "M": m, "Q": n / m if m else math.nan}


def spectrum_metrics(evals: np.ndarray, fit: PowerLawFit) -> dict[str, float | int | str]:
    """Every ESD metric of one layer; `evals` ascending float64, exactly 0 where numerically 0."""
    lam_max = float(evals[-1])
    norm = float(evals.sum())
    alpha = fit.alpha
    rank = int(np.count_nonzero(evals > 0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_alpha_norm = float(np.log10(np.sum(evals**alpha))) if math.isfinite(alpha) else math.nan
    return {
        "num_evals": len(evals),
        "estimator": fit.estimator,
        "alpha": alpha,
        "alpha_weighted": alpha * math.log10(lam_max),
        "D": fit.D,
        "xmin": fit.xmin,
        "xmax": fit.xmax,
        "sigma": fit.sigma,
        "num_pl_spikes": fit.num_pl_spikes,
        "lambda_max": lam_max,
        "norm": norm,
        "log_norm": math.log10(norm),
        "spectral_norm": lam_max,
        "log_spectral_norm": math.log10(lam_max),
        "log_alpha_norm": log_alpha_norm,
        "stable_rank": norm / lam_max,
        "entropy": matrix_entropy(evals, rank),
        "matrix_rank": rank,
        "rank_loss": len(evals) - rank,
        "weak_rank_loss": int(np.count_nonzero(evals < WEAK_RANK_TOL)),
    }


def mp_metrics(evals: np.ndarray, *, Q: float, M: int) -> dict[str, float | int]:
    """WeightWatcher's `mp_fit` columns for W itself: MP sigma, bulk edge, spikes, soft rank."""
    mp = fit_mp(evals, Q=Q, M=M)
    return {
        "num_spikes": mp.num_spikes,
        "sigma_mp": mp.sigma,
        "bulk_max": mp.bulk_max,
        "mp_softrank": mp.mp_softrank,
    }


def matrix_entropy(evals: np.ndarray, rank: int) -> float:
    """WeightWatcher's spectral entropy, −Σ p ln p / ln(rank), with its EPSILON of 1e-10 (CPU)."""
    eps = 1e-10
    p = evals / evals.sum() + eps
    return float(-np.sum(p * np.log(p)) / np.log(rank + eps))
