"""Eigenvalues of WᵀW, exactly, in WeightWatcher's units (no 1/N).

Computed from the Gram matrix of the smaller side in float64 and `eigvalsh`: 2-4x faster than the
float64 SVD WeightWatcher runs, with absolute error about eps64·λ_max on every eigenvalue. A float32
Gram would be faster again but loses eigenvalues below about 1e-7·λ_max (some come out negative),
which matters on real layers: MiniLM's position embeddings fit xmin at 1e-4·λ_max.
Same-shape matrices can be passed as one batch (one `bmm` and one batched `eigvalsh`), which is what
a GPU wants. A vocab×vocab Gram is never formed: the Gram is always on the smaller side.
"""

from __future__ import annotations

import warnings

import torch

from llm_audit.errors import LlmAuditWarning

EPS64 = torch.finfo(torch.float64).eps


CHUNK_BYTES = 64 * 2**20  # float64 rows converted at a time: no full float64 copy of a big W


def gram(W: torch.Tensor) -> torch.Tensor:
    """WᵀW or WWᵀ, whichever is smaller, in float64; W may be a batch (B, rows, cols).

    The long side is consumed in chunks, each cast to float64 on its own, so memory beyond W itself
    is the small Gram plus one chunk, whatever W's dtype.
    """
    if W.shape[-2] < W.shape[-1]:
        W = W.mT
    rows, cols = W.shape[-2], W.shape[-1]
    batch = W.shape[0] if W.dim() == 3 else 1
    step = max(1, CHUNK_BYTES // (8 * cols * batch))  # rows per chunk
    G = torch.zeros(*W.shape[:-2], cols, cols, dtype=torch.float64, device=W.device)
    for start in range(0, rows, step):
        chunk = W[..., start : start + step, :].to(torch.float64)
        if G.dim() == 3:
            G.baddbmm_(chunk.mT, chunk)
        else:
            G.addmm_(chunk.mT, chunk)
    return G


def eigenvalues(W: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of WᵀW (min(rows, cols) of them, float64, same device as W)."""
    return gram_eigenvalues(gram(W), long_side=max(W.shape[-2], W.shape[-1]))


def gram_eigenvalues(G: torch.Tensor, *, long_side: int) -> torch.Tensor:
    """Ascending eigenvalues of a Gram matrix (or a batch of them) from `gram`.

    Values within the Gram's rounding error of zero (|λ| ≤ long_side·eps·λ_max) are set to
    exactly 0: they are numerically zero, and a rank count needs them to be.
    """
    evals = torch.linalg.eigvalsh(G)
    lam_max = evals[..., -1:].clamp_min(0)
    tol = long_side * EPS64 * lam_max
    if bool((evals < -100 * tol).any()):
        warnings.warn(
            "eigenvalues of WᵀW below -100·tolerance were clipped to 0; the matrix may hold "
            "values near the float64 range",
            LlmAuditWarning,
            stacklevel=2,
        )
    return torch.where(evals.abs() <= tol, torch.zeros_like(evals), evals).clamp_min(0)
