"""Power-law fits of one layer's eigenvalue spectrum: the HTSR exponent alpha.

Every estimator fits the tail ``λ >= xmin`` with the continuous maximum-likelihood exponent of
Clauset, Shalizi and Newman (CSN), ``alpha = 1 + n / Σ ln(λ / xmin)``, and measures the fit with the
same Kolmogorov–Smirnov distance ``D``; they differ only in how xmin is chosen:

- ``"ww"``: WeightWatcher 0.7.7's default (``WWFit``), reproduced: the xmin with the smallest D
  among all eigenvalues, and WW's small-N path when fewer than 20 eigenvalues are left.
- ``"xmin_peak"``: AlphaPruning/TempBalance: xmin near the peak of the log-spectrum histogram.
- ``"median"``: TempBalance's Hill estimator (``xmin_mid``): xmin is the median eigenvalue.
- ``"clauset"``: CSN's own continuous method (``plfit.m``): the xmin with the smallest D among the
  *distinct* values, the tail being every value >= xmin. The other estimators try every sorted
  index, so where xmin falls inside a run of equal values their tail silently leaves some of the
  run out; on the continuous data sets of CSN's Table 6.1 (flares, quakes, surnames, fires,
  cities, blackouts, as shipped with the ``powerlaw`` package) this one gives the published xmin,
  alpha and tail size, and ``ww`` does not on quakes and surnames. Eigenvalue spectra rarely repeat
  a value, so on weights the two agree.

``num_pl_spikes`` is the tail actually fitted, except under ``ww``, where it is WeightWatcher's
column: every eigenvalue >= xmin, which counts a whole run of equal values even where the fit
used only part of it.

WW evaluates D for every candidate xmin in a Python loop, O(N²) work. Here every alpha comes from
one suffix sum, and the smallest D from an exact branch and bound (`_argmin_ks`) that needs the
full O(N) distance for only a few candidates; the chosen xmin is the one brute force would choose.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from llm_audit.vocabulary import ESTIMATORS, SUCCESS

Float = NDArray[np.float64]
Index = NDArray[np.intp]

EVALS_THRESH = 1e-5  # WW drops eigenvalues <= this before fitting (absolute, WW units)

SMALL_N = 20  # WW 0.7.7 switches to `fit_powerlaw_smallN` below this many eigenvalues
SMALL_N_MIN_TAIL = 8  # ... where a candidate xmin needs at least this many points in its tail
SMALL_N_DEGENERATE = 1e-12  # ... and Σ ln(λ/xmin) above this
PEAK_BINS = 100  # xmin_peak: bins of the log10 histogram (AlphaPruning, WW)
PEAK_WINDOW = (0.95, 1.5)  # xmin_peak: xmin searched in [0.95, 1.5] x the peak bin's left edge

_CHUNK = 2**16  # KS terms evaluated at once: arrays stay in cache (faster) and memory bounded
_GRID = 32  # evenly spread tail offsets sampled per candidate for the lower bound of its D
_EPS = 1e-12  # slack on bound comparisons, far above rounding in D (<1e-15), far below any gap


@dataclass(frozen=True)
class PowerLawFit:
    """One layer's power-law fit; a failed fit has NaN floats, ``num_pl_spikes=0`` and a reason."""

    alpha: float  # exponent of the density p(λ) ∝ λ^-alpha on [xmin, ∞)
    D: float  # KS distance between the tail and the fitted power law
    xmin: float  # start of the tail (an eigenvalue, WW units)
    xmax: float  # largest eigenvalue fitted
    sigma: float  # standard error of alpha, (alpha - 1) / sqrt(n_tail)
    num_pl_spikes: int  # the tail fitted; under "ww", eigenvalues >= xmin (WW's column)
    status: str  # "success" or "failed"
    reason: str | None  # why it failed (None on success)
    estimator: str  # one of ESTIMATORS


