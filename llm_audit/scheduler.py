"""The pool: read jobs in order on this thread, analyze them on workers, within a byte budget.

At most `workers + prefetch` jobs are in flight (running, or read and waiting), and fewer when
their matrices would exceed the byte budget together, so peak memory is set by the largest
matrices in flight, never by the model. On the CPU each worker runs torch single-threaded: one
layer per core is the better split (LAPACK's eigvalsh gets slower, not faster, with two threads on
a two-core machine). A matrix too large to share the budget with another of its size (an
embedding or head) runs alone instead, with every core for its Gram products and trap shuffle,
and nothing joins it: a worker whose OpenMP team has two threads keeps them spinning while
another worker computes (measured: MiniLM with traps took 15.3 s against 5.7 s when the
embedding's two threads ran beside the other layers).

On a GPU (`cuda`), this thread is the reader: it reads each matrix's stored rows into pinned
(page-locked) host memory and starts its copy to the GPU on a side stream, recording an event;
`GPU_WORKERS` workers, each on a CUDA stream of its own, wait for that event and analyze, so one
matrix's copy, another's eigensolver and a third's CPU fits overlap. Each matrix is analyzed on
its own, never in a batch with its same-shape neighbours: a batched Gram is chunked (and may be
multiplied) differently, so its last bits would depend on which neighbours a layer has, and a
single, sharded, resumed or `--layers` run could differ. The byte budget, which bounds host
memory, does not apply there: a GPU job holds none once its copy is done. The CPU path is
unchanged by all this.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from llm_audit.allocator import return_freed_memory
from llm_audit.analysis import Outcome, analyze, torch_threads
from llm_audit.config import AuditConfig
from llm_audit.jobs import Job
from llm_audit.layers import Layer
from llm_audit.progress import progress_bar
from llm_audit.spectral.esd import Matrix, as_lazy, row_blocks

# Workers (threads, each with its own CUDA stream) per GPU: torch's CUDA eigvalsh batches only
# tiny matrices, so a model's 4096x4096 eigensolvers run one call at a time per stream; two to
# four streams let them, the copies and the CPU fits overlap.
GPU_WORKERS = 3


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
    workers = GPU_WORKERS if on_gpu else cores
    upload = None
    if on_gpu:  # the budget bounds host memory; a GPU job holds none once its copy is done
        device, budget = gpu_device(device), None
        upload = Uploader(device)
    return_freed_memory()
    results: dict[str, Outcome] = {}
    bar = progress_bar(total, unit="matrix", enabled=progress, desc=desc)
    read_bytes = 0
    pending: list[tuple[Job, Future[Outcome]]] = []

    def collect(keep: int, incoming: int = 0) -> None:
        """Store finished jobs, waiting until at most `keep` are in flight and `incoming` fits.

        Any finished job is stored, not only the oldest: a long job at the head must not hold
        back the next read while the other workers have finished theirs (on a Llama slice that
        left a core idle 0.15 s in every block)."""
        while pending:
            for item in [item for item in pending if item[1].done()]:
                pending.remove(item)
                job, future = item
                outcome = future.result()
                results[job.key] = outcome
                if on_done is not None:
                    on_done(job.key, outcome)
                bar.update(1)
                bar.set_postfix_str(f"{read_bytes / 2**20:,.0f} MB read")
            if len(pending) <= keep and (budget is None or _bytes(pending) + incoming <= budget):
                return
            wait([future for _, future in pending], return_when=FIRST_COMPLETED)

    with ThreadPoolExecutor(workers) as pool:
        for job in jobs:
            alone = not on_gpu and budget is not None and 2 * job.nbytes > budget
            collect(keep=0 if alone else workers + prefetch - 1, incoming=job.nbytes)
            if upload is not None:
                gpu, ready = upload(job.read())
                future = pool.submit(_run_on_stream, device, ready, job.layer, gpu, cfg)
                del gpu
            else:
                matrix = job.read().to(device, non_blocking=True)
                future = pool.submit(_run, cores if alone else 1, job.layer, matrix, cfg)
                del matrix
            read_bytes += job.nbytes
            pending.append((job, future))
            if alone:  # nothing joins it: its threads would spin while another job computes
                collect(keep=0)
        collect(keep=0)
    bar.close()
    return results


def _bytes(pending: list[tuple[Job, Future[Outcome]]]) -> int:
    return sum(job.nbytes for job, _ in pending)


def _run(threads: int, *args: Any) -> Outcome:
    """`analyze` on this worker thread: one torch thread (a per-thread setting), and `threads`
    for the parts whose results do not depend on the thread count (see analysis.py)."""
    with torch_threads(1):
        return analyze(*args, gram_threads=threads)


# --- the GPU path ------------------------------------------------------------------------------

_worker = threading.local()  # each GPU worker thread's own stream


def gpu_device(device: torch.device) -> torch.device:
    """`cuda` as `cuda:N`, N this thread's current GPU: worker threads start on GPU 0 whatever
    this one was set to, so they are given the number."""
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def worker_stream(device: torch.device) -> torch.cuda.Stream:
    """This thread's CUDA stream on `device`, made on first use and kept for the thread's life."""
    streams: dict[torch.device, torch.cuda.Stream] = _worker.__dict__.setdefault("streams", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device=device)
    return streams[device]


def _run_on_stream(
    device: torch.device,
    ready: torch.cuda.Event,
    layer: Layer,
    W: torch.Tensor,
    cfg: AuditConfig,
) -> Outcome:
    """`analyze` on this worker's own stream, once the matrix's copy (`ready`) is done."""
    stream = worker_stream(device)
    with torch.cuda.device(device), torch.cuda.stream(stream):
        stream.wait_event(ready)
        W.record_stream(stream)  # allocated on the copy stream: not reused until this one is done
        return _run(1, layer, W, cfg)


def stage(matrix: Matrix, *, pin: bool) -> tuple[torch.Tensor, bool]:
    """The matrix's stored rows, copied row block by row block into one host tensor (page-locked
    with `pin`), and whether the matrix is their transpose (a GPT-2 Conv1D weight).

    The same values and dtype as `LazyMatrix.materialize`, without its whole-matrix temporary:
    a checkpoint's rows go straight from the memory map into the pinned buffer.
    """
    lazy = as_lazy(matrix)
    host = torch.empty(lazy.stored_shape, dtype=lazy.dtype, pin_memory=pin)
    for start, block in row_blocks(lazy, lazy.dtype):
        host[start : start + len(block)].copy_(block)
    return host, lazy.stored_in_out


class Uploader:
    """Host-to-GPU copies on a side stream, each from pinned memory, with an event to wait for.

    Called on the reader thread: `upload(matrix)` returns the matrix on the GPU (as (out, in),
    like `LazyMatrix.to`) and the event that marks its copy done. The pinned buffer goes back to
    torch's pinned-memory cache when the copy is done (the cache records the copy's stream), so
    buffers are reused without any bookkeeping here.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device=device)

    def __call__(self, matrix: Matrix) -> tuple[torch.Tensor, torch.cuda.Event]:
        # whatever the caller's stream did before (a module's weights) comes first
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            if isinstance(matrix, torch.Tensor) and matrix.is_cuda:  # already there (a module)
                gpu = matrix.to(self.device, non_blocking=True)
            else:
                host, transposed = stage(matrix, pin=True)
                gpu = host.to(self.device, non_blocking=True)
                gpu = gpu.T if transposed else gpu
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return gpu, ready
