"""The streaming scheduler: read tensors in model order, compute their spectra, keep memory bounded.

The main thread reads (memory-mapped) tensors and hands them to a pool of compute workers; at most
`workers + prefetch` matrices are in flight, so peak memory is set by the largest tensors, never by
the model. On the CPU each worker runs torch single-threaded (LAPACK's eigvalsh gets slower, not
faster, with two threads on a two-core machine; one layer per core is the better split). On a GPU,
consecutive same-shape matrices go as one batch.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from llm_audit.config import AuditConfig
from llm_audit.layers import Layer
from llm_audit.sources import Source
from llm_audit.spectral.esd import eigenvalues
from llm_audit.spectral.metrics import shape_columns, spectrum_metrics
from llm_audit.spectral.powerlaw import fit_power_law
from llm_audit.spectral.traps import trap_metrics

GPU_BATCH = 8  # same-shape matrices per batch on a GPU


@dataclass
class LayerOutcome:
    """One row of the layer table, and the spectra kept for spectra.npz."""

    record: dict[str, Any]
    spectra: dict[str, np.ndarray] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from llm_audit.errors import ConfigError

        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def layer_seed(base: int, name: str) -> int:
    """A per-layer seed that depends only on the base seed and the layer name, not on order."""
    return (base * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def base_record(layer: Layer) -> dict[str, Any]:
    out_f, in_f = layer.out_in
    return {
        "name": layer.name,
        "block": layer.block,
        "role": layer.role,
        "shape": [out_f, in_f],
        "dtype": layer.tensor.dtype,
        **shape_columns(out_f, in_f),
    }


def analyze_batch(
    layers: list[Layer], matrices: list[torch.Tensor], cfg: AuditConfig
) -> list[LayerOutcome]:
    """Spectra and metrics of same-shape matrices (already on the compute device, as (out, in))."""
    outcomes: list[LayerOutcome | None] = [None] * len(layers)
    good = []
    for i, (layer, W) in enumerate(zip(layers, matrices, strict=True)):
        problem = _matrix_problem(W)
        if problem:
            outcomes[i] = LayerOutcome(
                {**base_record(layer), "status": problem[0], "reason": problem[1]}
            )
        else:
            good.append(i)
    if good:
        stacked = torch.stack([matrices[i] for i in good]) if len(good) > 1 else matrices[good[0]]
        evals = eigenvalues(stacked).cpu().numpy().reshape(len(good), -1)
        for row, i in zip(evals, good, strict=True):
            outcomes[i] = _layer_outcome(layers[i], matrices[i], row, cfg)
    return [o for o in outcomes if o is not None]


def _matrix_problem(W: torch.Tensor) -> tuple[str, str] | None:
    if not bool(torch.isfinite(W).all()):
        bad = int((~torch.isfinite(W)).sum())
        return "nonfinite", f"{bad} NaN or Inf weights"
    if not bool(W.any()):
        return "zero_matrix", "every weight is zero"
    return None


def _layer_outcome(
    layer: Layer, W: torch.Tensor, evals: np.ndarray, cfg: AuditConfig
) -> LayerOutcome:
    fit = fit_power_law(evals, estimator=cfg.estimator)
    record = {**base_record(layer), **spectrum_metrics(evals, fit)}
    record["status"] = "success" if fit.status == "success" else "fit_failed"
    record["reason"] = fit.reason
    spectra = {"evals": evals.astype(np.float64)}
    if cfg.traps:
        traps, rand_spectra = trap_metrics(W, evals, seed=layer_seed(cfg.seed, layer.name))
        record.update(traps)
        spectra.update(rand_spectra)
    return LayerOutcome(record, spectra)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch with `n` intra-op threads, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(layers: list[Layer], size: int) -> Iterator[list[Layer]]:
    """Consecutive same-shape layers, `size` at most per batch."""
    batch: list[Layer] = []
    for layer in layers:
        if batch and (len(batch) == size or batch[0].out_in != layer.out_in):
            yield batch
            batch = []
        batch.append(layer)
    if batch:
        yield batch


def _load(source: Source, layer: Layer, device: torch.device) -> torch.Tensor:
    W = source.read(layer.tensor)
    if layer.stored_in_out:
        W = W.T
    return W.to(device, non_blocking=True)


def run(
    source: Source,
    layers: list[Layer],
    cfg: AuditConfig,
    *,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[list[LayerOutcome], float]:
    """Analyze every layer (skipped ones keep their status): outcomes in model order, seconds."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    on_gpu = device.type == "cuda"
    workers = workers or (1 if on_gpu else max(1, min(os.cpu_count() or 1, 8)))
    todo = [layer for layer in layers if layer.skip_status is None]
    last_use = {layer.tensor.file: i for i, layer in enumerate(todo) if layer.tensor.file}
    results: dict[str, LayerOutcome] = {
        layer.name: LayerOutcome(
            {**base_record(layer), "status": layer.skip_status, "reason": layer.skip_reason}
        )
        for layer in layers
        if layer.skip_status is not None
    }
    bar = tqdm(total=len(todo), unit="layer", disable=not progress, desc="scan", leave=False)
    read_bytes = 0
    pending: list[tuple[list[Layer], Future[list[LayerOutcome]]]] = []
    done_index = 0
    with (
        _torch_threads(1 if not on_gpu else torch.get_num_threads()),
        ThreadPoolExecutor(workers) as pool,
    ):
        for batch in _batches(todo, GPU_BATCH if on_gpu else 1):
            mats = [_load(source, layer, device) for layer in batch]
            read_bytes += sum(m.numel() * m.element_size() for m in mats)
            for layer in batch:
                done_index += 1
                if layer.tensor.file and last_use[layer.tensor.file] == done_index - 1:
                    source.release(layer.tensor.file)
            pending.append((batch, pool.submit(analyze_batch, batch, mats, cfg)))
            del mats
            pending = _collect(pending, results, bar, keep=workers + 1, read_bytes=read_bytes)
        _collect(pending, results, bar, keep=0, read_bytes=read_bytes)
    bar.close()
    source.close()
    return [results[layer.name] for layer in layers], time.perf_counter() - start


def _collect(
    pending: list[tuple[list[Layer], Future[list[LayerOutcome]]]],
    results: dict[str, LayerOutcome],
    bar: tqdm,
    *,
    keep: int,
    read_bytes: int,
) -> list[tuple[list[Layer], Future[list[LayerOutcome]]]]:
    """Wait until at most `keep` batches are in flight, storing finished results."""
    while len(pending) > keep or (pending and pending[0][1].done()):
        batch, future = pending.pop(0)
        for layer, outcome in zip(batch, future.result(), strict=True):
            results[layer.name] = outcome
        bar.update(len(batch))
        bar.set_postfix_str(f"{read_bytes / 2**20:,.0f} MB read")
    return pending
