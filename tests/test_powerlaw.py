"""Known answers for `spectral.powerlaw`: WeightWatcher itself, planted power laws, failures."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from llm_audit.spectral import powerlaw
from llm_audit.spectral.powerlaw import (
    EVALS_THRESH,
    PowerLawFit,
    candidate_fits,
    fit_power_law,
)
from llm_audit.vocabulary import ESTIMATORS

# --- WeightWatcher as the reference ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ww() -> Iterator[Any]:
    """A `weightwatcher.WeightWatcher`, imported without letting it reconfigure logging, warnings.

    Importing weightwatcher calls `logging.basicConfig(level=INFO)` and `warnings.simplefilter
    ("ignore")`, which would change every later test; both are put back.
    """
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        with warnings.catch_warnings():  # restores warnings.filters on exit
            module: ModuleType = pytest.importorskip("weightwatcher")
            watcher = module.WeightWatcher()
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    yield watcher


def ww_fit(watcher: Any, evals: np.ndarray) -> dict[str, Any]:
    """WW 0.7.7's own default fit (`WeightWatcher.fit_powerlaw`), as a dict of our field names."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        alpha, _, xmin, xmax, d, sigma, spikes, *_, status, _ = watcher.fit_powerlaw(
            evals, plot=False
        )
    return {
        "alpha": alpha,
        "D": d,
        "xmin": xmin,
        "xmax": xmax,
        "sigma": sigma,
        "num_pl_spikes": spikes,
        "status": status,
    }


def gram_evals(matrix: np.ndarray) -> np.ndarray:
    """All eigenvalues of WᵀW, as the spectral module will hand them over."""
    return np.linalg.eigvalsh(matrix.T @ matrix)


def reference_spectra() -> list[tuple[str, np.ndarray]]:
    """About twenty seeded spectra: Gaussian, heavy-tailed (Student-t), Pareto, tiny, degenerate."""
    rng = np.random.default_rng(20240607)
    spectra = []
    for rows, cols in [(100, 50), (300, 100), (256, 256), (1000, 300)]:
        spectra.append((f"gauss {rows}x{cols}", gram_evals(rng.standard_normal((rows, cols)))))
    for rows, cols, dof in [(200, 100, 3.0), (400, 200, 2.5), (800, 400, 4.0)]:
        matrix = rng.standard_t(dof, size=(rows, cols))
        spectra.append((f"student-t{dof} {rows}x{cols}", gram_evals(matrix)))
    for size, tail in [(50, 1.0), (1000, 2.0), (3000, 0.7)]:
        spectra.append((f"pareto a={tail} n={size}", rng.pareto(tail, size) + 1.0))
    # rank 60 of 100: forty eigenvalues are ~0 (some tiny negatives) and must be thresholded away
    low_rank = rng.standard_normal((200, 60)) @ rng.standard_normal((60, 100))
    spectra.append(("rank-deficient 200x100", gram_evals(low_rank)))
    # exact duplicates everywhere: candidate xmins repeat, ratios are exactly 1
    spectra.append(("integers with repeats", rng.integers(1, 6, size=60).astype(float)))
    spectra.append(("powers of two", 2.0 ** rng.integers(0, 12, size=80)))
    # WW's small-N path (fewer than 20 eigenvalues above the threshold), with and without fallback
    for size in (2, 5, 8, 12, 19):
        spectra.append((f"small pareto n={size}", rng.pareto(1.5, size) + 1.0))
    spectra.append(("small gauss 19x40", gram_evals(rng.standard_normal((40, 19)))))
    spectra.append(("small with zeros", np.concatenate([np.zeros(30), rng.pareto(2.0, 15) + 1.0])))
    return spectra


SPECTRA = reference_spectra()


