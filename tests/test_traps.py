"""Correlation traps: known answers, the mean spike, reproducibility, and WeightWatcher's counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import llm_audit
from llm_audit.spectral import traps
from llm_audit.spectral.esd import as_lazy, eigenvalues, torch_threads
from llm_audit.spectral.shuffle import Permutation
from tests.ww_reference import ww_details


def _gaussian(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _traps(W: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    record, _ = traps.trap_metrics(W, eigenvalues(W).numpy(), seed=seed)
    return record


@pytest.mark.parametrize("shape", [(512, 256), (256, 256), (1024, 256), (256, 1024)])
def test_gaussian_matrix_has_no_traps(shape: tuple[int, int]) -> None:
    r = _traps(_gaussian(*shape))
    assert r["rand_num_spikes"] == 0 and r["num_traps"] == 0 and "trap_entries" not in r


@pytest.mark.parametrize("shape", [(512, 256), (256, 512), (1024, 256)])
def test_planted_entries_are_traps_and_are_located(shape: tuple[int, int]) -> None:
    W = _gaussian(*shape, seed=1)
    planted = [(3, 7), (50, 100), (101, 11), (200, 250), (377 % shape[0], 42)]
    for r, c in planted:
        W[r, c] = 50.0  # 50 standard deviations: each entry alone is a rank-one spike of 2500
    rec = _traps(W)
    # Planted entries that the shuffle puts in one row or column merge into one spike (about 6%
    # of shuffles here), so the expected count is the number of groups sharing no row or column.
    shuffled = _shuffled(W, seed=0)
    expected = _groups([tuple(p) for p in (shuffled.abs() > 40).nonzero().tolist()])
    assert 4 <= expected <= 5
    assert rec["num_traps"] == expected and rec["rand_num_spikes"] == expected
    located = {(e["row"], e["col"]) for e in rec["trap_entries"][:5]}
    assert located == set(planted)
    assert all(e["z"] > 40 for e in rec["trap_entries"][:5])


def _shuffled(W: torch.Tensor, seed: int) -> torch.Tensor:
    """The tall shuffled matrix whose Gram `trap_metrics` takes: S.flat[i] = W.flat[π(i)]."""
    N, M = max(W.shape), min(W.shape)
    where = Permutation(W.numel(), seed).block(0, W.numel())
    return W.reshape(-1)[where.long()].reshape(N, M)


def _groups(cells: list[tuple[int, int]]) -> int:
    """Connected groups of cells linked by a shared row or column."""
    parent = list(range(len(cells)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(cells):
        for j, b in enumerate(cells[:i]):
            if a[0] == b[0] or a[1] == b[1]:
                parent[root(i)] = root(j)
    return len({root(i) for i in range(len(cells))})


def test_constant_offset_is_a_mean_spike_not_a_trap() -> None:
    W = _gaussian(512, 256, seed=2) + 0.5  # mean 0.5: a shuffled spike of about N·M·0.25
    rec = _traps(W)
    assert rec["rand_num_spikes"] == 1  # WeightWatcher's count includes the mean spike
    assert rec["num_traps"] == 0  # centring removes it
    assert rec["mean_weight"] == pytest.approx(0.5, abs=0.01)


def test_small_layers_are_shuffled_five_times() -> None:
    rec, spectra = traps.trap_metrics(
        _gaussian(200, 50), eigenvalues(_gaussian(200, 50)).numpy(), seed=0
    )
    assert rec["num_shuffles"] == 5 and len(spectra["rand_evals"]) == 250
    assert rec["num_traps"] == 0 and rec["trap_share"] == 0


def test_shuffles_are_reproducible_and_seeded() -> None:
    W = _gaussian(300, 100, seed=4)
    a, sa = traps.trap_metrics(W, eigenvalues(W).numpy(), seed=11)
    b, sb = traps.trap_metrics(W, eigenvalues(W).numpy(), seed=11)
    _, sc = traps.trap_metrics(W, eigenvalues(W).numpy(), seed=12)
    np.testing.assert_array_equal(sa["rand_evals"], sb["rand_evals"])
    assert a == b
    assert not np.array_equal(sa["rand_evals"], sc["rand_evals"])
    # The shuffle keeps the Frobenius norm: the shuffled spectrum has the same sum (to the
    # rounding of its float32 Gram).
    assert sa["rand_evals"].sum() == pytest.approx(eigenvalues(W).sum().item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trap_metrics_do_not_depend_on_the_thread_count(dtype: torch.dtype) -> None:
    """The gather, centring and Gram product may run on several threads (a large matrix alone on
    the machine): records and spectra are bitwise those of one thread. 20000×256 is large
    enough for torch to split the gather, the centring and the GEMM across threads."""
    W = _gaussian(20000, 256, seed=9).add_(0.3)
    W[5, 6] = W[700, 80] = 400.0  # traps: the count goes through eigvalsh, not only Cholesky
    W = W.to(dtype)
    evals = eigenvalues(W).numpy()
    with torch_threads(1):  # the caller's threads, as in analysis.analyze
        one = traps.trap_metrics(W, evals, seed=3, threads=1)
        two = traps.trap_metrics(W, evals, seed=3, threads=2)
    assert one[0]["num_traps"] == 2
    assert one[0] == two[0]
    np.testing.assert_array_equal(one[1]["rand_evals"], two[1]["rand_evals"])


def test_shuffle_moments_are_the_centred_matrix_moments_for_any_thread_count() -> None:
    """The first shuffle's column sums rebuild its uncentred Gram, and Σ(w − μ)⁴ is W's own
    (no shuffle changes it): both checked against a float64 computation on the shuffled matrix
    itself, and bitwise the same on one thread and on two."""
    W = _gaussian(20000, 256, seed=4).add_(0.2)
    W[3, 4] = 50.0
    lazy, perm = as_lazy(W), Permutation(W.numel(), 7)
    mu = traps.mean(lazy)
    with torch_threads(1):
        G, one = traps.shuffled_gram(lazy, perm, mu, torch.float32, moments=True, threads=1)
        _, two = traps.shuffled_gram(lazy, perm, mu, torch.float32, moments=True, threads=2)
        _, none = traps.shuffled_gram(lazy, perm, mu, torch.float32)
    assert one is not None and two is not None and none is None
    assert one.fourth == two.fourth
    assert torch.equal(one.column_sums, two.column_sums)
    S = W.reshape(-1)[perm(torch.arange(W.numel()))].reshape(20000, 256).double() - mu
    assert one.fourth == pytest.approx(float(((W.double() - mu) ** 4).sum()), rel=1e-5)
    torch.testing.assert_close(one.column_sums, S.sum(dim=0), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(G.double(), S.T @ S, rtol=1e-4, atol=1e-2)


def test_inertia_count_equals_eigenvalue_count_at_every_gap() -> None:
    """The LDLᵀ count (Sylvester's inertia) against eigvalsh, for a threshold in every gap of
    the spectrum, below it and above it: every mix of 1×1 and 2×2 pivot blocks is met."""
    W = _gaussian(400, 120, seed=5).double()
    W[0, 0] = W[1, 1] = 30.0
    G = W.T @ W
    evals = torch.linalg.eigvalsh(G)
    gaps = ((evals[1:] + evals[:-1]) / 2).tolist()
    for t in [float(evals[0]) / 2, *gaps, 2 * float(evals[-1])]:
        count, near = traps._count_above(G, t)
        assert (count, near) == (int((evals > t).sum()), False), t


def test_inertia_count_says_when_an_eigenvalue_is_within_the_tolerance() -> None:
    W = _gaussian(400, 120, seed=5).double()
    W[0, 0] = 30.0
    G = W.T @ W
    evals = torch.linalg.eigvalsh(G)
    top, gap = float(evals[-1]), float(evals[-1] - evals[-2])
    assert traps._count_above(G, top + gap / 10, tol=gap / 5)[1]  # the top one is within
    assert traps._count_above(G, top - gap / 10, tol=gap / 5)[1]
    assert traps._count_above(G, top + gap / 2, tol=gap / 5) == (0, False)
    assert traps._count_above(G, top - gap / 2, tol=gap / 5) == (1, False)


def test_count_from_eigenvalues_is_the_inertia_count() -> None:
    """Small layers count from the eigenvalues they already have (`_count_in`), large ones by
    inertia: the same answer for every threshold and tolerance, near ones included."""
    W = _gaussian(400, 120, seed=5).double()
    W[0, 0] = W[1, 1] = 30.0
    G = W.T @ W
    evals = torch.linalg.eigvalsh(G)
    top, gap = float(evals[-1]), float(evals[-1] - evals[-2])
    thresholds = [float(evals[0]) / 2, *((evals[1:] + evals[:-1]) / 2).tolist(), 2 * top]
    for t in [*thresholds, top + gap / 10, top - gap / 10, top + gap / 2, top - gap / 2]:
        for tol in (0.0, gap / 5):
            assert traps._count_in(evals.numpy(), t, tol) == traps._count_above(G, t, tol), t


def test_unfittable_shuffled_spectrum_is_a_status_not_a_crash() -> None:
    W = torch.zeros(64, 32)
    W[0, 0] = 1.0  # a single non-zero entry: every shuffle has one eigenvalue, the rest are 0
    rec = _traps(W)
    assert rec["num_traps"] == 1
    assert rec["rand_fit_status"].startswith(("success", "failed"))


def test_scan_flags_the_trap_layer_only() -> None:
    g = torch.Generator().manual_seed(6)
    trapped = torch.randn(512, 256, generator=g)
    trapped[10, 20] = trapped[30, 40] = 60.0
    state = {"clean.weight": torch.randn(512, 256, generator=g), "trapped.weight": trapped}
    result = llm_audit.scan(state, traps=True)
    flags = {r["name"]: r["flags"] for r in result.records}
    assert (
        "correlation_trap" in flags["trapped.weight"]
        and "correlation_trap" not in flags["clean.weight"]
    )
    assert result.summary["num_trap_layers"] == 1 and result.summary["total_traps"] == 2


@pytest.fixture(scope="module")
def minilm_with_traps(minilm_scan: llm_audit.AuditResult) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in minilm_scan.records}


def test_rand_num_spikes_matches_weightwatcher_randomize(
    minilm: Path,
    minilm_with_traps: dict[str, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """WeightWatcher shuffles with numpy's RNG, we with torch's: the counts are compared per layer,
    and must agree on at least 90% of the layers (measured: all 39)."""
    pytest.importorskip("weightwatcher")
    ww = ww_details(minilm, tmp_path_factory.mktemp("ww") / "randomize.json", randomize=True)
    ours = minilm_with_traps
    agree = [ours[n]["rand_num_spikes"] == ww[n]["rand_num_spikes"] for n in ww]
    assert np.mean(agree) >= 0.9, {
        n: (ours[n]["rand_num_spikes"], ww[n]["rand_num_spikes"]) for n in ww
    }
    # The MP fit of W itself (WeightWatcher's mp_fit=True columns) is the same computation.
    for name in ww:
        assert ours[name]["num_spikes"] == ww[name]["num_spikes"], name
        for column in ("sigma_mp", "mp_softrank"):
            assert ours[name][column] == pytest.approx(ww[name][column], rel=1e-6), (name, column)
    # Every layer WeightWatcher says has a trap is flagged by us (as a correlation trap, or as
    # traps on MiniLM's outlier dimensions), or its spike is the mean spike.
    for name in (n for n in ww if ww[n]["rand_num_spikes"] > 0):
        row = ours[name]
        trapped = {"correlation_trap", "outlier_dimension"} & set(row["flags"])
        assert trapped or row["rand_num_spikes"] > row["num_traps"], name


@pytest.mark.parametrize("kind", ["gaussian", "planted", "offset", "heavy"])
def test_float32_tolerance_covers_the_measured_float32_error(kind: str) -> None:
    """The bound that decides when a float32 shuffled Gram is recomputed in float64 is above the
    error actually measured (float32 against float64 Gram, same shuffle, eigenvalues in float64)."""
    g = torch.Generator().manual_seed(8)
    W = torch.randn(4000, 300, generator=g)
    if kind == "planted":
        W[5, 6] = W[70, 80] = 60.0
    if kind == "offset":
        W += 2.0
    if kind == "heavy":
        W = W / torch.rand(4000, 300, generator=g).clamp_min(1e-3) ** 0.6  # power-law tails
    lazy = as_lazy(W)
    perm, mu = Permutation(W.numel(), 1), traps.mean(lazy)
    G32, _ = traps.shuffled_gram(lazy, perm, mu, torch.float32)
    G64, _ = traps.shuffled_gram(lazy, perm, mu, torch.float64)
    error = (torch.linalg.eigvalsh(G32.double()) - torch.linalg.eigvalsh(G64)).abs().max()
    assert float(error) < traps.float32_tolerance(4000, float(G64.diagonal().max())) / 4


@pytest.mark.parametrize("kind", ["gaussian", "planted", "offset", "heavy"])
def test_float32_eigvalsh_tolerance_covers_the_measured_error(kind: str) -> None:
    """The shuffled spectrum comes from a float32 eigvalsh; its error bound, which decides when
    it is taken again in float64, is above the error measured against float64 on the same
    Gram (uncentred: the offset case keeps its mean spike)."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(1600, 400, generator=g, dtype=torch.float64)
    if kind == "planted":
        W[5, 6] = W[70, 80] = 60.0
    if kind == "offset":
        W += 2.0
    if kind == "heavy":
        W = W / torch.rand(1600, 400, generator=g, dtype=torch.float64).clamp_min(1e-3) ** 0.6
    G = W.T @ W
    exact = torch.linalg.eigvalsh(G)
    error = (torch.linalg.eigvalsh(G.float()).double() - exact).abs().max()
    assert float(error) < traps.float32_eigvalsh_tolerance(400, float(exact[-1])) / 4


def test_a_float32_spectrum_near_the_mp_threshold_is_taken_again_in_float64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With an error bound so wide that every eigenvalue is near the MP threshold, the spectra
    are recomputed by a float64 eigvalsh (and the Gram by float64 when that is not enough)."""
    W = _gaussian(600, 200, seed=2)
    evals = eigenvalues(W).numpy()
    exact, exact_spectra = traps.trap_metrics(W, evals, seed=4)
    calls: list[torch.dtype] = []
    spectrum = traps._spectrum

    def recording(G: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
        calls.append(dtype)
        return spectrum(G, dtype)

    monkeypatch.setattr(traps, "_spectrum", recording)
    monkeypatch.setattr(traps, "float32_eigvalsh_tolerance", lambda M, lam: 10 * lam)
    record, spectra = traps.trap_metrics(W, evals, seed=4)
    assert calls == [torch.float32, torch.float64]
    assert record["rand_num_spikes"] == exact["rand_num_spikes"]
    np.testing.assert_allclose(spectra["rand_evals"], exact_spectra["rand_evals"], rtol=1e-4)


def test_a_float32_count_within_the_eigensolver_error_is_taken_again_in_float64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to EXACT_BELOW the centred count comes from a float32 eigvalsh; with its error bound
    so wide that an eigenvalue lies within it of the trap threshold, the shuffle is counted
    again from a float64 Gram and eigensolver, and the record is the float64 one."""
    W = _gaussian(600, 200, seed=2)
    W[7, 9] = 40.0  # one trap: an eigenvalue well above the threshold
    evals = eigenvalues(W).numpy()
    exact, _ = traps.trap_metrics(W, evals, seed=4)
    tests: list[torch.dtype] = []
    centred_test = traps._centred_test

    def recording(Gc: torch.Tensor, N: int) -> Any:
        tests.append(Gc.dtype)
        return centred_test(Gc, N)

    monkeypatch.setattr(traps, "_centred_test", recording)
    monkeypatch.setattr(traps, "float32_eigvalsh_tolerance", lambda M, lam: 10 * lam)
    record, _ = traps.trap_metrics(W, evals, seed=4)
    assert tests[:2] == [torch.float32, torch.float64]
    assert exact["num_traps"] == record["num_traps"] == 1
    assert record["trap_threshold"] == pytest.approx(exact["trap_threshold"], rel=1e-5)


@pytest.mark.parametrize("n", [5, 2560, 2561, 1_000_003])
def test_largest_finds_what_topk_finds(n: int) -> None:
    """Group maxima narrow the search; the k largest are the same values as topk's, also when
    they crowd into one group or sit in the ragged tail."""
    g = torch.Generator().manual_seed(n)
    values = torch.rand(n, generator=g)
    k = min(10, n)
    for planted in ([], list(range(7)), [n - 1, n - 2, n - 3]):
        v = values.clone()
        v[[i for i in planted if i < n]] = 5.0
        expected = torch.topk(v, k).values
        assert torch.equal(torch.sort(v[traps.largest(v, k)], descending=True).values, expected)
