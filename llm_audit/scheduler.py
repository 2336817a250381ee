"""The pool: read jobs in order on this thread, analyze them on workers, within a byte budget.

At most `workers + prefetch` jobs are in flight (running, or read and waiting), and fewer when
their matrices would exceed the byte budget together, so peak memory is set by the largest
matrices in flight, never by the model. On the CPU each worker runs torch single-threaded: one
layer per core is the better split (LAPACK's eigvalsh gets slower, not faster, with two threads on
a two-core machine). A matrix too large to share the budget with another of its size (an
embedding or head) runs alone instead, with every core for its Gram products and trap shuffle,
and nothing joins it: a worker whose OpenMP team has two threads keeps them spinning while
another worker computes (measured: MiniLM with traps took 15.3 s against 5.7 s when the
embedding's two threads ran beside the other layers). On a GPU, consecutive same-shape matrices
go as one batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from tqdm import tqdm

from llm_audit.allocator import return_freed_memory
from llm_audit.analysis import Outcome, analyze, torch_threads
from llm_audit.config import AuditConfig
from llm_audit.jobs import Job

GPU_BATCH = 8  # same-shape matrices per batch on a GPU


def schedule(
    jobs: Iterable[Job],
    cfg: AuditConfig,
    *,
    device: torch.device,
    total: int,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "scan",
    on_done: Callable[[str, Outcome], None] | None = None,
    prefetch: int = 2,
    budget: int | None = None,
) -> dict[str, Outcome]:
    """Every job's outcome by key.

    With a `budget` (bytes), a job is not read until the `nbytes` of the jobs in flight plus its
    own fit in it (or nothing is in flight). `on_done(key, outcome)` is called on this thread as
    each outcome is stored (e.g. to journal it).
    """
    on_gpu = device.type == "cuda"
    cores = workers or max(1, min(os.cpu_count() or 1, 8))
    workers = 1 if on_gpu else cores
    return_freed_memory()
    results: dict[str, Outcome] = {}
    bar = tqdm(total=total, unit="matrix", disable=not progress, desc=desc, leave=False)
    read_bytes = 0
    pending: list[tuple[list[Job], Future[list[Outcome]]]] = []

    def collect(keep: int, incoming: int = 0) -> None:
        """Store finished jobs, waiting until at most `keep` are in flight and `incoming` fits."""
        while pending and (
            len(pending) > keep
            or (budget is not None and _bytes(pending) + incoming > budget)
            or pending[0][1].done()
        ):
            batch, future = pending.pop(0)
            for job, outcome in zip(batch, future.result(), strict=True):
                results[job.key] = outcome
                if on_done is not None:
                    on_done(job.key, outcome)
            bar.update(len(batch))
            bar.set_postfix_str(f"{read_bytes / 2**20:,.0f} MB read")

    with ThreadPoolExecutor(workers) as pool:
        for batch in _batches(jobs, GPU_BATCH if on_gpu else 1):
            incoming = sum(job.nbytes for job in batch)
            alone = not on_gpu and budget is not None and 2 * incoming > budget
            collect(keep=0 if alone else workers + prefetch - 1, incoming=incoming)
            matrices = [job.read().to(device, non_blocking=True) for job in batch]
            read_bytes += incoming
            layers = [job.layer for job in batch]
            threads = cores if alone else 1
            pending.append((batch, pool.submit(_run, threads, layers, matrices, cfg)))
            del matrices
            if alone:  # nothing joins it: its threads would spin while another job computes
                collect(keep=0)
        collect(keep=0)
    bar.close()
    return results


def _bytes(pending: list[tuple[list[Job], Future[list[Outcome]]]]) -> int:
    return sum(job.nbytes for batch, _ in pending for job in batch)


def _run(threads: int, *args: Any) -> list[Outcome]:
    """`analyze` on this worker thread: one torch thread (a per-thread setting), and `threads`
    for the parts whose results do not depend on the thread count (see analysis.py)."""
    with torch_threads(1):
        return analyze(*args, gram_threads=threads)


def _batches(jobs: Iterable[Job], size: int) -> Iterator[list[Job]]:
    """Consecutive jobs of same-shape matrices, `size` at most per batch."""
    batch: list[Job] = []
    for job in jobs:
        if batch and (len(batch) == size or batch[0].layer.out_in != job.layer.out_in):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch
