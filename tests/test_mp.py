"""Tests for llm_audit.spectral.mp: agreement with WeightWatcher 0.7.7, MP theory, edge cases."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from llm_audit.spectral import mp
from llm_audit.spectral.mp import MPFit, fit_mp, jensen_shannon_distance

# ---------------------------------------------------------------- spectra


def _gaussian(n: int, m: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, m))


def _student_t(n: int, m: int, seed: int, df: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_t(df, size=(n, m))


def _planted(n: int, m: int, seed: int, k: int = 5, size: float = 50.0) -> np.ndarray:
    """Gaussian N(0,1) entries plus k entries of `size` σ at distinct rows and distinct columns.

    Each planted entry is a rank-one perturbation size·e_i e_jᵀ. Its singular value separates from
    the bulk when size > (NM)^(1/4) (the BBP transition for a rank-one perturbation of an N×M
    Gaussian matrix): for 512×256 that is ~19, so 50 gives k clear spikes.
    """
    x = _gaussian(n, m, seed)
    rows = np.arange(k) * 7
    cols = np.arange(k) * 5
    x[rows, cols] = size
    return x


def _evals(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of XᵀX (the smaller side when N >= M), in float64."""
    return np.linalg.eigvalsh(x.T @ x)


# (label, matrix maker, N, M, seed)
AGREEMENT_CASES = [
    ("gauss-Q1", _gaussian, 256, 256, 0),
    ("gauss-Q1-b", _gaussian, 384, 384, 1),
    ("gauss-Q1.5", _gaussian, 384, 256, 2),
    ("gauss-Q1.5-b", _gaussian, 300, 200, 3),
    ("gauss-Q2", _gaussian, 512, 256, 4),
    ("gauss-Q2-b", _gaussian, 200, 100, 5),
    ("gauss-Q4", _gaussian, 1024, 256, 6),
    ("gauss-Q4-b", _gaussian, 400, 100, 7),
    ("student-t3-Q1", _student_t, 256, 256, 8),
    ("student-t3-Q2", _student_t, 512, 256, 9),
    ("student-t3-Q4", _student_t, 800, 200, 10),
    ("student-t1.5-Q2", lambda n, m, s: _student_t(n, m, s, df=1.5), 400, 200, 11),
    ("planted-Q1", _planted, 256, 256, 12),
    ("planted-Q2", _planted, 512, 256, 13),
    ("planted-Q4", _planted, 1024, 256, 14),
]

# ---------------------------------------------------------------- WeightWatcher


@pytest.fixture(scope="module")
def weightwatcher() -> Iterator[ModuleType]:
    """WeightWatcher 0.7.7, imported without leaking its side effects into other tests.

    Importing it calls logging.basicConfig(level=INFO) on the root logger and
    warnings.simplefilter("ignore"); both are put back right after the import.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with warnings.catch_warnings():  # restores warnings.filters on exit
        ww = pytest.importorskip("weightwatcher")
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    yield ww


def _ww_mp_fit(ww: ModuleType, evals: np.ndarray, n: int, m: int) -> MPFit:
    """WeightWatcher.mp_fit (what apply_mp_fit calls), mapped onto MPFit's fields."""
    watcher = ww.WeightWatcher()
    num_spikes, sigma, softrank, bulk_min, bulk_max, w_scale = watcher.mp_fit(
        evals, n, m, 1, "test", 0, 0, False, False, None, None, None, True, evals
    )
    return MPFit(
        sigma=float(sigma),
        W_scale=float(w_scale),
        bulk_max=float(bulk_max),
        bulk_min=float(bulk_min),
        threshold=math.nan,  # WW does not return it
        num_spikes=int(num_spikes),
        mp_softrank=float(softrank),
        status="success",
    )


# Both codes do the same float operations except the KDE (sklearn's tree sum vs. ours, ~1e-15
# apart), and Nelder–Mead's absolute tolerances (1e-4) are far coarser than that, so the fits are
# identical in practice. 1e-9 leaves room for a different BLAS or numpy summation order.
REL_TOL = 1e-9


@pytest.mark.parametrize(
    ("label", "make", "n", "m", "seed"), AGREEMENT_CASES, ids=[c[0] for c in AGREEMENT_CASES]
)
def test_fit_mp_matches_weightwatcher(
    weightwatcher: ModuleType,
    label: str,
    make: Callable[[int, int, int], np.ndarray],
    n: int,
    m: int,
    seed: int,
) -> None:
    evals = _evals(make(n, m, seed))
    expected = _ww_mp_fit(weightwatcher, evals, n, m)
    got = fit_mp(evals, Q=n / m, M=m)
    assert got.status == "success" and got.reason is None
    assert got.num_spikes == expected.num_spikes
    for field in ("sigma", "W_scale", "bulk_max", "bulk_min", "mp_softrank"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=REL_TOL), field


