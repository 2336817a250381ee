"""A scan sharded over 2 torchrun ranks (gloo on CPU) equals the single-process scan."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.distributed as dist

from llm_audit.distributed import Ranks, assign, cost, journal_path
from llm_audit.layers import plan_layers
from llm_audit.sources import open_source
from tests.conftest import llama_tensors, write_shards
from tests.test_resume import read_audit

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_ranks_equals_one_process(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = write_shards(
        tmp_path / "m",
        llama_tensors(blocks=4, hidden=64, inter=160, vocab=300),
        shards=3,
        config={"model_type": "llama", "tie_word_embeddings": False},
    )
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            env["MASTER_PORT"],
            "-m",
            "llm_audit",
            "scan",
            str(model),
            "--out",
            str(tmp_path / "A"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Report written to") == 1  # rank 1 prints and writes nothing
    code, _, err = cli("scan", model, "--out", tmp_path / "B", "--no-progress")
    assert code == 0, err
    assert read_audit(tmp_path / "A") == read_audit(tmp_path / "B")
    assert not list((tmp_path / "A").glob(".journal*"))  # each rank removed its journal


def test_assignment_balances_cost_not_counts(tiny_llama: Path) -> None:
    with open_source(tiny_llama) as source:
        layers, _ = plan_layers(source.tensors(), source.info.config)
    shares = assign(layers, 3)
    assert sorted(x.name for s in shares for x in s) == sorted(x.name for x in layers)
    loads = [sum(cost(layer) for layer in share) for share in shares]
    assert max(loads) - min(loads) <= max(cost(layer) for layer in layers)
    order = {layer.name: i for i, layer in enumerate(layers)}
    assert all([order[x.name] for x in s] == sorted(order[x.name] for x in s) for s in shares)
    assert journal_path("o/.journal.jsonl", Ranks(1, 2, 1)) == "o/.journal.rank1.jsonl"
