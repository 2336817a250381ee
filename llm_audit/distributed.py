"""Processes and ranks: `torchrun`, `accelerate launch` or `--devices`, and what they share.

The mechanics only, with no knowledge of layers or outcomes: which rank this process is, splitting
costed items over ranks (greedy, most expensive first, to the least loaded rank, the same split on
every rank), gathering any picklable object from every rank, and starting one process per device.
The runner (runner.py) decides what is split and gathered.

Every group is gloo with an explicit timeout: the gather carries pickled CPU data, so it needs no
NCCL (which refuses two ranks on one GPU), and a rank that finishes early waits for the slowest
one without the default 10/30-minute abort. `--devices cuda:0,cuda:1` needs no launcher: this
process is rank 0 on the first device and spawns one worker per other device; all join a group
through a store on 127.0.0.1 (so `cpu` entries and mixed lists work too).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import torch

from llm_audit.errors import LlmAuditError

T = TypeVar("T")
# A rank waits at the gather for the slowest one; a share can take hours on a CPU.
GATHER_TIMEOUT = dt.timedelta(hours=24)
JOIN_TIMEOUT_S = 600.0  # spawned workers must have imported torch and joined by then


class WorkerError(LlmAuditError, RuntimeError):
    """A `--devices` worker process failed; the message is its rank, device and last error line."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int
    local_world: int = 1  # processes on this machine, which share its CPU cores

    def cpu_workers(self) -> int:
        """Compute threads for this process on the CPU: its share of the machine's cores."""
        return max(1, (os.cpu_count() or 1) // self.local_world)


def from_env() -> Ranks | None:
    """The torchrun/accelerate launcher's WORLD_SIZE, RANK, LOCAL_RANK; None outside a group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return Ranks(rank, world, int(os.environ.get("LOCAL_RANK", str(rank))), local_world)


def rank_device(device: str, ranks: Ranks | None) -> str:
    """`auto`/`cuda` become this rank's own GPU (cuda:LOCAL_RANK); anything else is kept."""
    if ranks is None or not torch.cuda.is_available() or device not in ("auto", "cuda"):
        return device
    return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"


@contextlib.contextmanager
def process_group(ranks: Ranks | None, device: str) -> Iterator[None]:
    """Join the launcher's group (gloo, see the module docstring) unless the caller already has."""
    dist = torch.distributed
    if ranks is None or dist.is_initialized():
        yield
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def assign(costs: Sequence[int], world: int) -> list[list[int]]:
    """Each rank's item indices (ascending), balanced by cost: longest first to the least loaded.

    Deterministic (ties go by index and lowest rank), so every rank computes the same split.
    """
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads = [(0, r) for r in range(world)]
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in order:
        load, r = heapq.heappop(loads)
        shares[r].append(i)
        heapq.heappush(loads, (load + costs[i], r))
    return [sorted(share) for share in shares]


def gather(part: T) -> list[T]:
    """Every rank's `part`, in rank order, on every rank."""
    parts: list[T | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, part)
    return cast(list[T], parts)


def run_on_devices(job: Callable[[Ranks, str], T], devices: Sequence[str]) -> T:
    """`job(ranks, device)` on each device, one process each; returns rank 0's (this process's).

    Workers are spawned (not forked: CUDA), join a gloo group through a store this process serves
    on a free port of 127.0.0.1, and are stopped if this process fails. A worker's failure is
    raised here as `WorkerError` (rank 0's own `LlmAuditError` takes precedence: same input).
    """
    import torch.multiprocessing as mp

    world = len(devices)
    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, world, is_master=True, wait_for_workers=False
    )
    ctx = cast(  # join=False: the context of the running workers, never None
        mp.ProcessContext,
        mp.start_processes(
            _device_worker,
            args=(job, list(devices), store.port),
            nprocs=world - 1,
            join=False,
            start_method="spawn",
        ),
    )
    try:
        _wait_for_workers(store, ctx, world)
        with _group(store, 0, world, devices[0]):
            result = job(Ranks(0, world, 0, world), devices[0])
        while not ctx.join():
            pass
        return result
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise _worker_error(exc, devices) from None
    except (LlmAuditError, KeyboardInterrupt):
        raise
    except Exception as exc:  # e.g. gloo's "connection closed by peer" when a worker died
        try:
            ctx.join(timeout=5)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as failed:
            raise _worker_error(failed, devices) from exc
        raise
    finally:
        for process in ctx.processes:
            if process.is_alive():
                process.terminate()
        for process in ctx.processes:
            process.join()


def _device_worker(
    index: int, job: Callable[[Ranks, str], object], devices: list[str], port: int
) -> None:
    """Rank index + 1 of a `--devices` run (in a spawned process)."""
    rank, world = index + 1, len(devices)
    store = torch.distributed.TCPStore("127.0.0.1", port, world, is_master=False)
    store.set(f"ready{rank}", "1")
    with _group(store, rank, world, devices[rank]):
        job(Ranks(rank, world, rank, world), devices[rank])


@contextlib.contextmanager
def _group(store: torch.distributed.Store, rank: int, world: int, device: str) -> Iterator[None]:
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    torch.distributed.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=GATHER_TIMEOUT
    )
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def _wait_for_workers(
    store: torch.distributed.Store, ctx: torch.multiprocessing.ProcessContext, world: int
) -> None:
    """Until every worker has reached the store; a worker that dies first is raised at once."""
    keys = [f"ready{r}" for r in range(1, world)]
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not store.check(keys):
        ctx.join(timeout=0.05)  # raises if a worker failed
        if time.monotonic() > deadline:
            raise WorkerError(f"--devices: workers did not start within {JOIN_TIMEOUT_S:.0f} s")


def _worker_error(exc: Exception, devices: Sequence[str]) -> WorkerError:
    """A failed worker's exception (from ProcessContext.join) as one line naming its rank."""
    rank = getattr(exc, "error_index", 0) + 1
    lines = str(exc).strip().splitlines()
    code = getattr(exc, "exit_code", None)
    what = lines[-1] if lines and code is None else f"exited with code {code}"
    return WorkerError(f"--devices: rank {rank} on {devices[rank]} failed: {what}")


def is_primary() -> bool:
    """Whether this process reports: rank 0 of a launcher's group, or a process on its own."""
    ranks = from_env()
    return ranks is None or ranks.rank == 0
