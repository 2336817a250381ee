"""Eigenvalues of WᵀW: exact against float64 SVD, chunked and batched Grams, clean zeros."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_audit.spectral import esd


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (64, 64), (5000, 40)])
def test_eigenvalues_equal_squared_singular_values(shape: tuple[int, int]) -> None:
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ours = esd.eigenvalues(W).numpy()
    sv = np.linalg.svd(W.double().numpy(), compute_uv=False)
    expected = np.sort(sv**2)
    assert ours.shape == (min(shape),)
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12 * expected[-1])


def test_chunked_gram_equals_plain_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(esd, "CHUNK_BYTES", 8 * 16 * 7)  # 7 rows per chunk
    W = torch.randn(100, 16, dtype=torch.bfloat16)
    W64 = W.double()
    np.testing.assert_allclose(esd.gram(W).numpy(), (W64.T @ W64).numpy(), rtol=1e-12)
    np.testing.assert_allclose(esd.gram(W.T).numpy(), (W64.T @ W64).numpy(), rtol=1e-12)


def test_batched_equals_one_by_one() -> None:
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(4, 50, 20, generator=g)
    together = esd.eigenvalues(batch)
    for i in range(4):
        torch.testing.assert_close(together[i], esd.eigenvalues(batch[i]), rtol=1e-12, atol=1e-12)


def test_rank_deficient_matrix_has_exact_zeros() -> None:
    g = torch.Generator().manual_seed(2)
    W = torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.randn(
        8, 60, generator=g, dtype=torch.float64
    )
    ev = esd.eigenvalues(W)
    assert int((ev == 0).sum()) == 60 - 8
    assert bool((ev >= 0).all())


@pytest.mark.parametrize("stored", [(90, 16), (16, 90)])
@pytest.mark.parametrize("stored_in_out", [False, True])
def test_difference_gram_equals_the_dense_update(
    monkeypatch: pytest.MonkeyPatch, stored: tuple[int, int], stored_in_out: bool
) -> None:
    """ΔW's Gram from row blocks of both operands: tall ones are never read whole."""
    monkeypatch.setattr(esd, "CHUNK_BYTES", 8 * 16 * 7)  # 7 rows per chunk
    g = torch.Generator().manual_seed(3)
    other = torch.randn(*stored, generator=g).to(torch.bfloat16)
    base = torch.randn(*stored, generator=g).to(torch.bfloat16)
    reads: list[tuple[int, int]] = []

    def reader(matrix: torch.Tensor) -> esd.RowReader:
        def rows(a: int, b: int) -> torch.Tensor:
            reads.append((a, b))
            return matrix[a:b]

        return rows

    update = esd.Difference(reader(other), reader(base), stored, stored_in_out)
    delta = other.double() - base.double()
    dense = delta.T if stored_in_out else delta
    assert update.shape == tuple(dense.shape)
    torch.testing.assert_close(update.materialize().double(), dense, rtol=0, atol=0)
    reads.clear()
    small = min(stored)
    expected = delta.T @ delta if stored[0] >= stored[1] else delta @ delta.T
    np.testing.assert_allclose(esd.gram(update).numpy(), expected.numpy(), rtol=1e-12)
    longest_read = max(b - a for a, b in reads)
    assert longest_read == (7 if stored[0] > small else stored[0])


@pytest.mark.parametrize("stored", [(90, 16), (16, 90)])
@pytest.mark.parametrize("stored_in_out", [False, True])
def test_row_matrix_gram_equals_the_dense_gram(
    monkeypatch: pytest.MonkeyPatch, stored: tuple[int, int], stored_in_out: bool
) -> None:
    """A lazy matrix's Gram from bf16 row blocks (7 at a time) is the dense float64 Gram; a tall
    one is never read whole, and the NaN count is the dense count."""
    monkeypatch.setattr(esd, "CHUNK_BYTES", 8 * 16 * 7)
    W = torch.randn(*stored, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    W[2, 3] = float("nan")
    reads: list[tuple[int, int]] = []

    def rows(a: int, b: int) -> torch.Tensor:
        reads.append((a, b))
        return W[a:b]

    M = esd.RowMatrix(rows, stored, stored_in_out, dtype=torch.bfloat16)
    assert M.shape == (stored[::-1] if stored_in_out else stored)
    assert esd.nonfinite_count(M) == 1
    W[2, 3] = 0.0
    reads.clear()
    dense = W.double()
    expected = dense.T @ dense if stored[0] >= stored[1] else dense @ dense.T
    np.testing.assert_allclose(esd.gram(M).numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    assert max(b - a for a, b in reads) == (7 if stored[0] > stored[1] else stored[0])
    np.testing.assert_allclose(esd.gram(M, torch.float32).numpy(), expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (2, 3, 40)])
def test_gram_pass_sums_every_element(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Gram pass's element sum (the trap test's mean) is W's, over several chunks too."""
    monkeypatch.setattr(esd, "CHUNK_BYTES", 8 * 100 * 7)
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) + 0.25
    G, total = esd.gram_and_sum(W)
    expected = W.double().sum(dim=(-2, -1))
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(G, esd.gram(W))
    lazy = esd.as_lazy(W[0] if W.dim() == 3 else W)
    _, lazy_total = esd.gram_and_sum(lazy)
    torch.testing.assert_close(
        lazy_total, expected[0] if W.dim() == 3 else expected, rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "offset"])
def test_float32_spectrum_lies_within_its_bound(kind: str) -> None:
    """Every eigenvalue of a float32 spectrum (float32 Gram, float64 eigensolver) is within its
    `eigenvalue_bound` of the float64 one."""
    from llm_audit.analysis import Spectrum, spectrum

    g = torch.Generator().manual_seed(4)
    W = torch.randn(1500, 300, generator=g, dtype=torch.float64)
    if kind == "heavy":
        W = W * torch.rand(1, 300, generator=g, dtype=torch.float64) ** -1.5
    if kind == "offset":
        W = W + 3.0
    exact = esd.eigenvalues(W).numpy()
    single = spectrum(W, torch.float32)
    assert isinstance(single, Spectrum)
    error = np.abs(single.evals - exact).max()
    assert 0 < error <= single.bound
