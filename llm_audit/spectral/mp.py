"""Marchenko–Pastur (MP) fit of a spectrum, and the Jensen–Shannon distance of two spectra.

`fit_mp` gives the same numbers as WeightWatcher 0.7.7's `mp_fit` (sigma, bulk edges, Tracy–Widom
threshold, spike count), about a thousand times faster. WeightWatcher does this:

1. rescale the eigenvalues to mean 1 (`W_scale² · λ`);
2. fit a linear-kernel KDE (bandwidth 0.1) to them (to the singular values when Q = 1) on 1,000
   points of [0, max + 0.5], dropping points where the density is below 0.01;
3. grid-search σ over [0.05·s0, 2·s0) in steps of 0.01·s0 (s0 from the largest eigenvalue), scoring
   each σ by the squared distance between the MP (or quarter-circle) density and the KDE;
4. polish the best grid point with Nelder–Mead: `scipy.optimize.brute` is called without `finish`,
   so its default `finish=optimize.fmin` runs, and the reported σ is off the grid;
5. count the eigenvalues above the bulk edge plus a Tracy–Widom margin.

WeightWatcher refits the KDE for each of the ~195 candidates although the data never change. Here
the KDE is computed once, in numpy, and the residual for all candidates is one array operation;
the Nelder–Mead polish is the same `scipy.optimize.fmin` call on the same objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

from llm_audit.vocabulary import FAILED, SUCCESS

__all__ = ["MPFit", "fit_mp", "jensen_shannon_distance"]

FloatArray = npt.NDArray[np.float64]

# WeightWatcher 0.7.7's constants (RMT_Util.resid_mp, fit_density_with_range, mp_fit).
_BANDWIDTH = 0.1  # KDE bandwidth, in rescaled (mean-1) units
_GRID_POINTS = 1000  # KDE evaluation points on [0, max + _GRID_PAD]
_GRID_PAD = 0.5
_DENSITY_FLOOR = 0.01  # grid points with a lower KDE density are left out of the residual
_PENALTY = 1000.0  # residual per grid point when the MP support is implausible
_SIGMA_START, _SIGMA_STOP, _SIGMA_STEP = 0.05, 2.0, 0.01  # search range, in units of s0

# Eigenvalues of a Gram matrix are >= 0; a float Gram gives small negative ones by round-off.
# Below this fraction of the largest eigenvalue they cannot be round-off (sklearn uses 1e-5 too).
_NEGATIVE_TOLERANCE = 1e-5

_KDE_CHUNK = 64  # grid points per block in the windowed KDE sum (bounds memory for huge spectra)


@dataclass(frozen=True)
class MPFit:
    """Result of `fit_mp`. "Rescaled" units are W_scale² · λ (mean eigenvalue 1).

    Attributes:
        sigma: fitted MP σ (WeightWatcher's `sigma_mp`), in rescaled units.
        W_scale: sqrt(n) / sqrt(Σλ), WeightWatcher's `W_scale`.
        bulk_max: MP bulk edge (σ(1 + Q^-1/2))², in the original units of the eigenvalues.
        bulk_min: lower MP edge (σ(1 − Q^-1/2))², in original units.
        threshold: bulk edge plus the Tracy–Widom margin sqrt(TW), in original units. Eigenvalues
            above it are spikes.
        num_spikes: number of eigenvalues above `threshold`.
        mp_softrank: rescaled bulk edge / largest rescaled eigenvalue.
        status: `SUCCESS` or `FAILED` (vocabulary.py).
        reason: why the fit failed; None when it did not.
    """

    sigma: float
    W_scale: float
    bulk_max: float
    bulk_min: float
    threshold: float
    num_spikes: int
    mp_softrank: float
    status: str
    reason: str | None = None


class _Target(NamedTuple):
    """The KDE that every candidate σ is compared with (WeightWatcher's `xde`, `yde`)."""

    x: FloatArray  # grid points kept (density above the floor)
    density: FloatArray  # KDE at those points
    mode: float  # first grid point of maximal density


def fit_mp(evals: npt.ArrayLike, *, Q: float, M: int) -> MPFit:
    """Fit the Marchenko–Pastur law to an eigenvalue spectrum, as WeightWatcher 0.7.7 `mp_fit` does.

    Args:
        evals: eigenvalues of WᵀW (any order); pooled replicas are fine.
        Q: aspect ratio N/M >= 1 of the matrix. Q == 1 fits the quarter-circle law to the
            singular values instead, as WeightWatcher does.
        M: the smaller dimension; it sets the Tracy–Widom margin.

    Returns:
        An `MPFit`. When no fit can be made (fewer than 2 eigenvalues, NaN or inf, all zero,
        clearly negative values) its status is "failed", `reason` says why, the floats are NaN
        and `num_spikes` is 0.

    Raises:
        ValueError: if Q or M is not a valid shape parameter (a caller bug, not a data problem).
    """
    _check_shape_args(Q, M)
    values = np.asarray(evals, dtype=np.float64).ravel()
    reason = _unfittable_reason(values)
    if reason is not None:
        return _failed(reason)
    # Same operations as WeightWatcher, so the rescaled values are bit-identical.
    w_scale = float(np.sqrt(values.shape[0]) / np.sqrt(np.sum(values)))
    rescaled = (w_scale * w_scale) * values
    sigma = _fit_sigma(rescaled, Q)
    if not math.isfinite(sigma):
        return _failed("the sigma search did not converge to a finite value")
    return _summarize(rescaled, sigma, w_scale, Q=Q, M=M)


def jensen_shannon_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen–Shannon distance between two spectra, as WeightWatcher's `rand_distance`.

    Each vector is sorted and normalized to sum 1 and read as a distribution over rank, not as a
    histogram: this compares the rank-ordered spectra element by element (WeightWatcher passes
    sorted eigenvalues). Natural log, so the result lies in [0, sqrt(ln 2)].

    WeightWatcher averages p and q before normalizing; that is the same whenever Σp = Σq, which
    holds for an element-shuffled matrix (shuffling keeps ‖W‖_F²). Normalizing first keeps the
    distance symmetric and bounded when the sums differ.

    Negative entries (round-off of a float Gram) are taken as 0. Returns NaN when either vector
    has a non-finite entry or sums to zero.

    Raises:
        ValueError: if the vectors are empty or differ in length.
    """
    a = np.sort(np.asarray(p, dtype=np.float64).ravel())
    b = np.sort(np.asarray(q, dtype=np.float64).ravel())
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"expected two non-empty spectra of equal length, got {a.size} and {b.size} values; "
            "pass eigenvalues of the same matrix shape"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan
    a, b = np.clip(a, 0.0, None), np.clip(b, 0.0, None)
    total_a, total_b = float(np.sum(a)), float(np.sum(b))
    if total_a <= 0.0 or total_b <= 0.0:
        return math.nan
    a, b = a / total_a, b / total_b
    m = (a + b) / 2
    divergence = (np.sum(special.rel_entr(a, m)) + np.sum(special.rel_entr(b, m))) / 2
    # Round-off can leave a tiny negative divergence for identical inputs.
    return float(np.sqrt(max(float(divergence), 0.0)))


def _check_shape_args(Q: float, M: int) -> None:
    if not (math.isfinite(Q) and Q >= 1.0):
        raise ValueError(f"Q must be a finite aspect ratio N/M >= 1, got {Q!r}; use max/min dims")
    if int(M) != M or M < 1:
        raise ValueError(f"M must be a positive integer (the smaller dimension), got {M!r}")


def _unfittable_reason(values: FloatArray) -> str | None:
    """Why these eigenvalues cannot be fitted, or None. WeightWatcher would crash or return -1."""
    if values.size < 2:
        return f"need at least 2 eigenvalues, got {values.size}"
    if not np.all(np.isfinite(values)):
        return "eigenvalues contain NaN or inf"
    largest = float(np.max(values))
    if largest <= 0.0 or float(np.sum(values)) <= 0.0:
        return "all eigenvalues are zero (or the spectrum sums to <= 0)"
    if float(np.min(values)) < -_NEGATIVE_TOLERANCE * largest:
        return "eigenvalues are clearly negative; expected the spectrum of WᵀW"
    return None


def _failed(reason: str) -> MPFit:
    nan = math.nan
    return MPFit(nan, nan, nan, nan, nan, 0, nan, status=FAILED, reason=reason)


def _fit_sigma(rescaled: FloatArray, Q: float) -> float:
    """σ minimizing the MP residual: brute grid search, then Nelder–Mead from the best grid point.

    This is `scipy.optimize.brute(resid_mp, ranges, finish=optimize.fmin)` as WeightWatcher calls
    it (finish left at its default), with the residual of all grid points computed at once.
    """
    s0 = _calc_sigma(Q, rescaled)
    # np.mgrid with a float step is what brute uses; it fixes the number of grid points exactly.
    sigmas = np.mgrid[slice(_SIGMA_START * s0, _SIGMA_STOP * s0, _SIGMA_STEP * s0)]
    # Q == 1: the quarter-circle law of the singular values. Tiny negative round-off is clipped
    # (WeightWatcher takes sqrt of it, gets NaN and the fit crashes).
    to_fit = np.sqrt(np.clip(rescaled, 0.0, None)) if Q == 1 else rescaled
    target = _kde_target(to_fit)
    costs = _residuals(sigmas, target, Q)
    start = sigmas[int(np.argmin(costs))]  # first minimum, as brute takes it

    def objective(sigma: FloatArray) -> float:
        return float(_residuals(sigma, target, Q)[0])

    polished = optimize.fmin(objective, start, full_output=True, disp=False)
    return float(polished[0][0])


def _calc_sigma(Q: float, rescaled: FloatArray) -> float:
    """σ whose MP bulk edge equals the largest eigenvalue: the scale of WW's σ search range."""
    inv_sqrt_q = 1.0 / np.sqrt(Q)
    return float(np.sqrt(np.max(rescaled) / np.square(1 + inv_sqrt_q)))


def _kde_target(to_fit: FloatArray) -> _Target:
    """WeightWatcher's KDE on its 1,000-point grid, with low-density points dropped."""
    grid = np.linspace(0, np.max(to_fit) + _GRID_PAD, _GRID_POINTS)
    density = _linear_kde(np.sort(to_fit), grid, _BANDWIDTH)
    keep = density > _DENSITY_FLOOR
    x, y = grid[keep], density[keep]
    return _Target(x=x, density=y, mode=float(x[np.argmax(y)]))


def _linear_kde(samples: FloatArray, grid: FloatArray, bandwidth: float) -> FloatArray:
    """sklearn's KernelDensity(kernel='linear') in 1-D: mean of max(0, 1 − |x − xᵢ|/h) / h.

    `samples` must be sorted. The kernel has compact support, so each block of grid points only
    looks at the samples within one bandwidth of it; the sum is exact (no prefix-sum cancellation).
    """
    density = np.empty_like(grid)
    lo = np.searchsorted(samples, grid - bandwidth, side="left")
    hi = np.searchsorted(samples, grid + bandwidth, side="right")
    for start in range(0, grid.size, _KDE_CHUNK):
        block = slice(start, start + _KDE_CHUNK)
        window = samples[lo[block][0] : hi[block][-1]]
        weights = 1.0 - np.abs(grid[block, None] - window[None, :]) / bandwidth
        density[block] = np.sum(np.maximum(weights, 0.0), axis=1)
    return density / (samples.size * bandwidth)


def _residuals(sigmas: FloatArray, target: _Target, Q: float) -> FloatArray:
    """WeightWatcher's `resid_mp` sum of squares for each σ in `sigmas` (shape (S,) -> (S,))."""
    x = target.x[None, :]
    s = sigmas[:, None]
    if Q == 1:
        qc_cost: FloatArray = np.sum((_quarter_circle(x, s) - target.density) ** 2, axis=1)
        return qc_cost
    # WW penalizes a support that misses the KDE's mode or runs past the grid: 1000 per point.
    b = np.power(sigmas * (1 + np.sqrt(1 / Q)), 2)
    a = np.power(sigmas * (1 - np.sqrt(1 / Q)), 2)
    implausible = (b < target.mode) | (b > target.x[-1]) | (a > target.mode)
    cost: FloatArray = np.full(sigmas.shape, _PENALTY * _PENALTY * target.x.size)
    fits = ~implausible  # the density only where it counts: each row's sum is the same
    mp = _marchenko_pastur(x, s[fits], Q)
    cost[fits] = np.sum((mp - target.density) ** 2, axis=1)
    return cost


def _marchenko_pastur(x: FloatArray, s: FloatArray, Q: float) -> FloatArray:
    """MP density at x for each σ in s, 0 outside its support (WW's `marchenko_pastur_fun`).

    Written with WW's operations in WW's order, so the values are bit-identical to its.
    """
    y = 1 / Q
    b = np.power(s * (1 + np.sqrt(1 / Q)), 2)
    a = np.power(s * (1 - np.sqrt(1 / Q)), 2)
    # Outside [a, b] the square root is NaN, and WW maps NaN to 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_to_num((1 / (2 * np.pi * s * s * x * y)) * np.sqrt((b - x) * (x - a)))


def _quarter_circle(x: FloatArray, s: FloatArray) -> FloatArray:
    """WW's quarter-circle density of singular values (`quarter_circle_fun`), 0 beyond x = 2.

    WW fixes the support at [0, 2] whatever σ; only the height 1/(πσ²) scales.
    """
    with np.errstate(invalid="ignore"):
        return _nan_to_num((1 / (np.pi * s * s)) * np.sqrt(4 - x**2))


def _nan_to_num(density: FloatArray) -> FloatArray:
    """`np.nan_to_num` of a density, which is never negative, bit for bit and 3-10x faster: NaN
    (off the support) becomes 0 by `fmax`; +inf (at x = 0) goes to `nan_to_num` as before."""
    out = np.fmax(density, 0.0)
    return np.nan_to_num(density) if out.size and out.max() == np.inf else out


def _summarize(rescaled: FloatArray, sigma: float, w_scale: float, *, Q: float, M: int) -> MPFit:
    """Bulk edges, Tracy–Widom threshold and spikes, in WeightWatcher's order of operations."""
    bulk_max = (sigma * (1 + 1 / np.sqrt(Q))) ** 2
    bulk_min = (sigma * (1 - 1 / np.sqrt(Q))) ** 2
    # Tracy–Widom margin, in rescaled units (WW issue #84).
    tw = 1 / np.sqrt(Q) * np.power(bulk_max, 2 / 3) * np.power(M, -2 / 3)
    threshold = bulk_max + np.sqrt(tw)
    to_original = w_scale * w_scale
    return MPFit(
        sigma=sigma,
        W_scale=w_scale,
        bulk_max=float(bulk_max / to_original),
        bulk_min=float(bulk_min / to_original),
        threshold=float(threshold / to_original),
        num_spikes=int(np.count_nonzero(rescaled > threshold)),
        mp_softrank=float(bulk_max / np.max(rescaled)),
        status=SUCCESS,
    )
