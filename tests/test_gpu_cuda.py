"""On a CUDA GPU: the GPU path agrees with the CPU, and its results do not depend on how the work
was split (neighbours, workers, ranks, launcher). Skipped, with the reason, without a GPU; what
can be checked without one is in tests/test_gpu.py. `benchmarks/gpu_run.sh` runs this file on
the GPU machine.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import llm_audit
from llm_audit import scheduler
from llm_audit.result import AuditResult
from llm_audit.spectral.esd import RowMatrix, as_lazy
from tests.conftest import llama_tensors, write_shards

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (none here, or CUDA_VISIBLE_DEVICES is empty)",
)
ALPHA_RTOL = 1e-6


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """Two Llama blocks at hidden 256: same-shape neighbours, Grams of 256 and more."""
    tensors = llama_tensors(blocks=2, hidden=256, inter=688, vocab=1000)
    config = {"model_type": "llama", "tie_word_embeddings": False}
    return write_shards(tmp_path / "m", tensors, shards=2, config=config)


def by_name(result: AuditResult) -> dict[str, dict]:
    return {r["name"]: r for r in result.records}


def test_gpu_scan_agrees_with_the_cpu(model: Path) -> None:
    gpu = llm_audit.scan(model, device="cuda", traps=True)
    cpu = llm_audit.scan(model, device="cpu", traps=True)
    assert gpu.settings["device"] == "cuda" and cpu.settings["device"] == "cpu"
    for g, c in zip(gpu.records, cpu.records, strict=True):
        assert g["name"] == c["name"] and g["status"] == c["status"]
        if c["status"] != "success":
            continue
        assert abs(g["alpha"] - c["alpha"]) <= ALPHA_RTOL * abs(c["alpha"]), g["name"]
        assert abs(g["xmin"] - c["xmin"]) <= ALPHA_RTOL * abs(c["xmin"]), g["name"]
        assert g["num_pl_spikes"] == c["num_pl_spikes"], g["name"]
        for key in ("num_traps", "rand_num_spikes", "num_shuffles"):  # keyed shuffle: same
            assert g[key] == c[key], (g["name"], key)


def test_gpu_results_do_not_depend_on_neighbours_or_workers(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bitwise: a layer's outcome is the same in a full scan, a `--layers` scan of a few, and
    with one GPU worker instead of several."""
    full = llm_audit.scan(model, device="cuda", traps=True)
    some = llm_audit.scan(model, device="cuda", traps=True, layers=r"layers\.1\.mlp")
    monkeypatch.setattr(scheduler, "GPU_WORKERS", 1)
    one_worker = llm_audit.scan(model, device="cuda", traps=True)
    assert one_worker.records == full.records
    records = by_name(full)
    assert some.records and all(r == records[r["name"]] for r in some.records)
    for name, spectra in some.spectra.items():
        for key, values in spectra.items():
            assert np.array_equal(values, full.spectra[name][key]), (name, key)


def test_uploader_copies_what_materialize_gives() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator().manual_seed(0)
    B = torch.randn(300, 70, generator=g).to(torch.bfloat16)
    upload = scheduler.Uploader(device)
    for W in (B, B.T, RowMatrix(lambda a, b: B[a:b], (300, 70), True, dtype=torch.bfloat16)):
        gpu, ready = upload(W)
        ready.synchronize()
        want = as_lazy(W).materialize()
        assert gpu.is_cuda and gpu.dtype == want.dtype and gpu.shape == want.shape
        assert torch.equal(gpu.cpu(), want)
        assert gpu.is_contiguous() == want.is_contiguous()


def test_each_worker_thread_has_its_own_stream() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    streams: list[torch.cuda.Stream] = []

    def work() -> None:
        streams.append(scheduler.worker_stream(device))
        streams.append(scheduler.worker_stream(device))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert streams[0] == streams[1] and streams[2] == streams[3] and streams[0] != streams[2]
    assert streams[0] != torch.cuda.default_stream(device)


def test_a_gpu_this_machine_lacks_is_one_line_exit_2(
    model: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    code, _, err = cli("scan", model, "--out", tmp_path / "o", "--device", missing)
    assert code == 2 and err.count("\n") == 1 and "GPU(s)" in err, err


@pytest.mark.slow
def test_torchrun_two_ranks_on_the_gpus_equals_one_process(
    model: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    """Two ranks whatever the GPU count (both on cuda:0 on a one-GPU machine: a gloo group, so
    no NCCL duplicate-GPU error at the gather), the same report as one process on the GPU."""
    from tests.test_distributed import torchrun_two_ranks
    from tests.test_resume import read_audit

    torchrun, env = torchrun_two_ranks()
    scan = ["-m", "llm_audit", "scan", str(model), "--no-progress", "--device", "cuda"]
    proc = subprocess.run(
        [sys.executable, "-m", *torchrun, *scan, "--out", str(tmp_path / "A")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, _, err = cli("scan", model, "--out", tmp_path / "B", "--no-progress", "--device", "cuda")
    assert code == 0, err
    assert read_audit(tmp_path / "A") == read_audit(tmp_path / "B")


@pytest.mark.slow
def test_devices_twice_the_same_gpu_equals_one_process(
    model: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    from tests.test_resume import read_audit

    code, _, err = cli(
        "scan", model, "--out", tmp_path / "A", "--no-progress", "--devices", "cuda:0,cuda:0"
    )
    assert code == 0, err
    code, _, err = cli("scan", model, "--out", tmp_path / "B", "--no-progress", "--device", "cuda")
    assert code == 0, err
    assert read_audit(tmp_path / "A") == read_audit(tmp_path / "B")
