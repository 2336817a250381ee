"""A scan sharded over `torch.distributed` ranks (`torchrun`, `accelerate launch`).

Layers go to ranks balanced by cost (greedy, most expensive first, to the least loaded rank), each
rank reads and analyzes only its own tensors, and every rank ends with all outcomes
(`all_gather_object`), so `llm_audit.scan` returns the same result on each; the CLI writes files
on rank 0 only. Per-layer seeds depend on the layer name alone, so the result equals a
single-process scan whatever the number of ranks.
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llm_audit.engine import LayerOutcome
from llm_audit.layers import Layer


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int


def from_env() -> Ranks | None:
    """The torchrun/accelerate launcher's WORLD_SIZE, RANK, LOCAL_RANK; None outside a group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    return Ranks(rank, world, int(os.environ.get("LOCAL_RANK", str(rank))))


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
