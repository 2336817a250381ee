"""Spectra as the pages carry them: counts of log10 λ in equal bins, and the densities drawn.

A page embeds counts, never raw eigenvalues, so it stays small for any model size; the plot divides
each count by n and by its bin's width in λ to get p(λ). Eigenvalues far below the largest are zero
up to rounding: they are counted apart (`below`), not binned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

BINS = 72  # bins per plot, over its log10 λ range
FLOOR_DECADES = 8.0  # eigenvalues below λ_max·1e-8 are numerically zero: counted, not drawn


def finite(values: Any) -> np.ndarray:
    """`values` as a flat float64 array of its finite entries (empty for None)."""
    if values is None:
        return np.zeros(0)
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def drawn(values: np.ndarray, top: float) -> np.ndarray:
    """The entries of `values` not below `top`·1e-8, those a plot with largest value `top` draws."""
    return values[values >= top * 10.0**-FLOOR_DECADES]


def log_edges(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """`BINS` + 1 equal bin edges in log10 λ from the smallest to the largest value of `arrays`
    (all positive, not all empty), at least half a decade wide."""
    present = [a for a in arrays if a.size]
    lo = math.log10(min(float(a.min()) for a in present))
    hi = math.log10(max(float(a.max()) for a in present))
    if hi - lo < 0.5:  # all eigenvalues (nearly) equal: give the bars some width
        lo, hi = (lo + hi) / 2 - 0.25, (lo + hi) / 2 + 0.25
    lo, hi = math.floor(lo * 1e4) / 1e4, math.ceil(hi * 1e4) / 1e4
    return np.linspace(lo, hi, BINS + 1)


def log_counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts of log10 `values` (all positive) per bin; [] when there are none."""
    if not values.size:
        return []
    return [int(c) for c in np.histogram(np.log10(values), bins=edges)[0]]


def log_densities(counts: Sequence[int], n: int, lo: float, hi: float) -> list[float | None]:
    """log10 p(λ) per bin of [lo, hi] (in log10 λ): count / n / the bin's width in λ; None for an
    empty bin."""
    step = (hi - lo) / len(counts) if counts else 1.0
    out: list[float | None] = []
    for i, c in enumerate(counts):
        width = 10 ** (lo + (i + 1) * step) - 10 ** (lo + i * step)
        out.append(math.log10(c / n / width) if c > 0 and n > 0 else None)
    return out