def fit_power_law(evals: ArrayLike, *, estimator: str = "ww") -> PowerLawFit:
    """Fit a power law to the tail of one layer's eigenvalues (all of WᵀW, any order, WW units).

    Eigenvalues <= `EVALS_THRESH` are dropped first, as WW does. A fit that cannot be made is
    returned with ``status="failed"`` and a reason, never raised. Raises ValueError for an unknown
    `estimator` or an input that is not one-dimensional.
    """
    if estimator not in ESTIMATORS:
        valid = ", ".join(ESTIMATORS)
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {valid}")
    evals = _as_vector(evals)
    data, reason = _clean(evals)
    if reason is not None:
        return _failed(reason, estimator)
    choice = _FITTERS[estimator](data)
    if isinstance(choice, str):
        return _failed(choice, estimator)
    start, alpha, distance = choice
    if not math.isfinite(alpha):
        return _failed("alpha is not finite", estimator)
    xmin = float(data[start])
    tail = data.size - start
    return PowerLawFit(
        alpha=alpha,
        D=distance,
        xmin=xmin,
        xmax=float(data[-1]),
        sigma=(alpha - 1.0) / math.sqrt(tail),
        num_pl_spikes=int(np.count_nonzero(evals >= xmin)) if estimator == "ww" else tail,
        status=SUCCESS,
        reason=None,
        estimator=estimator,
    )


def candidate_fits(evals: ArrayLike) -> tuple[Float, Float, Float]:
    """Every candidate of WW's standard scan: ``(xmins, alphas, Ds)``, as WW's ``fit.xmins`` etc.

    Brute force, O(N²) work in bounded chunks: for plots of D against xmin, and for tests of the
    branch and bound. Eigenvalues are thresholded and sorted as in `fit_power_law`.
    """
    evals = _as_vector(evals)
    data = np.sort(evals[evals > EVALS_THRESH])
    if data.size < 2:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    starts = np.arange(data.size - 1)
    alphas = _mle_alphas(data, starts)
    return data[starts], alphas, _ks_exact(data, starts, alphas)


# --- input and output -----------------------------------------------------------------------------


def _as_vector(evals: ArrayLike) -> Float:
    """The eigenvalues as a float64 vector; a matrix is a caller's mistake, not a failed fit."""
    array = np.asarray(evals, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(
            f"expected a 1-D array of eigenvalues, got shape {array.shape}; "
            "pass the eigenvalues of WᵀW, e.g. np.linalg.eigvalsh(W.T @ W)"
        )
    return array


def _clean(evals: Float) -> tuple[Float, str | None]:
    """The sorted eigenvalues above the threshold, or why no power law can be fitted to them."""
    if not np.isfinite(evals).all():
        return evals, "non-finite eigenvalues"
    data = np.sort(evals[evals > EVALS_THRESH])
    if data.size < 2:
        return data, f"fewer than 2 eigenvalues above {EVALS_THRESH:g}"
    if data[0] == data[-1]:
        return data, "all eigenvalues are equal"
    return data, None


def _failed(reason: str, estimator: str) -> PowerLawFit:
    """A failed fit is data: NaN everywhere, so that means and plots skip it (WW writes -1)."""
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, nan, 0, "failed", reason, estimator)


# --- the estimators: each returns (index of xmin in data, alpha, D) or a failure reason ----------

_Choice = tuple[int, float, float]


def _fit_ww(data: Float) -> _Choice | str:
    """WW's `WWFit`: the smallest D over every eigenvalue but the largest (first one on ties)."""
    if data.size < SMALL_N:
        return _fit_ww_small(data)
    starts = np.arange(data.size - 1)
    alphas = _mle_alphas(data, starts)
    best, distance = _argmin_ks(data, starts, alphas)
    return int(starts[best]), float(alphas[best]), distance