@pytest.mark.parametrize(("name", "evals"), SPECTRA, ids=[name for name, _ in SPECTRA])
def test_ww_estimator_matches_weightwatcher(ww: Any, name: str, evals: np.ndarray) -> None:
    ours = fit_power_law(evals)
    theirs = ww_fit(ww, evals)
    assert ours.status == theirs["status"] == "success"
    assert ours.xmin == theirs["xmin"]  # the same candidate, not merely a close one
    assert ours.xmax == theirs["xmax"]
    assert ours.num_pl_spikes == theirs["num_pl_spikes"]
    # same formulas, summed in another order: agreement to rounding, not to the bit
    assert ours.alpha == pytest.approx(theirs["alpha"], rel=1e-9)
    assert pytest.approx(theirs["D"], rel=1e-9) == ours.D
    fitted = int(np.count_nonzero(evals > EVALS_THRESH))
    if fitted < powerlaw.SMALL_N_MIN_TAIL:
        # the one deliberate difference: WW's small-N fallback reports a stale sigma, -1/sqrt(N)
        assert theirs["sigma"] == pytest.approx(-1.0 / math.sqrt(fitted), rel=1e-12)
        assert ours.sigma == pytest.approx((ours.alpha - 1.0) / math.sqrt(fitted), rel=1e-12)
    else:
        assert ours.sigma == pytest.approx(theirs["sigma"], rel=1e-9)


def test_small_n_selection_is_argmin_d_not_the_j_objective(ww: Any) -> None:
    """WW computes J = D - 0.868/sqrt(n) for small N, but `WWFit.__init__` re-picks by argmin D."""
    evals = np.random.default_rng(1).pareto(2.0, size=19) + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from weightwatcher.WW_powerlaw import WWFit

        fit = WWFit(np.sort(evals))
    assert np.argmin(fit.Js) != np.argmin(fit.Ds)  # this seed separates the two rules
    assert fit_power_law(evals).xmin == fit.xmins[np.argmin(fit.Ds)] == fit.xmin


def test_argmin_ties_go_to_the_first_candidate() -> None:
    """Like WW's np.argmin. Exact ties need identical candidates, so the list repeats some."""
    rng = np.random.default_rng(3)
    data = np.sort(rng.pareto(1.5, 300) + 1.0)
    _, alphas, distances = candidate_fits(data)
    best = int(np.argmin(distances))
    starts = np.array([0, best, best, best + 1, best + 1, 250, 250])
    position, distance = powerlaw._argmin_ks(data, starts, alphas[starts])
    assert position == 1
    assert distance == distances[best]
    # with the optimum absent, the tie between two copies of the best remaining goes to the first
    rest = starts[3:]
    position, _ = powerlaw._argmin_ks(data, rest, alphas[rest])
    assert position == int(np.argmin(distances[rest]))
    assert position % 2 == 0  # copies sit at (0, 1) and (2, 3): always the first of a pair


# --- the vectorized KS distance against a plain loop ---------------------------------------------