@pytest.mark.parametrize(("n", "m", "seed"), [(512, 256, 20), (256, 256, 21)])
def test_grid_residuals_match_weightwatcher_resid_mp(
    weightwatcher: ModuleType, n: int, m: int, seed: int
) -> None:
    """The all-σ-at-once residual equals WW's resid_mp at every grid point of its σ search."""
    from weightwatcher.RMT_Util import calc_sigma, resid_mp

    evals = _evals(_gaussian(n, m, seed))
    q = n / m
    rescaled = (evals.size / np.sum(evals)) * evals
    to_fit = np.sqrt(rescaled) if q == 1 else rescaled
    s0 = calc_sigma(q, rescaled)
    sigmas = np.mgrid[slice(0.05 * s0, 2.0 * s0, 0.01 * s0)]
    expected = np.array([resid_mp(np.array([s]), to_fit, q, 0.1, False) for s in sigmas])
    got = mp._residuals(sigmas, mp._kde_target(to_fit), q)
    assert sigmas.size in (195, 196)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_kde_equals_sklearn(seed: int) -> None:
    kernel_density = pytest.importorskip("sklearn.neighbors").KernelDensity
    rng = np.random.default_rng(seed)
    samples = np.concatenate([rng.gamma(2.0, size=700), rng.pareto(1.5, size=20) + 3])
    grid = np.linspace(0, samples.max() + 0.5, 1000)
    kde = kernel_density(kernel="linear", bandwidth=0.1).fit(samples.reshape(-1, 1))
    expected = np.exp(kde.score_samples(grid[:, None]))
    got = mp._linear_kde(np.sort(samples), grid, 0.1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- MP theory


@pytest.mark.parametrize("q", [1, 2, 4])
@pytest.mark.parametrize("seed", [30, 31])
def test_bulk_edge_close_to_analytic_mp(q: int, seed: int) -> None:
    """For i.i.d. N(0,1) entries the rescaled spectrum has σ = 1 and edge (1 + Q^-1/2)².

    Tolerance: the empirical edge fluctuates on the Tracy–Widom scale, O(M^-2/3) relative
    (1.8% at M = 400); the σ grid step is 1% of s0, i.e. up to 2% in the edge (∝ σ²), which the
    Nelder–Mead polish only partly recovers on a rough residual; and the 0.1-wide KDE rounds
    the square-root edges (WW's Q = 1 fit comes out ~1.5% high from it). Sum: 2·M^-2/3 + 2%.
    Observed over 20 seeds at M = 400: at most 2.5%.
    """
    m = 400
    n = q * m
    fit = fit_mp(_evals(_gaussian(n, m, seed)), Q=q, M=m)
    edge = fit.bulk_max * fit.W_scale**2  # back to rescaled (mean-1) units
    analytic = (1 + q**-0.5) ** 2
    tolerance = 2 * m ** (-2 / 3) + 0.02
    assert fit.status == "success"
    assert edge == pytest.approx(analytic, rel=tolerance)
    assert fit.sigma == pytest.approx(1.0, rel=tolerance)
    assert fit.num_spikes == 0


@pytest.mark.parametrize(("n", "m"), [(512, 256), (256, 256), (1024, 256)])
def test_planted_entries_give_that_many_spikes(n: int, m: int) -> None:
    evals = _evals(_planted(n, m, seed=40, k=5, size=50.0))
    fit = fit_mp(evals, Q=n / m, M=m)
    assert fit.num_spikes == 5
    assert np.count_nonzero(evals > fit.threshold) == 5  # threshold is in original units
    assert fit.bulk_min < fit.bulk_max < fit.threshold


def test_units_and_consistency() -> None:
    evals = _evals(_gaussian(512, 256, 50)) * 7.5  # any overall scale
    q = 2.0
    fit = fit_mp(evals, Q=q, M=256)
    assert fit.W_scale == pytest.approx(math.sqrt(evals.size / evals.sum()))
    scale = fit.W_scale**2
    assert fit.bulk_max * scale == pytest.approx((fit.sigma * (1 + q**-0.5)) ** 2)
    assert fit.bulk_min * scale == pytest.approx((fit.sigma * (1 - q**-0.5)) ** 2)
    tw = q**-0.5 * (fit.bulk_max * scale) ** (2 / 3) * 256 ** (-2 / 3)
    assert fit.threshold * scale == pytest.approx(fit.bulk_max * scale + math.sqrt(tw))
    assert fit.mp_softrank == pytest.approx(fit.bulk_max / evals.max())
    # The fit is scale-free: the same matrix times 7.5 gives the same sigma.
    assert fit_mp(evals / 7.5, Q=q, M=256).sigma == pytest.approx(fit.sigma, rel=1e-12)


def test_no_numpy_warnings_and_order_does_not_matter() -> None:
    evals = _evals(_student_t(384, 256, 60))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_mp(evals, Q=1.5, M=256)
        shuffled = fit_mp(np.random.default_rng(0).permutation(evals), Q=1.5, M=256)
        square = fit_mp(_evals(_gaussian(128, 128, 61)), Q=1.0, M=128)
    assert fit == shuffled
    assert square.status == "success"


def test_q1_tolerates_round_off_negative_eigenvalues() -> None:
    """A rank-deficient square Gram has tiny negative eigenvalues; WW takes their sqrt and fails."""
    rng = np.random.default_rng(70)
    x = rng.standard_normal((200, 150)) @ rng.standard_normal((150, 200))
    evals = _evals(x)
    evals[0] = -1e-10 * evals.max()  # make sure at least one is negative
    fit = fit_mp(evals, Q=1.0, M=200)
    assert fit.status == "success"
    assert math.isfinite(fit.sigma)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("evals", "reason_part"),
    [
        (np.array([]), "at least 2"),
        (np.array([3.0]), "at least 2"),
        (np.array([1.0, np.nan, 2.0]), "NaN or inf"),
        (np.array([1.0, np.inf, 2.0]), "NaN or inf"),
        (np.zeros(50), "zero"),
        (np.array([-1.0, 2.0, 3.0]), "negative"),
    ],
    ids=["empty", "one", "nan", "inf", "zeros", "negative"],
)
def test_unfittable_spectra_fail_without_raising(evals: np.ndarray, reason_part: str) -> None:
    fit = fit_mp(evals, Q=2.0, M=50)
    assert fit.status == "failed"
    assert fit.reason is not None and reason_part in fit.reason
    assert fit.num_spikes == 0
    for field in ("sigma", "W_scale", "bulk_max", "bulk_min", "threshold", "mp_softrank"):
        assert math.isnan(getattr(fit, field)), field


