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