def reference_distances(data: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """WW's loop: D_i = max_k |1 - (x_{i+k}/x_i)^(1-alpha_i) - k/n|, and 1 when alpha_i <= 1."""
    distances = np.ones(data.size - 1)
    for i, alpha in enumerate(alphas):
        n = float(data.size - i)
        if alpha > 1:
            fitted = (data[i:] / data[i]) ** (-alpha + 1)
            distances[i] = np.max(np.abs(1 - fitted - np.arange(n) / n))
    return distances


@pytest.mark.parametrize(("name", "evals"), SPECTRA, ids=[name for name, _ in SPECTRA])
def test_vectorized_distances_equal_the_loop(name: str, evals: np.ndarray) -> None:
    data = np.sort(evals[evals > EVALS_THRESH])
    xmins, alphas, distances = candidate_fits(evals)
    np.testing.assert_array_equal(xmins, data[:-1])
    np.testing.assert_array_equal(distances, reference_distances(data, alphas))  # bit for bit


@pytest.mark.parametrize("seed", range(12))
def test_branch_and_bound_picks_the_brute_force_argmin(seed: int) -> None:
    """The pruned search returns exactly np.argmin of every D, on spectra of several kinds."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(20, 1500))
    kind = seed % 3
    if kind == 0:
        evals = rng.pareto(rng.uniform(0.5, 4.0), size) + 1.0
    elif kind == 1:
        evals = gram_evals(rng.standard_t(3.0, size=(2 * size, size)))
    else:
        evals = gram_evals(rng.standard_normal((size + 10, size)))
    data = np.sort(evals[evals > EVALS_THRESH])
    starts = np.arange(data.size - 1)
    _, alphas, distances = candidate_fits(evals)
    position, distance = powerlaw._argmin_ks(data, starts, alphas)
    assert position == int(np.argmin(distances))
    assert distance == distances.min()


def test_lower_bounds_never_exceed_the_distance() -> None:
    rng = np.random.default_rng(7)
    data = np.sort(rng.standard_t(2.5, size=(1200, 600)).std(axis=0) ** 2)
    starts = np.arange(data.size - 1)
    _, alphas, distances = candidate_fits(data)
    assert np.all(powerlaw._ks_lower_bounds(data, starts, alphas) <= distances)


def test_lower_bounds_zoom_in_on_long_tails() -> None:
    """On 20,000 values the bound zooms in over several rounds and still finds D most of the time
    (61% of these candidates, within 0 of D at the median), which is what the pruning needs."""
    data = np.sort(pareto_sample(2.2, 20_000, seed=4) * np.random.default_rng(4).uniform(1, 2))
    starts = np.arange(0, data.size - 1, 97)  # every 97th candidate: D in full stays cheap
    alphas = powerlaw._mle_alphas(data, starts)
    exact = powerlaw._ks_exact(data, starts, alphas)
    lower = powerlaw._ks_lower_bounds(data, starts, alphas)
    assert np.all(lower <= exact)
    assert np.mean(lower == exact) > 0.5
    assert np.median(exact - lower) == 0.0


# --- Clauset, Shalizi and Newman's own method ----------------------------------------------------

# CSN (SIAM Review 2009) Table 6.1, the continuous data sets, as `powerlaw` ships them (values in
# thousands where the table's are: factor): published xmin, alpha (to the digits printed) and
# tail size n_tail.
TABLE_6_1 = {
    "blackouts": (1e-3, 230.0, "2.3", 59),
    "cities": (1e-3, 52.46, "2.37", 580),
    "fires": (1.0, 6324.0, "2.2", 521),
    "flares": (1.0, 323.0, "1.79", 1711),
    "quakes": (1e-3, 0.794, "1.64", 11697),
    "surnames": (1e-3, 111.92, "2.5", 239),
}


def reference_data(name: str) -> np.ndarray:
    """One of the `powerlaw` package's reference data sets (a weightwatcher dependency)."""
    package = pytest.importorskip("powerlaw")
    return np.asarray(package.load_test_dataset(name), dtype=np.float64)


@pytest.mark.parametrize("name", TABLE_6_1)
def test_clauset_reproduces_table_6_1(name: str) -> None:
    factor, xmin, alpha, n_tail = TABLE_6_1[name]
    values = reference_data(name) * factor
    fit = fit_power_law(values, estimator="clauset")
    assert fit.xmin == pytest.approx(xmin, rel=1e-3)
    assert f"{fit.alpha:.{len(alpha) - 2}f}" == alpha
    assert fit.num_pl_spikes == n_tail == np.count_nonzero(values >= fit.xmin)
    assert fit.sigma == pytest.approx((fit.alpha - 1.0) / math.sqrt(n_tail))


@pytest.mark.parametrize("name", ["quakes", "surnames"])
def test_ww_starts_inside_a_run_of_equal_values(name: str) -> None:
    """Why `clauset` exists: on repeated values, WW's index scan fits part of a run, elsewhere."""
    factor, xmin, _, _ = TABLE_6_1[name]
    values = reference_data(name) * factor
    fit = fit_power_law(values, estimator="ww")
    assert fit.xmin != pytest.approx(xmin, rel=1e-3)
    data = np.sort(values)
    start = int(np.searchsorted(data, fit.xmin))
    fitted = data.size - start
    # the tail WW fitted begins part-way through its xmin's run, so it is smaller than its count
    assert fitted > 0
    assert fit.alpha != pytest.approx(1.0 + fitted / math.fsum(np.log(data[start:] / fit.xmin)))
    assert fit.num_pl_spikes == np.count_nonzero(values >= fit.xmin)


def plfit_continuous(values: np.ndarray) -> tuple[float, float, float]:
    """CSN's plfit.m, continuous branch, as a plain loop: (xmin, alpha, D)."""
    data = np.sort(values)
    best = (math.inf, math.nan, math.nan)
    for xmin in np.unique(data)[:-1]:
        tail = data[data >= xmin]
        n = tail.size
        alpha = 1.0 + n / np.sum(np.log(tail / xmin))
        distance = np.max(np.abs(1 - (tail / xmin) ** (-alpha + 1) - np.arange(n) / n))
        if distance < best[0]:
            best = (distance, xmin, alpha)
    return best[1], best[2], best[0]


@pytest.mark.parametrize("seed", range(6))
def test_clauset_is_plfit_on_values_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.round(rng.pareto(rng.uniform(0.8, 2.5), 600) + 1.0, 1)  # many repeats
    xmin, alpha, distance = plfit_continuous(values)
    fit = fit_power_law(values, estimator="clauset")
    assert fit.xmin == xmin
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert pytest.approx(distance, rel=1e-9) == fit.D
    assert fit.num_pl_spikes == np.count_nonzero(values >= xmin)


def test_clauset_equals_ww_without_ties() -> None:
    evals = gram_evals(np.random.default_rng(2).standard_t(3.0, size=(500, 250)))
    ours, theirs = fit_power_law(evals, estimator="clauset"), fit_power_law(evals)
    assert (ours.xmin, ours.alpha, ours.D) == (theirs.xmin, theirs.alpha, theirs.D)


def test_fit_power_law_is_exported() -> None:
    import llm_audit

    fit = llm_audit.fit_power_law(pareto_sample(2.5, 300, seed=1), estimator="clauset")
    assert isinstance(fit, llm_audit.PowerLawFit) and fit.estimator == "clauset"


# --- planted power laws --------------------------------------------------------------------------

PLANTED_ALPHAS = (1.5, 2.0, 3.0, 4.0, 5.0)


def pareto_sample(alpha: float, size: int, seed: int) -> np.ndarray:
    """Samples with density p(x) ∝ x^-alpha on [1, ∞): numpy's Lomax shape is alpha - 1."""
    return np.random.default_rng(seed).pareto(alpha - 1.0, size) + 1.0


# Tolerance per estimator, as (number of sigmas, absolute slack). The CSN maximum-likelihood
# alpha has standard error (alpha-1)/sqrt(n_tail) (the fit's own sigma) and bias
# (alpha-1)/(n_tail-1), negligible here, so 4 sigma fails by chance about once in 16,000 fits.
# "ww" picks n_tail itself by min D, and that selection widens the spread: over 300 seeds
# (alpha_hat - alpha)/sigma had mean 0.1 and standard deviation 1.1 (max 4.0), hence
# 4 sigma + 0.05. "xmin_peak" starts its window at the histogram mode, here the smallest samples,
# so its tail is nearly all the data and it behaves like a fit at the true xmin (sd 1.0-1.1):
# 4 sigma + 0.02. "median" fits the top half of a pure power law, itself a power law with the
# same alpha (sd 1.0, max 3.4): 4 sigma, with sigma for n/2.
# "clauset" differs from "ww" only where values repeat, which they do not here: the same tolerance.
TOLERANCE = {
    "ww": (4.0, 0.05),
    "xmin_peak": (4.0, 0.02),
    "median": (4.0, 0.0),
    "clauset": (4.0, 0.05),
}


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("alpha", PLANTED_ALPHAS)
def test_planted_pareto_alpha_is_recovered(estimator: str, alpha: float) -> None:
    fit = fit_power_law(pareto_sample(alpha, 2000, seed=int(alpha * 10)), estimator=estimator)
    assert fit.status == "success"
    assert fit.estimator == estimator
    sigmas, bias = TOLERANCE[estimator]
    assert abs(fit.alpha - alpha) <= sigmas * fit.sigma + bias
    assert fit.sigma == pytest.approx((fit.alpha - 1.0) / math.sqrt(fit.num_pl_spikes))


def planted_matrix(alpha: float, seed: int) -> np.ndarray:
    """W = U diag(s) Vᵀ, 1200 x 600, whose s² are a bulk under 1 and a power-law tail above it.

    The bottom 40% of s² are uniform on [0.05, 1); the top 60% have density ∝ λ^-alpha on [1, ∞),
    so the median eigenvalue lies in the tail and WW's xmin should land near 1.
    """
    rng = np.random.default_rng(seed)
    rows, cols = 1200, 600
    bulk = int(0.4 * cols)
    squares = np.concatenate(
        [rng.uniform(0.05, 1.0, bulk), rng.pareto(alpha - 1.0, cols - bulk) + 1.0]
    )
    left, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    right, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return (left * np.sqrt(squares)) @ right.T


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("alpha", (2.0, 3.0, 4.0))
def test_planted_matrix_alpha_is_recovered(estimator: str, alpha: float) -> None:
    # A tail of 360 eigenvalues: sigma ~ (alpha-1)/19. The bulk just under 1 moves a min-D xmin a
    # little down into it or up the tail (0.87 to 2.45 over 30 seeds at alpha = 2; standardized
    # error sd 1.3, max 2.8), so the same 4 sigma + slack as for the pure Pareto sample.
    evals = gram_evals(planted_matrix(alpha, seed=int(alpha)))
    fit = fit_power_law(evals, estimator=estimator)
    assert fit.status == "success"
    sigmas, bias = TOLERANCE[estimator]
    assert abs(fit.alpha - alpha) <= sigmas * fit.sigma + bias
    if estimator != "median":  # the median is inside the tail, well above its start
        assert 0.8 <= fit.xmin <= 2.5


def test_gaussian_matrix_looks_under_trained() -> None:
    """A random Gaussian layer has a Marchenko–Pastur spectrum, no power law: alpha > 6."""
    evals = gram_evals(np.random.default_rng(0).standard_normal((1000, 500)) / math.sqrt(1000))
    fit = fit_power_law(evals)
    assert fit.status == "success"
    assert fit.alpha > 6.0


# --- the other estimators' definitions -----------------------------------------------------------


def test_median_estimator_is_the_hill_fit_of_the_top_half() -> None:
    evals = pareto_sample(2.5, 1001, seed=5)
    data = np.sort(evals)
    xmin = data[data.size // 2]
    tail = data[data.size // 2 :]
    fit = fit_power_law(evals, estimator="median")
    assert fit.xmin == xmin
    assert fit.num_pl_spikes == tail.size == 501
    assert fit.alpha == pytest.approx(1.0 + tail.size / math.fsum(np.log(tail / xmin)), rel=1e-12)
    n = float(tail.size)
    terms = 1 - (tail / xmin) ** (-fit.alpha + 1) - np.arange(n) / n
    assert np.max(np.abs(terms)) == fit.D


def test_xmin_peak_searches_only_near_the_histogram_mode() -> None:
    """xmin is the min-D candidate in [0.95, 1.5] x the log10-histogram mode's left edge (linear).

    WW and AlphaPruning take log10(0.95 x edge) as the lower bound instead. On this Marchenko–Pastur
    bulk with three outliers ("fingers") the edge is ~ 3.3, so that bound is ~ 0.49 and admits
    eigenvalues far below the mode; min D then lands below the window: the bug changes the answer.
    """
    bulk = gram_evals(np.random.default_rng(11).standard_normal((2000, 1000)) / math.sqrt(1000))
    evals = np.concatenate([bulk, [50.0, 80.0, 120.0]])
    counts, edges = np.histogram(np.log10(evals), bins=100)
    peak = 10.0 ** edges[np.argmax(counts)]
    fit = fit_power_law(evals, estimator="xmin_peak")
    assert fit.status == "success"
    xmins, _, distances = candidate_fits(evals)

    window = (xmins >= 0.95 * peak) & (xmins <= 1.5 * peak)
    assert fit.xmin == xmins[window][np.argmin(distances[window])]
    assert fit.num_pl_spikes == np.count_nonzero(evals >= fit.xmin)

    buggy = (xmins >= np.log10(0.95 * peak)) & (xmins <= 1.5 * peak)
    assert buggy.sum() > 3 * window.sum()
    assert xmins[buggy][np.argmin(distances[buggy])] < 0.95 * peak < fit.xmin


# --- failures -------------------------------------------------------------------------------------

FAILURES = {
    "empty": (np.array([]), "fewer than 2"),
    "all below threshold": (np.array([0.0, 1e-7, -1e-9, EVALS_THRESH]), "fewer than 2"),
    "one value": (np.array([0.0, 0.0, 3.0]), "fewer than 2"),
    "all equal": (np.full(50, 2.0), "equal"),
    "all equal, small": (np.full(5, 2.0), "equal"),
    "nan present": (np.array([1.0, 2.0, np.nan, 4.0] * 10), "non-finite"),
    "inf present": (np.array([1.0, 2.0, np.inf, 4.0] * 10), "non-finite"),
}


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("case", FAILURES)
def test_failed_fits_are_nan_with_a_reason(case: str, estimator: str) -> None:
    evals, phrase = FAILURES[case]
    fit = fit_power_law(evals, estimator=estimator)
    assert fit.status == "failed"
    assert fit.reason is not None and phrase in fit.reason
    assert fit.estimator == estimator
    assert fit.num_pl_spikes == 0
    for value in (fit.alpha, fit.D, fit.xmin, fit.xmax, fit.sigma):
        assert math.isnan(value)


def test_median_needs_a_tail_of_two() -> None:
    fit = fit_power_law(np.array([1.0, 2.0]), estimator="median")
    assert fit.status == "failed" and fit.reason is not None and "median" in fit.reason


def test_success_has_no_reason_and_is_frozen() -> None:
    fit = fit_power_law(pareto_sample(3.0, 200, seed=0))
    assert fit.status == "success" and fit.reason is None
    with pytest.raises(AttributeError):
        fit.alpha = 2.0  # type: ignore[misc]
    assert isinstance(fit, PowerLawFit)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="ww, xmin_peak, median"):
        fit_power_law(np.ones(10), estimator="hill")
    with pytest.raises(ValueError, match="1-D"):
        fit_power_law(np.ones((4, 4)))


def test_order_and_zeros_do_not_matter() -> None:
    evals = pareto_sample(2.5, 500, seed=9)
    shuffled = np.random.default_rng(0).permutation(np.concatenate([evals, np.zeros(100)]))
    for estimator in ESTIMATORS:
        assert fit_power_law(shuffled, estimator=estimator) == fit_power_law(
            evals, estimator=estimator
        )


@pytest.mark.parametrize("estimator", ["ww", "clauset", "median"])
def test_fit_bounds_cover_every_nearby_spectrum(estimator: str) -> None:
    """Spectra within the bound fit alphas inside `fit_bounds`' range; with the xmin settled,
    the range is small around alpha."""
    rng = np.random.default_rng(5)
    evals = np.sort(rng.pareto(2.5, 400) + 1.0) * 10
    fit = fit_power_law(evals, estimator=estimator)
    bound = 1e-4 * evals[-1]
    bounds = powerlaw.fit_bounds(evals, fit, bound)
    assert bounds.alpha_low < fit.alpha < bounds.alpha_high
    for _ in range(20):
        moved = evals + rng.uniform(-bound, bound, evals.size)
        alpha = fit_power_law(moved, estimator=estimator).alpha
        assert bounds.alpha_low <= alpha <= bounds.alpha_high


def test_fit_bounds_of_an_unresolved_xmin_are_everything() -> None:
    """An xmin within `RESOLVED` bounds of zero bounds nothing: alpha could be anything."""
    evals = np.sort(np.random.default_rng(6).pareto(2.0, 200) + 1.0)
    fit = fit_power_law(evals)
    bounds = powerlaw.fit_bounds(evals, fit, fit.xmin / powerlaw.RESOLVED)
    assert (bounds.alpha_low, bounds.alpha_high, bounds.xmin_settled) == (-np.inf, np.inf, False)