@pytest.mark.parametrize(("q", "m"), [(0.5, 10), (math.nan, 10), (2.0, 0), (2.0, 2.5)])
def test_invalid_shape_arguments_raise(q: float, m: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        fit_mp(np.arange(1.0, 20.0), Q=q, M=m)


# ---------------------------------------------------------------- Jensen–Shannon


def test_jsd_identical_is_zero() -> None:
    p = np.random.default_rng(80).gamma(2.0, size=300)
    assert jensen_shannon_distance(p, p) == 0.0
    assert jensen_shannon_distance(p, 3.0 * p) == pytest.approx(0.0, abs=1e-7)  # scale-free


def test_jsd_hand_computed_pair() -> None:
    # p = [1, 3] -> [1/4, 3/4]; q = [2, 2] -> [1/2, 1/2]; m = [3/8, 5/8].
    kl_pm = 0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)
    kl_qm = 0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)
    expected = math.sqrt((kl_pm + kl_qm) / 2)
    assert expected == pytest.approx(0.18391, abs=1e-5)  # = sqrt((0.035375 + 0.032269) / 2)
    assert jensen_shannon_distance(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == pytest.approx(
        expected, rel=1e-12
    )
    # Inputs are rank-ordered first, so [3, 1] is the same spectrum as [1, 3].
    assert jensen_shannon_distance(np.array([3.0, 1.0]), np.array([2.0, 2.0])) == pytest.approx(
        expected, rel=1e-12
    )


def test_jsd_symmetric_bounded_and_equal_to_scipy_on_sorted_vectors() -> None:
    rng = np.random.default_rng(81)
    for _ in range(20):
        p, q = rng.pareto(1.5, size=100), rng.gamma(1.0, size=100)
        d = jensen_shannon_distance(p, q)
        assert d == pytest.approx(jensen_shannon_distance(q, p), rel=1e-12)
        assert 0.0 <= d <= math.sqrt(math.log(2))
        assert d == pytest.approx(jensenshannon(np.sort(p), np.sort(q)), rel=1e-9)
    # One spike against a flat spectrum approaches the bound sqrt(ln 2) as n grows.
    n = 1_000_000
    spike = np.zeros(n)
    spike[-1] = 1.0
    d = jensen_shannon_distance(spike, np.ones(n))
    assert math.sqrt(math.log(2)) - 1e-3 < d <= math.sqrt(math.log(2))


def test_jsd_matches_weightwatcher_for_equal_sums(weightwatcher: ModuleType) -> None:
    """WW's rand_distance compares spectra with equal sums (shuffling keeps ‖W‖_F²)."""
    from weightwatcher.RMT_Util import jensen_shannon_distance as ww_jsd

    x = _planted(300, 200, seed=90)
    shuffled = np.random.default_rng(91).permutation(x.ravel()).reshape(x.shape)
    evals, rand_evals = _evals(x), _evals(shuffled)
    assert jensen_shannon_distance(evals, rand_evals) == pytest.approx(
        ww_jsd(evals, rand_evals), rel=1e-9
    )


def test_jsd_degenerate_inputs() -> None:
    assert math.isnan(jensen_shannon_distance(np.zeros(3), np.ones(3)))
    assert math.isnan(jensen_shannon_distance(np.array([1.0, np.nan]), np.ones(2)))
    with pytest.raises(ValueError, match="equal length"):
        jensen_shannon_distance(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="equal length"):
        jensen_shannon_distance(np.array([]), np.array([]))
