"""From a list of jobs to their outcomes, whatever the processes: sharding, resume, gather.

`scan` and `compare` build jobs (jobs.py) and call `run` inside `launch`; neither knows about
ranks or journals. `launch` starts the run's processes (one per `--devices` entry, or the ones
torchrun/accelerate launched, or just this one) and calls the command's work in each. `run` then
takes this rank's share of the jobs (balanced by cost), drops those a resumed journal already
holds, schedules the rest under a byte budget (no two of the largest matrices at once), journals
each outcome as it finishes (`journal.background_writer`: the fsync is off the reading thread), and
gathers every rank's outcomes on every rank.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from llm_audit import distributed
from llm_audit.analysis import Outcome
from llm_audit.config import AuditConfig
from llm_audit.jobs import Job
from llm_audit.journal import Journal, background_writer
from llm_audit.options import RunOptions, resolve_device
from llm_audit.scheduler import schedule

T = TypeVar("T")

# eigvalsh of an M x M Gram against its Gram product (N x M, M <= N), per M**3 and per N * M**2:
# measured about 2 on one CPU core (LAPACK, float64, M = 256..1024); on a GPU the Gram product
# is a GEMM at tens of TFLOP/s while a values-only syevd of 4096 takes 0.1-0.3 s, so there the
# eigensolver is nearly all of a layer's time and the weight about 100.
EIG_WEIGHT = {"cpu": 2, "cuda": 100}


@dataclass(frozen=True)
class Process:
    """This process's place in a run: its rank (None: the only one), its device, the options."""

    ranks: distributed.Ranks | None
    device: str
    options: RunOptions

    @property
    def is_primary(self) -> bool:
        """Whether this process reports (rank 0, or the only process)."""
        return self.ranks is None or self.ranks.rank == 0


def launch(work: Callable[[Process], T], device: str, options: RunOptions) -> T:
    """`work` in each process of the run; returns this process's result (rank 0's under --devices).

    `device` is the requested one (`auto`, `cpu`, `cuda`, `cuda:N`); under a launcher, `auto` and
    `cuda` become each rank's own GPU.
    """
    devices = options.devices
    if devices is not None and len(devices) > 1:
        return distributed.run_on_devices(functools.partial(_as_rank, work, options), devices)
    if devices is not None:
        return work(Process(None, devices[0], options))
    ranks = distributed.from_env()
    return work(Process(ranks, distributed.rank_device(device, ranks), options))


def _as_rank(
    work: Callable[[Process], T], options: RunOptions, ranks: distributed.Ranks, device: str
) -> T:
    return work(Process(ranks, device, options))


def run(
    jobs: list[Job],
    cfg: AuditConfig,
    process: Process,
    *,
    fingerprint: dict[str, Any],
    prepare: Callable[[list[Job]], list[Job]] | None = None,
    desc: str = "scan",
) -> dict[str, Outcome]:
    """Every job's outcome by key, on every rank.

    `prepare` is given the jobs this process will compute, after sharding and resume, and returns
    them in the order to read them (a streamed source plans its downloads there).
    """
    ranks, options = process.ranks, process.options
    device = resolve_device(process.device)
    mine = jobs
    if ranks is not None:
        costs = shard_costs(jobs, device_kinds(process))
        mine = [jobs[i] for i in distributed.assign(costs, ranks.world)[ranks.rank]]
    workers = options.workers
    if ranks is not None and device.type == "cpu":  # processes on one machine share its cores
        workers = workers or ranks.cpu_workers()
    with distributed.process_group(ranks, process.device), _journal(process, fingerprint) as log:
        done = log.done if log is not None else {}
        fresh = [job for job in mine if job.key not in done]
        fresh = longest_first(fresh, device_kinds(process))
        if prepare is not None:
            fresh = prepare(fresh)
        with background_writer(log) as append:
            results = schedule(
                fresh,
                cfg,
                device=device,
                total=len(fresh),
                workers=workers,
                progress=options.progress and process.is_primary,
                desc=desc,
                on_done=append,
                budget=budget(fresh),
            )
        results.update({job.key: done[job.key] for job in mine if job.key in done})
        if ranks is not None:
            results = _gather(results, log, ranks)
    return results


def device_kinds(process: Process) -> list[str]:
    """The kinds of device (`cpu`, `cuda`) the run computes on, sorted: every `--devices` entry,
    or this process's device (under a launcher every rank asks for the same one)."""
    devices = process.options.devices or (process.device,)
    return sorted({resolve_device(d).type for d in devices})


def recorded_device(process: Process) -> str:
    """The device a report records: the kind the numbers were computed on (`cpu`, `cuda`, or
    `cpu+cuda` for a mixed `--devices` list), the same however the run was launched (one
    process, `--devices cuda:0,cuda:1`, torchrun's rank 0 on `cuda:0`)."""
    return "+".join(device_kinds(process))


def shard_costs(jobs: Sequence[Job], kinds: Sequence[str]) -> list[int]:
    """Each job's cost for splitting the jobs over ranks: its Gram product (`job.cost`, N * M**2)
    plus its eigensolver, `EIG_WEIGHT` * M**3 on the run's device kind (a GPU's where any rank
    has one; `kinds` is the same on every rank, so every rank computes the same split)."""
    weight = max(EIG_WEIGHT[kind] for kind in kinds)
    return [job.cost + weight * min(job.layer.out_in) ** 3 for job in jobs]


def longest_first(jobs: list[Job], kinds: Sequence[str]) -> list[Job]:
    """The jobs by cost (`shard_costs`), largest first, ties in plan order: the longest-job-first
    rule, so the workers' last jobs are short ones and no core idles at the end while another
    finishes a long one (on a Llama slice, 0.6 s of one core before its head matrix). A streamed
    source keeps its file order (`prepare` sorts by file, stably)."""
    costs = shard_costs(jobs, kinds)
    order = sorted(range(len(jobs)), key=lambda i: -costs[i])
    return [jobs[i] for i in order]


def budget(jobs: list[Job]) -> int:
    """Bytes the matrices in flight may occupy: the largest one and half as much beside it, so
    no two of the largest matrices are paged in at once, but small ones keep the other cores
    busy while the largest runs."""
    largest = max((job.nbytes for job in jobs), default=0)
    return largest + largest // 2


@contextlib.contextmanager
def _journal(process: Process, fingerprint: dict[str, Any]) -> Iterator[Journal | None]:
    options = process.options
    if options.journal is None:
        yield None
        return
    rank = None if process.ranks is None else process.ranks.rank
    with Journal(options.journal, fingerprint, resume=options.resume, rank=rank) as log:
        yield log


def _gather(
    results: dict[str, Outcome], log: Journal | None, ranks: distributed.Ranks
) -> dict[str, Outcome]:
    """Every rank's outcomes; rank 0's journal takes the others' before they delete theirs."""
    merged: dict[str, Outcome] = {}
    for part in distributed.gather(results):
        merged.update(part)
    if log is not None:
        if ranks.rank == 0:
            for key, outcome in merged.items():
                if key not in log.held:
                    log.append(key, outcome)
        torch.distributed.barrier()
        if ranks.rank != 0:
            log.remove()
    return merged
