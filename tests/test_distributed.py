"""A scan sharded over 2 ranks (gloo on CPU) equals the single-process scan, however launched:
torchrun, accelerate launch, or `--devices cpu,cpu` with no launcher.

Every run here pins `--device cpu`: on a GPU machine `auto` means CUDA, and a report computed on
the CPU by the sharded run would then be compared with one computed on the GPU.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.distributed as dist

import llm_audit
from llm_audit.distributed import Ranks, assign, from_env
from llm_audit.jobs import cost, layer_job
from llm_audit.journal import rank_path
from llm_audit.layers import plan_layers
from llm_audit.runner import shard_costs
from llm_audit.sources import open_source
from tests.conftest import llama_tensors, write_shards
from tests.test_resume import journaled_names, read_audit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="needs torch.distributed gloo",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sharded_model(folder: Path) -> Path:
    return write_shards(
        folder,
        llama_tensors(blocks=4, hidden=64, inter=160, vocab=300),
        shards=3,
        config={"model_type": "llama", "tie_word_embeddings": False},
    )


def assert_launch_equals_one_process(
    tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
    launcher: list[str],
    env: dict[str, str],
) -> None:
    """`python -m LAUNCHER... -m llm_audit scan` writes what a single-process scan writes."""
    model = sharded_model(tmp_path / "m")
    env.pop("WORLD_SIZE", None)
    scan = ["-m", "llm_audit", "scan", str(model), "--out", str(tmp_path / "A"), "--no-progress"]
    scan += ["--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", *launcher, *scan],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Report written to") == 1  # rank 1 prints and writes nothing
    code, _, err = cli("scan", model, "--out", tmp_path / "B", "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert read_audit(tmp_path / "A") == read_audit(tmp_path / "B")
    assert not list((tmp_path / "A").glob(".journal*"))  # each rank removed its journal


def torchrun_two_ranks() -> tuple[list[str], dict[str, str]]:
    """`torch.distributed.run` arguments for two local ranks on a free port, and their env."""
    port = str(free_port())
    torchrun = ["torch.distributed.run", "--nproc-per-node", "2"]
    torchrun += ["--master-addr", "127.0.0.1", "--master-port", port]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    env.pop("WORLD_SIZE", None)
    return torchrun, env


def test_torchrun_two_ranks_equals_one_process(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    assert_launch_equals_one_process(tmp_path, cli, *torchrun_two_ranks())


def test_accelerate_launch_two_processes_equals_one_process(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    # `--cpu --num_processes 2` would start ONE process (accelerate needs mpirun for several CPU
    # processes); `--multi_gpu` starts two through torch.distributed.run, which on a machine
    # without GPUs compute on the CPU and gather over gloo.
    accelerate = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    accelerate += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home")}  # no user accelerate config
    assert_launch_equals_one_process(tmp_path, cli, accelerate, env)


def test_devices_cpu_cpu_equals_one_process(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = sharded_model(tmp_path / "m")
    code, out, err = cli(
        "scan", model, "--out", tmp_path / "A", "--no-progress", "--devices", "cpu,cpu"
    )
    assert code == 0, err
    assert out.count("Report written to") == 1
    code, _, err = cli("scan", model, "--out", tmp_path / "B", "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert read_audit(tmp_path / "A") == read_audit(tmp_path / "B")
    assert not list((tmp_path / "A").glob(".journal*"))


def test_devices_split_the_layers_between_processes(tmp_path: Path) -> None:
    """This process computed rank 0's share (journaled first), the worker the rest, which rank 0
    journaled after the gather, before the worker removed its own journal."""
    model = sharded_model(tmp_path / "m")
    journal = tmp_path / "j.jsonl"
    result = llm_audit.scan(model, devices=["cpu", "cpu"], journal=journal)
    single = llm_audit.scan(model, device="cpu")
    assert result.records == single.records
    assert result.settings["device"] == single.settings["device"] == "cpu"
    with open_source(model) as source:
        layers, _ = plan_layers(source.tensors(), source.info.config)
        jobs = [layer_job(layer.name, layer, source) for layer in layers]
    rank0 = [layers[i].name for i in assign(shard_costs(jobs, ["cpu"]), 2)[0]]
    assert 0 < len(rank0) < len(layers)
    names = journaled_names(rank_path(journal, 0))
    assert sorted(names[: len(rank0)]) == sorted(rank0)  # in the order they finished
    assert sorted(names) == sorted(layer.name for layer in layers)
    assert not rank_path(journal, 1).exists()  # the worker removed its own


@pytest.mark.parametrize(
    ("devices", "env", "expected"),
    [
        ("cuda:7", {}, "no GPU cuda:7"),
        ("", {}, "empty device name"),
        ("cpu,,cpu", {}, "empty device name"),
        ("tpu:0", {}, "'tpu:0' is not a device"),
        ("cpu,cpu", {"WORLD_SIZE": "2", "RANK": "0"}, "cannot run under torchrun"),
    ],
)
def test_devices_bad_input_is_one_line_exit_2(
    tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
    devices: str,
    env: dict[str, str],
    expected: str,
) -> None:
    model = sharded_model(tmp_path / "m")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = cli("scan", model, "--out", tmp_path / "A", "--devices", devices)
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "A").exists() or not list((tmp_path / "A").iterdir())


def test_devices_with_device_is_one_line_exit_2(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = sharded_model(tmp_path / "m")
    code, _, err = cli("scan", model, "--device", "cpu", "--devices", "cpu,cpu")
    assert code == 2 and "not both" in err and err.count("\n") == 1, err


def test_assignment_balances_cost_not_counts(tiny_llama: Path) -> None:
    with open_source(tiny_llama) as source:
        layers, _ = plan_layers(source.tensors(), source.info.config)
    shares = [[layers[i] for i in share] for share in assign([cost(x) for x in layers], 3)]
    assert sorted(x.name for s in shares for x in s) == sorted(x.name for x in layers)
    loads = [sum(cost(layer) for layer in share) for share in shares]
    assert max(loads) - min(loads) <= max(cost(layer) for layer in layers)
    order = {layer.name: i for i, layer in enumerate(layers)}
    assert all([order[x.name] for x in s] == sorted(order[x.name] for x in s) for s in shares)
    assert rank_path("o/.journal.jsonl", 1) == Path("o/.journal.rank1.jsonl")


def test_processes_on_one_machine_share_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # two machines of four processes
    assert from_env() == Ranks(5, 8, 1, 4)
    assert Ranks(5, 8, 1, 4).cpu_workers() == 4
    assert Ranks(0, 32, 0, 32).cpu_workers() == 1