def _fit_ww_small(data: Float) -> _Choice | str:
    """WW 0.7.7's `fit_powerlaw_smallN` as WW actually returns it.

    Candidates need a tail of `SMALL_N_MIN_TAIL` points, and alpha gets the (n-1)/n bias correction.
    The J = D - 0.868/√n objective that WW computes is then discarded: `WWFit.__init__` re-picks
    the candidate by argmin D, so that is what is reproduced. If no candidate qualifies, the whole
    spectrum is the tail. Two deliberate differences: WW reports sigma = -1/√N in that fallback
    (a stale array), here it is (alpha-1)/√N; and where WW returns alpha=0, D=1 for a degenerate
    spectrum, this is a failure.
    """
    starts = np.arange(data.size - 1)
    sizes = data.size - starts
    log_sums = _tail_log_sums(data)[starts]
    usable = (sizes >= SMALL_N_MIN_TAIL) & (log_sums > SMALL_N_DEGENERATE)
    if not usable.any():
        usable = starts == 0
        if log_sums[0] <= SMALL_N_DEGENERATE:
            return "eigenvalues nearly all equal"
    starts, sizes, log_sums = starts[usable], sizes[usable], log_sums[usable]
    alphas = 1.0 + (sizes - 1.0) / log_sums
    distances = _ks_exact(data, starts, alphas)
    best = int(np.argmin(distances))
    return int(starts[best]), float(alphas[best]), float(distances[best])


def _fit_xmin_peak(data: Float) -> _Choice | str:
    """AlphaPruning/TempBalance: the smallest D among xmins near the log-spectrum's mode.

    Robust to "fingers" (a few huge outliers that make the min-D scan pick a tiny tail). The window
    is [0.95, 1.5] x the left edge of the fullest of 100 log10 bins, in linear units; WW and
    AlphaPruning compare a *log10* lower bound with linear eigenvalues, which usually opens the
    window down to the smallest eigenvalue. That bug is fixed here.
    """
    counts, edges = np.histogram(np.log10(data), bins=PEAK_BINS)
    peak = 10.0 ** edges[int(np.argmax(counts))]
    lower, upper = PEAK_WINDOW[0] * peak, PEAK_WINDOW[1] * peak
    candidates = data[:-1]
    starts = np.flatnonzero((candidates >= lower) & (candidates <= upper))
    if starts.size == 0:
        return "no eigenvalue in the xmin_peak window"
    alphas = _mle_alphas(data, starts)
    best, distance = _argmin_ks(data, starts, alphas)
    return int(starts[best]), float(alphas[best]), distance


def _fit_median(data: Float) -> _Choice | str:
    """TempBalance's Hill estimator: xmin is the median eigenvalue, so the top half is the tail.

    Index N // 2 of the sorted data, as ``xmin_mid`` with ``xmin_pos=2``; no scan, so it is stable
    from layer to layer but biased when the power law covers less than half of the spectrum.
    """
    start = data.size // 2
    if start > data.size - 2:
        return "too few eigenvalues for the median estimator"
    starts = np.array([start])
    alphas = _mle_alphas(data, starts)
    distance = float(_ks_exact(data, starts, alphas)[0])
    return start, float(alphas[0]), distance


def _fit_clauset(data: Float) -> _Choice | str:
    """CSN's continuous method: the smallest D over the distinct values but the largest.

    Each candidate's tail starts at the first of its equal values, so it holds every value >= xmin;
    D, alpha and the first-on-ties rule are as in ``plfit.m`` (and bitwise as in ``ww``, which
    differs only in the candidates). plfit's optional cut of candidates with tiny tails
    (``nosmall``) is not applied: it changes none of Table 6.1's continuous fits.
    """
    starts = np.flatnonzero(np.r_[True, data[1:] != data[:-1]])
    starts = starts[data[starts] < data[-1]]
    alphas = _mle_alphas(data, starts)
    best, distance = _argmin_ks(data, starts, alphas)
    return int(starts[best]), float(alphas[best]), distance


