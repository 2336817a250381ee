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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from llm_audit.config import AuditConfig
from llm_audit.layers import Layer
from llm_audit.sources import Source
from llm_audit.spectral.esd import gram, gram_eigenvalues
from llm_audit.spectral.metrics import mp_metrics, shape_columns, spectrum_metrics
from llm_audit.spectral.powerlaw import fit_power_law
from llm_audit.spectral.traps import trap_metrics

if TYPE_CHECKING:
    from llm_audit.distributed import Ranks
    from llm_audit.journal import Journal

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
        "expert": layer.expert,
        "shape": [out_f, in_f],
        "dtype": layer.tensor.dtype,
        **shape_columns(out_f, in_f),
    }


def skipped(layer: Layer, status: str, reason: str | None) -> LayerOutcome:
    """The row of a layer that is not analyzed, with its status and reason."""
    return LayerOutcome({**base_record(layer), "status": status, "reason": reason})


def analyze_batch(
    layers: list[Layer], matrices: list[torch.Tensor], cfg: AuditConfig
) -> list[LayerOutcome]:
    """Spectra and metrics of same-shape matrices (already on the compute device, as (out, in))."""
    if matrices[0].is_cuda and len(matrices) > 1:
        grams = list(gram(torch.stack(matrices)))  # one batched product on a GPU
    else:
        grams = [gram(W) for W in matrices]
    outcomes = []
    for layer, W, G in zip(layers, matrices, grams, strict=True):
        problem = _matrix_problem(W, G)
        if problem:
            outcomes.append(skipped(layer, *problem))
            continue
        evals = gram_eigenvalues(G, long_side=max(W.shape)).cpu().numpy()
        outcomes.append(_layer_outcome(layer, W, evals, cfg))
    return outcomes


def _matrix_problem(W: torch.Tensor, G: torch.Tensor) -> tuple[str, str] | None:
    """NaN/Inf or all-zero weights, seen on the small Gram rather than by a pass over W."""
    if not bool(torch.isfinite(G).all()):
        bad = int((~torch.isfinite(W)).sum())
        return "nonfinite", f"{bad} NaN or Inf weights"
    if float(torch.diagonal(G).sum()) == 0.0:
        return "zero_matrix", "every weight is zero"
    return None


def _layer_outcome(
    layer: Layer, W: torch.Tensor, evals: np.ndarray, cfg: AuditConfig
) -> LayerOutcome:
    fit = fit_power_law(evals, estimator=cfg.estimator)
    record = {**base_record(layer), **spectrum_metrics(evals, fit)}
    record.update(mp_metrics(evals, Q=record["Q"], M=record["M"]))
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


@dataclass(frozen=True)
class Job:
    """Matrices analyzed together: (key, layer) pairs, and how to read them on the main thread.

    `read` returns one (out, in) CPU matrix per item. A scan job is one layer (or a same-shape batch
    on a GPU); a compare job is one aligned layer of every model and their differences.
    """

    items: list[tuple[str, Layer]]
    read: Callable[[], list[torch.Tensor]]


def layer_jobs(source: Source, layers: list[Layer], *, batch: int) -> Iterator[Job]:
    """Jobs reading `layers` in order, `batch` same-shape layers per job."""

    def reader(group: list[Layer]) -> Callable[[], list[torch.Tensor]]:
        return lambda: [oriented(layer.read(source), layer) for layer in group]

    for group in _batches(layers, batch):
        yield Job([(layer.name, layer) for layer in group], reader(group))


def oriented(W: torch.Tensor, layer: Layer) -> torch.Tensor:
    """The matrix as (out, in): HF GPT-2 Conv1D weights are stored (in, out)."""
    return W.T if layer.stored_in_out else W


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


