"""The streaming scheduler: read tensors in model order, compute their spectra, keep memory bounded.

The main thread reads (memory-mapped) tensors and hands them to a pool of compute workers; at most
`workers + prefetch` jobs are in flight, and under an optional byte budget fewer when they are
large, so peak memory is set by the largest tensors, never by the model. On the CPU each worker
runs torch single-threaded (LAPACK's eigvalsh gets slower, not faster, with two threads on a
two-core machine; one layer per core is the better split). On a GPU, consecutive same-shape
matrices go as one batch.
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

from llm_audit.allocator import return_freed_memory
from llm_audit.config import AuditConfig
from llm_audit.layers import Layer
from llm_audit.sources import Source
from llm_audit.sources.safetensors_files import DTYPE_SIZES
from llm_audit.spectral.esd import Difference, Matrix, gram, gram_eigenvalues
from llm_audit.spectral.metrics import mp_metrics, shape_columns, spectrum_metrics
from llm_audit.spectral.powerlaw import fit_power_law
from llm_audit.spectral.traps import trap_metrics
from llm_audit.vocabulary import FIT_FAILED, NONFINITE, SUCCESS, ZERO_MATRIX

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
    layers: list[Layer], matrices: list[Matrix], cfg: AuditConfig
) -> list[LayerOutcome]:
    """Spectra and metrics of same-shape matrices (already on the compute device, as (out, in))."""
    if len(matrices) > 1 and all(isinstance(W, torch.Tensor) and W.is_cuda for W in matrices):
        grams = list(gram(torch.stack(matrices)))  # type: ignore[arg-type]  # one batched product
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


def _dense(W: Matrix) -> torch.Tensor:
    """The matrix itself; a `Difference` is materialized (for a shuffle or a NaN count)."""
    return W.materialize() if isinstance(W, Difference) else W


def _matrix_problem(W: Matrix, G: torch.Tensor) -> tuple[str, str] | None:
    """NaN/Inf or all-zero weights, seen on the small Gram rather than by a pass over W."""
    if not bool(torch.isfinite(G).all()):
        bad = int((~torch.isfinite(_dense(W))).sum())
        return NONFINITE, f"{bad} NaN or Inf weights"
    if float(torch.diagonal(G).sum()) == 0.0:
        return ZERO_MATRIX, "every weight is zero"
    return None


def _layer_outcome(layer: Layer, W: Matrix, evals: np.ndarray, cfg: AuditConfig) -> LayerOutcome:
    fit = fit_power_law(evals, estimator=cfg.estimator)
    record = {**base_record(layer), **spectrum_metrics(evals, fit)}
    record.update(mp_metrics(evals, Q=record["Q"], M=record["M"]))
    record["status"] = SUCCESS if fit.status == SUCCESS else FIT_FAILED
    record["reason"] = fit.reason
    spectra = {"evals": evals.astype(np.float64)}
    if cfg.traps:
        traps, rand_spectra = trap_metrics(_dense(W), evals, seed=layer_seed(cfg.seed, layer.name))
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

    `read` returns one (out, in) CPU matrix per item, usually a memory map that the analysis pages
    in. A scan job is one layer (or a same-shape batch on a GPU); a compare job is one aligned layer
    of every model and their differences. `nbytes` is what the job's matrices occupy once paged in,
    known from the headers before reading, for the scheduler's memory budget.
    """

    items: list[tuple[str, Layer]]
    read: Callable[[], list[Matrix]]
    nbytes: int = 0


def stored_bytes(layer: Layer) -> int:
    """Bytes of the layer's matrix as stored (float32 where the dtype is not a safetensors one)."""
    out_f, in_f = layer.out_in
    return out_f * in_f * DTYPE_SIZES.get(layer.tensor.dtype, 4)


def layer_jobs(source: Source, layers: list[Layer], *, batch: int) -> Iterator[Job]:
    """Jobs reading `layers` in order, `batch` same-shape layers per job."""

    def reader(group: list[Layer]) -> Callable[[], list[Matrix]]:
        return lambda: [oriented(layer.read(source), layer) for layer in group]

    for group in _batches(layers, batch):
        items = [(layer.name, layer) for layer in group]
        yield Job(items, reader(group), sum(stored_bytes(layer) for layer in group))


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
    if ranks is not None and not on_gpu:  # processes on one machine share its cores
        workers = workers or ranks.cpu_workers()
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
    budget: int | None = None,
) -> dict[str, LayerOutcome]:
    """Read jobs in order on this thread, analyze them on a pool; workers + prefetch in flight.

    With a `budget` (bytes), a job is not read until the `nbytes` of the jobs in flight plus its
    own fit in it (or nothing is in flight): compare sets it to its largest job, which runs alone.
    `on_done` is called on this thread with each outcome as it is stored (e.g. to journal it).
    """
    device = resolve_device(cfg.device)
    on_gpu = device.type == "cuda"
    workers = workers or (1 if on_gpu else max(1, min(os.cpu_count() or 1, 8)))
    return_freed_memory()
    results: dict[str, LayerOutcome] = {}
    bar = tqdm(total=total, unit="layer", disable=not progress, desc=desc, leave=False)
    read_bytes = 0
    pending: list[tuple[Job, Future[list[LayerOutcome]]]] = []

    def collect(keep: int, incoming: int = 0) -> None:
        """Store finished jobs, waiting until at most `keep` are in flight and `incoming` fits."""
        while pending and (
            len(pending) > keep
            or (budget is not None and sum(j.nbytes for j, _ in pending) + incoming > budget)
            or pending[0][1].done()
        ):
            job, future = pending.pop(0)
            for (key, _), outcome in zip(job.items, future.result(), strict=True):
                results[key] = outcome
                if on_done is not None:
                    on_done(outcome)
            bar.update(len(job.items))
            bar.set_postfix_str(f"{read_bytes / 2**20:,.0f} MB read")

    with (
        _torch_threads(1 if not on_gpu else torch.get_num_threads()),
        ThreadPoolExecutor(workers) as pool,
    ):
        for job in jobs:
            collect(keep=workers + prefetch, incoming=job.nbytes)
            mats = [m.to(device, non_blocking=True) for m in job.read()]
            read_bytes += job.nbytes
            layers = [layer for _, layer in job.items]
            pending.append((job, pool.submit(analyze_batch, layers, mats, cfg)))
            del mats
        collect(keep=0)
    bar.close()
    return results