_FITTERS = {
    "ww": _fit_ww,
    "xmin_peak": _fit_xmin_peak,
    "median": _fit_median,
    "clauset": _fit_clauset,
}


# --- alpha for every candidate at once ------------------------------------------------------------


def _tail_log_sums(data: Float) -> Float:
    """Σ_{j>=i} ln(x_j / x_i) for every i, from one suffix sum instead of N sums.

    Logs are taken relative to the largest value, so the suffix sums stay small where the tails are
    short and the cancellation in (sum - n·ln x_i) costs only a few digits. A tail of equal values
    gets exactly 0, as the formula would give without rounding.
    """
    logs = np.log(data / data[-1])
    suffix = np.cumsum(logs[::-1])[::-1]
    sums = suffix - np.arange(data.size, 0, -1) * logs
    sums[data == data[-1]] = 0.0
    return sums


def _mle_alphas(data: Float, starts: Index) -> Float:
    """CSN's alpha = 1 + n / Σ ln(x/xmin) per start, without the (n-1)/n bias correction (as WW)."""
    sizes = data.size - starts
    with np.errstate(divide="ignore"):
        return 1.0 + sizes / _tail_log_sums(data)[starts]


# --- KS distances -------------------------------------------------------------------------------


def _argmin_ks(data: Float, starts: Index, alphas: Float) -> tuple[int, float]:
    """Position in `starts` of the smallest KS distance, and that distance; the first one on ties.

    Exact, yet the full O(n) distance is computed for only a few candidates: a cheap lower bound of
    every D (`_ks_lower_bounds`) orders them, the most promising one sets the bar, and only the
    candidates whose bound does not exceed the best exact D so far are computed in full.
    """
    lower = _ks_lower_bounds(data, starts, alphas)
    order = np.argsort(lower, kind="stable")
    best = int(order[0])
    best_d = float(_ks_exact(data, starts[order[:1]], alphas[order[:1]])[0])
    pending = order[1:][lower[order[1:]] <= best_d + _EPS]
    for rows in _row_chunks(data.size - starts[pending]):
        batch = pending[rows]
        if lower[batch[0]] > best_d + _EPS:
            break
        distances = _ks_exact(data, starts[batch], alphas[batch])
        smallest = float(distances.min())
        first = int(batch[distances == smallest].min())
        if smallest < best_d or (smallest == best_d and first < best):
            best, best_d = first, smallest
    return best, best_d


def _ks_exact(data: Float, starts: Index, alphas: Float) -> Float:
    """WW's KS distance of each candidate, computed in chunks of rows to bound memory.

    D_i = max_k |1 - (x_{i+k}/x_i)^(1-alpha_i) - k/n| with WW's floating-point operations, so it is
    bitwise WW's for the same alpha; D_i = 1 where alpha_i <= 1, as in WW.
    """
    sizes = data.size - starts
    distances = np.empty(starts.size)
    for rows in _row_chunks(sizes):
        first = np.zeros(rows.stop - rows.start, dtype=np.intp)
        terms = _ks_run(data, starts[rows], alphas[rows], first, int(sizes[rows].max()))
        distances[rows] = terms.max(axis=1)
    distances[~(alphas > 1.0)] = 1.0
    return distances