def run(
    source: Source,
    layers: list[Layer],
    cfg: AuditConfig,
    *,
    progress: bool = True,
    workers: int | None = None,
    journal: Journal | None = None,
    ranks: Ranks | None = None,
) -> tuple[list[LayerOutcome], float]:
    """Analyze every layer (skipped ones keep their status): outcomes in model order, seconds.

    With a `journal`, layers it already holds are not recomputed and new ones are appended to it as
    they finish. With `ranks`, this process analyzes only its share and gathers the others'.
    """
    from llm_audit import distributed  # imports this module

    start = time.perf_counter()
    todo = [layer for layer in layers if layer.skip_status is None]
    if ranks is not None:
        todo = distributed.assign(todo, ranks.world)[ranks.rank]
    done = journal.done if journal else {}
    fresh = [layer for layer in todo if layer.name not in done]
    if source.streamed:  # one file at a time, so each can be dropped once read
        files = {f: i for i, f in enumerate(source.info.files)}
        fresh.sort(key=lambda layer: files.get(layer.tensor.file or "", 0))
    scales = [layer.scale for layer in fresh if layer.scale is not None]
    source.plan_reads([layer.tensor for layer in fresh] + scales)
    on_gpu = resolve_device(cfg.device).type == "cuda"
    jobs = layer_jobs(source, fresh, batch=GPU_BATCH if on_gpu else 1)
    results = schedule(
        jobs,
        cfg,
        total=len(fresh),
        progress=progress and (ranks is None or ranks.rank == 0),
        workers=workers,
        on_done=journal.append if journal else None,
    )
    results.update({layer.name: done[layer.name] for layer in todo if layer.name in done})
    source.close()
    if ranks is not None:
        results = distributed.gather(results)
    for layer in layers:
        if layer.skip_status is not None:
            results[layer.name] = skipped(layer, layer.skip_status, layer.skip_reason)
    return [results[layer.name] for layer in layers], time.perf_counter() - start


def schedule(
    jobs: Iterable[Job],
    cfg: AuditConfig,
    *,
    total: int,
    progress: bool = True,
    workers: int | None = None,
    desc: str = "scan",
    on_done: Callable[[LayerOutcome], None] | None = None,
    prefetch: int = 1,
) -> dict[str, LayerOutcome]:
    """Read jobs in order on this thread, analyze them on a pool; workers + prefetch in flight.

    `on_done` is called on this thread with each outcome as it is stored (e.g. to journal it).
    A job of several matrices (compare) may want `prefetch=0` to bound memory.
    """
    device = resolve_device(cfg.device)
    on_gpu = device.type == "cuda"
    workers = workers or (1 if on_gpu else max(1, min(os.cpu_count() or 1, 8)))
    results: dict[str, LayerOutcome] = {}
    bar = tqdm(total=total, unit="layer", disable=not progress, desc=desc, leave=False)
    read_bytes = 0
    pending: list[tuple[Job, Future[list[LayerOutcome]]]] = []
    with (
        _torch_threads(1 if not on_gpu else torch.get_num_threads()),
        ThreadPoolExecutor(workers) as pool,
    ):
        for job in jobs:
            mats = [m.to(device, non_blocking=True) for m in job.read()]
            read_bytes += sum(m.numel() * m.element_size() for m in mats)
            layers = [layer for _, layer in job.items]
            pending.append((job, pool.submit(analyze_batch, layers, mats, cfg)))
            del mats
            pending = _collect(
                pending,
                results,
                bar,
                keep=workers + prefetch,
                read_bytes=read_bytes,
                on_done=on_done,
            )
        _collect(pending, results, bar, keep=0, read_bytes=read_bytes, on_done=on_done)
    bar.close()
    return results


def _collect(
    pending: list[tuple[Job, Future[list[LayerOutcome]]]],
    results: dict[str, LayerOutcome],
    bar: tqdm,
    *,
    keep: int,
    read_bytes: int,
    on_done: Callable[[LayerOutcome], None] | None = None,
) -> list[tuple[Job, Future[list[LayerOutcome]]]]:
    """Wait until at most `keep` jobs are in flight, storing finished results by key."""
    while len(pending) > keep or (pending and pending[0][1].done()):
        job, future = pending.pop(0)
        for (key, _), outcome in zip(job.items, future.result(), strict=True):
            results[key] = outcome
            if on_done is not None:
                on_done(outcome)
        bar.update(len(job.items))
        bar.set_postfix_str(f"{read_bytes / 2**20:,.0f} MB read")
    return pending
