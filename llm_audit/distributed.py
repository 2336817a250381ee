"""A scan sharded over `torch.distributed` ranks (`torchrun`, `accelerate launch`, `--devices`).

Layers go to ranks balanced by cost (greedy, most expensive first, to the least loaded rank), each
rank reads and analyzes only its own tensors, and every rank ends with all outcomes
(`all_gather_object`), so `llm_audit.scan` returns the same result on each; the CLI writes files
on rank 0 only. Per-layer seeds depend on the layer name alone, so the result equals a
single-process scan whatever the number of ranks.

`--devices cuda:0,cuda:1` needs no launcher: this process is rank 0 on the first device and spawns
one worker per other device; all join a gloo group on 127.0.0.1 (gloo carries only the gathered
results, so `cpu` entries and mixed lists work too) and the rest is the launcher's path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import torch

from llm_audit.engine import LayerOutcome
from llm_audit.errors import ConfigError, LlmAuditError
from llm_audit.layers import Layer

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
    """Join the launcher's group (gloo on CPU, nccl on CUDA) unless the caller already has."""
    dist = torch.distributed
    if ranks is None or dist.is_initialized():
        yield
        return
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if on_gpu else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def cost(layer: Layer) -> int:
    """Flops of the smaller-side Gram of an N x M matrix (M <= N): about N * M**2."""
    n, m = max(layer.out_in), min(layer.out_in)
    return n * m * m


def assign(layers: list[Layer], world: int) -> list[list[Layer]]:
    """Each rank's layers (in model order), balanced by cost: longest first to the least loaded.

    Deterministic (ties go by model order and lowest rank), so every rank computes the same split.
    """
    order = sorted(range(len(layers)), key=lambda i: (-cost(layers[i]), i))
    loads = [(0, r) for r in range(world)]
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in order:
        load, r = heapq.heappop(loads)
        shares[r].append(i)
        heapq.heappush(loads, (load + cost(layers[i]), r))
    return [[layers[i] for i in sorted(share)] for share in shares]


def gather(results: dict[str, LayerOutcome]) -> dict[str, LayerOutcome]:
    """Every rank's outcomes, merged, on every rank."""
    parts: list[dict[str, LayerOutcome] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, results)
    merged: dict[str, LayerOutcome] = {}
    for part in parts:
        merged.update(part or {})
    return merged


def journal_path(path: str | os.PathLike[str], ranks: Ranks | None) -> str:
    """One journal per rank (`.journal.rank1.jsonl`); a single process keeps the plain name."""
    path = os.fspath(path)
    if ranks is None:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.rank{ranks.rank}{ext}"


def check_devices(devices: Sequence[str]) -> list[str]:
    """The `--devices` list, validated: `cpu` or `cuda:N` with N a visible GPU; no launcher.

    Raises `ConfigError` (one line, with the fix) for an empty list, an unknown or missing device,
    or a process already under torchrun/accelerate launch.
    """
    devices = [d.strip() for d in devices]
    if not devices or any(not d for d in devices):
        raise ConfigError(
            "--devices: empty device name; give a list such as cuda:0,cuda:1 or cpu,cpu"
        )
    if from_env() is not None or torch.distributed.is_initialized():
        raise ConfigError(
            "--devices starts its own processes and cannot run under torchrun or accelerate "
            "launch; drop --devices or the launcher"
        )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in devices:
        match = re.fullmatch(r"cuda:(\d+)", device)
        if device == "cpu" or (match and int(match.group(1)) < gpus):
            continue
        if match:
            visible = f"cuda:0..cuda:{gpus - 1}" if gpus else "none"
            raise ConfigError(
                f"--devices: no GPU {device} (visible: {visible}); use cpu or a visible GPU"
            )
        raise ConfigError(
            f"--devices: {device!r} is not a device; use cpu or cuda:N (one per process)"
        )
    return devices


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