def _ks_lower_bounds(data: Float, starts: Index, alphas: Float) -> Float:
    """A lower bound of each candidate's D, from a few hundred of its terms; usually equal to D.

    D is a max over tail offsets k, so a max over some of them is a lower bound. The bound samples
    `_GRID` evenly spread offsets, then `_GRID` offsets spread over the gaps either side of the best
    sample, and so on, each round zooming in about 30-fold, until the gaps are small enough to read
    whole. Both CDFs are monotone, so D exceeds a sample by at most the gap to its neighbours over
    n, and the true maximum is almost always found; the cost is O(log n) terms per candidate, not
    O(n): on 203,785 values the whole fit takes 1.5 s, where one zoom took 39 s.
    """
    sizes = data.size - starts
    lower = np.empty(starts.size)
    for rows in _row_chunks(np.full(starts.size, 2 * _GRID + 1)):
        size = sizes[rows, None]
        low, high = np.zeros_like(size), size - 1
        best = np.full(size.shape[0], -np.inf)
        peak = np.zeros(size.shape[0], dtype=np.intp)
        while True:
            gap = -(-(high - low) // (_GRID - 1))
            if int(gap.max()) <= 2:  # the window is small: read it whole
                width = int((high - low).max()) + 1
                terms = _ks_run(data, starts[rows], alphas[rows], low[:, 0], width)
                lower[rows] = np.maximum(best, terms.max(axis=1))
                break
            spread = low + np.arange(_GRID) * (high - low) // (_GRID - 1)
            terms = _ks_terms(data, starts[rows], alphas[rows], spread)
            top = terms.argmax(axis=1)
            better = terms[np.arange(top.size), top] > best
            best = np.maximum(best, terms.max(axis=1))
            peak = np.where(better, spread[np.arange(top.size), top], peak)
            low = np.maximum(peak[:, None] - gap, 0)
            high = np.minimum(peak[:, None] + gap, size - 1)
    lower[~(alphas > 1.0)] = 1.0
    return lower


def _ks_terms(data: Float, starts: Index, alphas: Float, offsets: Index) -> Float:
    """|fitted CDF - empirical CDF| at tail offsets (rows: candidates), in WW's operation order."""
    values = data[starts[:, None] + offsets]
    return _ks_formula(values, data[starts], alphas, offsets, data.size - starts)


def _ks_run(data: Float, starts: Index, alphas: Float, first: Index, width: int) -> Float:
    """`_ks_terms` at `width` consecutive offsets from `first`; past the tail's end, its last term.

    Rows are copied from a strided view of the data, much faster than gathering element by
    element. The data is padded with its largest value and the offset capped at n-1, so a row
    that runs past the end repeats the last term, which cannot change a maximum.
    """
    padded = np.concatenate([data, np.full(width, data[-1])])
    values = np.lib.stride_tricks.sliding_window_view(padded, width)[starts + first]
    offsets = np.minimum(first[:, None] + np.arange(width), (data.size - starts)[:, None] - 1)
    return _ks_formula(values, data[starts], alphas, offsets, data.size - starts)


def _ks_formula(values: Float, xmins: Float, alphas: Float, offsets: Index, sizes: Index) -> Float:
    """|1 - (x/xmin)^(1-alpha) - k/n| per row, exactly as WW writes it, for bitwise agreement."""
    with np.errstate(over="ignore", invalid="ignore"):  # alpha <= 1 rows are overwritten with 1
        fitted = (values / xmins[:, None]) ** (1.0 - alphas)[:, None]
        return np.abs(1.0 - fitted - offsets / sizes[:, None])


def _row_chunks(widths: Index) -> Iterator[slice]:
    """Runs of consecutive rows whose padded block (rows x widest) holds at most `_CHUNK` terms."""
    start = 0
    while start < widths.size:
        widest = np.maximum.accumulate(widths[start:])
        fits = np.arange(1, widest.size + 1) * widest <= _CHUNK
        stop = start + max(int(np.count_nonzero(fits)), 1)
        yield slice(start, stop)
        start = stop


# --- sensitivity to errors in the eigenvalues -----------------------------------------------------

RESOLVED = 100  # a candidate xmin above this many times the error bound is known to 1%
UNRESOLVED_D_MARGIN = 0.05  # ... below it, a candidate may win only within this of the best D


@dataclass(frozen=True)
class FitBounds:
    """What eigenvalue errors up to a bound could do to a fit: the range of alpha over every
    xmin that could then be chosen, and whether the chosen xmin is the only one."""

    alpha_low: float
    alpha_high: float
    xmin_settled: bool


def fit_bounds(evals: ArrayLike, fit: PowerLawFit, bound: float) -> FitBounds:
    """How far a fit could move if every eigenvalue may be off by up to `bound` (absolute).

    Weyl's theorem keeps the i-th sorted eigenvalue within `bound` of its exact value. With
    xmin's index fixed, alpha = 1 + n / Σ ln(λ/xmin) is bounded by moving every λ and xmin to the
    ends of their intervals. A candidate's KS distance D moves by at most
    2·(alpha-1)·(1 + 1/e)·bound/(xmin - bound) (the fitted CDF's slopes in ln λ and in alpha), so
    under `ww` and `clauset` every candidate whose D could fall to the chosen one's could be
    chosen instead, and alpha's range covers theirs. A candidate within `RESOLVED` bounds of zero
    has no useful bound on its D: it is taken to be unable to win when its D exceeds the chosen
    one's by `UNRESOLVED_D_MARGIN` (on MiniLM such candidates' D exceed it by 0.09 or more).
    `median` is settled while no eigenvalue could cross `EVALS_THRESH` (the count, hence the
    median, would change). `xmin_peak` and WW's small-N path (fewer than `SMALL_N` eigenvalues)
    are not bounded: alpha's range is everything.
    """
    everything = FitBounds(-math.inf, math.inf, False)
    values = _as_vector(evals)
    data = np.sort(values[values > EVALS_THRESH])
    if fit.status != SUCCESS or data.size < SMALL_N or fit.estimator == "xmin_peak":
        return everything
    start = int(np.searchsorted(data, fit.xmin))
    if fit.estimator == "median":
        if np.any(np.abs(values - EVALS_THRESH) <= bound):
            return everything
        return FitBounds(*_alpha_interval(data[start:], bound), True)
    rivals = _rivals(data, start, bound, fit.estimator)
    if rivals is None:
        return everything
    ranges = [_alpha_interval(data[s:], bound) for s in [start, *rivals]]
    return FitBounds(min(r[0] for r in ranges), max(r[1] for r in ranges), not rivals)


def _alpha_interval(tail: Float, bound: float) -> tuple[float, float]:
    """alpha's range when every value of the tail (xmin first) moves by at most `bound`."""
    xmin, rest = tail[0], tail[1:]
    if xmin <= bound:
        return 1.0, math.inf
    high_sum = float(np.log((rest + bound) / (xmin - bound)).sum())
    low_sum = float(np.maximum(np.log((rest - bound) / (xmin + bound)), 0.0).sum())
    n = tail.size
    return 1.0 + n / high_sum, (1.0 + n / low_sum) if low_sum > 0 else math.inf


def _rivals(data: Float, start: int, bound: float, estimator: str) -> list[int] | None:
    """The other candidate starts whose D could fall to the chosen one's under errors up to
    `bound`; None when the chosen xmin itself is within `RESOLVED` bounds of zero."""
    starts = np.arange(data.size - 1)
    if estimator == "clauset":
        starts = np.flatnonzero(np.r_[True, data[1:] != data[:-1]])
        starts = starts[data[starts] < data[-1]]
    xmins = data[starts]
    chosen = int(np.searchsorted(starts, start))
    if not xmins[chosen] > RESOLVED * bound:
        return None
    alphas = _mle_alphas(data, starts)
    distances = _ks_exact(data, starts, alphas)
    with np.errstate(divide="ignore", invalid="ignore"):
        slack = 2 * np.maximum(alphas - 1, 0) * (1 + 1 / math.e) * bound / (xmins - bound)
    resolved = xmins > RESOLVED * bound
    threat = np.where(
        resolved,
        distances - slack <= distances[chosen] + slack[chosen],
        distances <= distances[chosen] + UNRESOLVED_D_MARGIN,
    )
    threat[chosen] = False
    return [int(s) for s in starts[threat]]
