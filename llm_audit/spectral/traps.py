"""Correlation traps: spikes in the spectrum of the element-shuffled matrix.

Shuffling W's elements destroys every correlation but keeps the element distribution, so the
shuffled spectrum should follow Marchenko–Pastur (MP). Eigenvalues far beyond the MP edge mean a few
huge weights (a trap). Two counts are reported:

- `rand_num_spikes`: WeightWatcher's count, its MP fit (`mp.fit_mp`) on the shuffled spectrum,
  several shuffles pooled for small layers. A shuffle keeps the mean μ of W, and a non-zero mean
  leaves a rank-one spike of about N·M·μ² in every shuffled matrix, which this count includes.
- `num_traps`: the same test on the shuffled matrix after centring (W − μ), against the exact null:
  a centred shuffle has i.i.d.-like entries of known variance ‖W − μ‖²/(N·M), whose MP edge in
  mean-1 units is (1 + Q^-1/2)², plus WeightWatcher's Tracy–Widom margin. The count needs no fit:
  Sylvester's law of inertia says a Cholesky of (t·I − G) succeeds exactly when no eigenvalue of the
  centred Gram G exceeds t, so the common trap-free case costs one Cholesky, and only layers that do
  have traps pay for a second eigendecomposition. The flag uses `num_traps`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from llm_audit.spectral.esd import EPS64, gram
from llm_audit.spectral.mp import fit_mp, jensen_shannon_distance
from llm_audit.vocabulary import FAILED, SUCCESS

SMALL_LAYER_EVALS = 100  # WeightWatcher shuffles 5 times below this many eigenvalues
SMALL_LAYER_REPLICAS = 5
MAX_CULPRITS = 10  # largest |w - μ| entries reported per trap layer


def trap_threshold(mean_eval: float, Q: float, M: int) -> float:
    """Spike threshold (original units) of a centred shuffle: MP edge plus Tracy–Widom margin."""
    bulk_max = (1 + Q**-0.5) ** 2
    tw = Q**-0.5 * bulk_max ** (2 / 3) * M ** (-2 / 3)
    return (bulk_max + math.sqrt(tw)) * mean_eval


def _shuffle(W: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(W.numel(), generator=generator, device=W.device, dtype=torch.int32)
    return W.reshape(-1).index_select(0, perm).reshape(W.shape)


def _count_above(G: torch.Tensor, t: float) -> tuple[int, torch.Tensor | None]:
    """Eigenvalues of symmetric G above t: 0 by one Cholesky when none, else from eigvalsh."""
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    _, info = torch.linalg.cholesky_ex(t * eye - G)
    if int(info) == 0:
        return 0, None
    evals = torch.linalg.eigvalsh(G)
    return int((evals > t).sum()), evals


def trap_metrics(
    W: torch.Tensor, evals: np.ndarray, *, seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Randomized-spectrum columns of one layer (W as (out, in) on its device) and its spectra."""
    rows, cols = W.shape
    N, M = max(rows, cols), min(rows, cols)
    Q = N / M
    replicas = SMALL_LAYER_REPLICAS if M < SMALL_LAYER_EVALS else 1
    generator = torch.Generator(device=W.device).manual_seed(seed)
    mu = float(W.sum(dtype=torch.float64)) / W.numel()
    rand_parts, trap_counts = [], []
    for _ in range(replicas):
        shuffled = _shuffle(W, generator)
        G = gram(shuffled)
        rand = torch.linalg.eigvalsh(G).clamp_min(0)
        rand_parts.append(rand.cpu().numpy())
        # Centre the shuffle through its Gram: (S − μ)ᵀ(S − μ) = G − μ(c1ᵀ + 1cᵀ) + n·μ²·11ᵀ,
        # with c the sums along the long side and n its length. No second pass over W.
        long_axis = 0 if rows >= cols else 1
        c = shuffled.sum(dim=long_axis, dtype=torch.float64)
        G.sub_(mu * (c[:, None] + c[None, :])).add_(N * mu * mu)
        mean_eval = float(torch.diagonal(G).sum()) / M
        tol = N * EPS64 * float(G.diagonal().max())
        count, _ = _count_above(G, max(trap_threshold(mean_eval, Q, M), tol))
        trap_counts.append(count)
        del shuffled, G
    rand_evals = np.sort(np.concatenate(rand_parts))
    first = np.sort(rand_parts[0])
    mp = fit_mp(rand_evals, Q=Q, M=M)
    lam_max = float(evals[-1])
    record: dict[str, Any] = {
        "rand_num_spikes": mp.num_spikes,
        "num_traps": round(float(np.mean(trap_counts))),
        "num_traps_std": float(np.std(trap_counts)),
        "num_shuffles": replicas,
        "max_rand_eval": float(rand_evals[-1]),
        "rand_bulk_max": mp.bulk_max,
        "rand_sigma_mp": mp.sigma,
        "rand_mp_softrank": mp.mp_softrank,
        "rand_W_scale": mp.W_scale,
        "rand_distance": jensen_shannon_distance(np.sort(evals), first),
        "ww_softrank": float(first[-1]) / lam_max if lam_max > 0 else math.nan,
        "ww_maxdist": lam_max - float(first[-1]),
        "mean_weight": mu,
        "rand_fit_status": mp.status if mp.status == SUCCESS else f"{FAILED}: {mp.reason}",
    }
    if record["num_traps"] > 0:
        record["trap_entries"] = trap_culprits(W, mu)
    return record, {"rand_evals": rand_evals}


def trap_culprits(W: torch.Tensor, mu: float, k: int = MAX_CULPRITS) -> list[dict[str, Any]]:
    """The largest |w − μ| entries of W, where a trap lives: row, column, value, z-score."""
    centred = W.float() - mu
    std = float(centred.std())
    top = torch.topk(centred.abs().reshape(-1), k=min(k, centred.numel()))
    cols = W.shape[1]
    return [
        {
            "row": int(i) // cols,
            "col": int(i) % cols,
            "value": float(W.reshape(-1)[i]),
            "z": float(centred.reshape(-1)[i]) / std if std > 0 else math.nan,
        }
        for i in top.indices.tolist()
    ]
