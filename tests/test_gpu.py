"""Ready for the GPU (issue 14): what would break or differ on a CUDA machine, checked without one.

The device and process-group choices are tested with CUDA faked (`fake_cuda`: the counts torch
reports, nothing run on a GPU); the GPU scheduling path runs on the CPU with its two CUDA calls
replaced (`cpu_stand_ins`), so its control flow (one matrix at a time, several workers, no byte
budget) is exercised here; what needs a real GPU is in `tests/test_gpu_cuda.py` and skips, with
its reason, without one. `benchmarks/bench_gpu.py` is run as its CPU smoke run, without
WeightWatcher, and must leave the JSON of every stage that ran, failed stages included.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from llm_audit import distributed, scheduler
from llm_audit.config import AuditConfig
from llm_audit.distributed import GATHER_TIMEOUT, Ranks, assign, process_group, rank_device
from llm_audit.errors import ConfigError
from llm_audit.jobs import Job, cost, layer_job
from llm_audit.layers import plan_layers
from llm_audit.options import RunOptions, resolve_device, run_options
from llm_audit.runner import Process, recorded_device, shard_costs
from llm_audit.sources import TensorInfo, open_source
from llm_audit.spectral import esd
from llm_audit.spectral.esd import Difference, RowMatrix, as_lazy

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def fake_cuda(monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    """torch reports `gpus` CUDA devices (nothing may run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


# --- device and process group -------------------------------------------------------------------


def recording_group(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """torch.distributed's group calls recorded instead of made."""
    calls: list[Any] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: calls.append(("init", a, kw)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    return calls


def test_more_ranks_than_gpus_share_them_over_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --nproc-per-node 2 on one GPU: both ranks on cuda:0, and a gloo group (NCCL
    would refuse two ranks on one GPU at the final gather, after all the compute)."""
    fake_cuda(monkeypatch, gpus=1)
    calls = recording_group(monkeypatch)
    for rank in (0, 1):
        ranks = Ranks(rank, 2, rank, 2)
        device = rank_device("auto", ranks)
        assert device == rank_device("cuda", ranks) == "cuda:0"
        assert rank_device("cpu", ranks) == "cpu" and rank_device("cuda:0", ranks) == "cuda:0"
        with process_group(ranks, device):
            pass
    inits = [c for c in calls if c[0] == "init"]
    assert len(inits) == 2
    for _, args, kwargs in inits:
        assert (args[0] if args else kwargs["backend"]) == "gloo"
        assert kwargs["timeout"] == GATHER_TIMEOUT >= dt.timedelta(hours=24)
    assert calls.count("destroy") == 2


def test_devices_group_has_the_same_backend_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--devices cuda:0,cuda:0` joins the same kind of group as a launcher's ranks."""
    fake_cuda(monkeypatch, gpus=1)
    calls = recording_group(monkeypatch)
    with distributed._group(object(), 1, 2, "cuda:0"):  # type: ignore[arg-type]
        pass
    assert calls[0] == ("set_device", "cuda:0")
    _, args, kwargs = calls[1]
    assert args == ("gloo",) and kwargs["timeout"] == GATHER_TIMEOUT
    assert kwargs["rank"] == 1 and kwargs["world_size"] == 2


def test_a_gpu_this_machine_lacks_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, gpus=1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"'cuda:7': this machine has 1 GPU\(s\) \(cuda:0"):
        resolve_device("cuda:7")
    with pytest.raises(ConfigError, match="cuda:7"):
        run_options(device="cuda:7")  # before any work
    with pytest.raises(ConfigError, match="is unknown"):
        resolve_device("cuda:x")
    fake_cuda(monkeypatch, gpus=0)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_bad_gpu_number_is_one_line_exit_2_before_the_model_is_opened(
    tiny_llama: Path,
    tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cuda(monkeypatch, gpus=1)
    scan_module = importlib.import_module("llm_audit.scan")  # imported lazily by llm_audit

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was opened before the device was checked")

    monkeypatch.setattr(scan_module, "open_source", never)
    out = tmp_path / "out"
    code, _, err = cli("scan", tiny_llama, "--out", out, "--no-progress", "--device", "cuda:7")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "this machine has 1 GPU(s)" in err
    assert not out.exists()


def test_the_recorded_device_is_the_same_however_launched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def recorded(device: str, ranks: Ranks | None = None, devices: tuple[str, ...] | None = None):
        return recorded_device(Process(ranks, device, RunOptions(devices=devices)))

    assert recorded("cpu") == recorded("auto") == "cpu"
    assert recorded("cpu", Ranks(0, 2, 0, 2), ("cpu", "cpu")) == "cpu"
    fake_cuda(monkeypatch, gpus=2)
    one_process = recorded("auto")
    assert one_process == recorded("cuda") == recorded("cuda:1") == "cuda"
    assert recorded("cuda:1", Ranks(1, 2, 1, 2)) == one_process  # torchrun's rank 1
    assert recorded("cuda:0", Ranks(0, 2, 0, 2), ("cuda:0", "cuda:1")) == one_process
    assert recorded("cpu", Ranks(0, 2, 0, 2), ("cpu", "cuda:0")) == "cpu+cuda"


# --- cost model ----------------------------------------------------------------------------------


def llama7b_jobs() -> list[Job]:
    """A Llama-2-7B's 226 weight matrices as jobs (shapes only; never read)."""
    h, i, v = 4096, 11008, 32000
    shapes = [("model.embed_tokens.weight", (v, h)), ("lm_head.weight", (v, h))]
    for b in range(32):
        p = f"model.layers.{b}."
        shapes += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h))]
        shapes += [(p + "mlp.down_proj.weight", (h, i))]
    tensors = [TensorInfo(name, shape, "BF16") for name, shape in shapes]
    layers, _ = plan_layers(tensors, {"model_type": "llama"})
    return [Job(x.name, x, lambda: torch.zeros(1, 1), 0, cost(x)) for x in layers]


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_rank_costs_count_the_eigensolver(kind: str) -> None:
    """On 8 ranks, with seconds modelled as Gram + eigvalsh, the Gram-only costs left the
    slowest rank about 6% (GPU) above the mean; counting eigvalsh brings that under 3%."""
    jobs = llama7b_jobs()
    assert len(jobs) == 226
    seconds = shard_costs(jobs, [kind])  # the model of a layer's time on that device

    def excess(costs: list[int]) -> float:
        loads = [sum(seconds[i] for i in share) for share in assign(costs, 8)]
        return max(loads) / (sum(loads) / 8) - 1

    before, after = excess([job.cost for job in jobs]), excess(shard_costs(jobs, [kind]))
    assert after < before and after < 0.03
    assert shard_costs(jobs, ["cpu", "cuda"]) == shard_costs(jobs, ["cuda"])  # mixed: the GPU's


# --- the GPU scheduling path, run on the CPU ------------------------------------------------------


def test_stage_gives_what_materialize_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned copy holds the same values, dtype and orientation as the old
    `LazyMatrix.to(cuda)` path, read in several row blocks."""
    monkeypatch.setattr(esd, "CHUNK_BYTES", 2048)  # many blocks
    g = torch.Generator().manual_seed(0)
    A = torch.randn(70, 30, generator=g)
    B = torch.randn(70, 30, generator=g).to(torch.bfloat16)
    matrices = [
        A,
        B,
        A.T,  # a transposed view, as a GPT-2 Conv1D weight is read
        RowMatrix(lambda a, b: B[a:b], (70, 30), True, dtype=torch.bfloat16),
        RowMatrix(lambda a, b: B[a:b], (70, 30), False, dtype=torch.float32),
        Difference(lambda a, b: B[a:b], lambda a, b: A[a:b], (70, 30), False),
    ]
    for W in matrices:
        host, transposed = scheduler.stage(W, pin=False)
        got = host.T if transposed else host
        want = as_lazy(W).materialize()
        assert got.dtype == want.dtype and got.shape == want.shape == W.shape
        assert torch.equal(got, want)
        assert got.is_contiguous() == want.is_contiguous()


def cpu_stand_ins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The GPU path with its CUDA calls replaced: the copy is `stage` and the worker runs on the
    CPU; returns the worker thread of each analyze call."""
    calls: list[str] = []

    class Upload:
        def __init__(self, device: torch.device):
            self.device = device

        def __call__(self, W: esd.Matrix) -> tuple[torch.Tensor, None]:
            host, transposed = scheduler.stage(W, pin=False)
            return (host.T if transposed else host), None

    def run_on_stream(device: torch.device, ready: None, layer, W: torch.Tensor, cfg):  # type: ignore[no-untyped-def]
        calls.append(threading.current_thread().name)
        return scheduler._run(1, layer, W, cfg)

    monkeypatch.setattr(scheduler, "Uploader", Upload)
    monkeypatch.setattr(scheduler, "_run_on_stream", run_on_stream)
    monkeypatch.setattr(scheduler, "gpu_device", lambda device: device)
    return calls


def test_gpu_path_analyzes_one_matrix_at_a_time_on_several_workers(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same-shape neighbours are never batched (a batched Gram differs in its last bits), the
    workers are GPU_WORKERS, the byte budget does not hold jobs back, and the outcomes are those
    of the CPU path."""
    cfg = AuditConfig(traps=True)
    with open_source(tiny_llama) as source:
        layers, _ = plan_layers(source.tensors(), source.info.config)
        jobs = [layer_job(x.name, x, source) for x in layers]
        on_cpu = scheduler.schedule(jobs, cfg, device=torch.device("cpu"), total=len(jobs))
        calls = cpu_stand_ins(monkeypatch)
        monkeypatch.setattr(scheduler, "GPU_WORKERS", 2)
        done: list[str] = []
        on_gpu = scheduler.schedule(
            jobs,
            cfg,
            device=torch.device("cuda", 0),
            total=len(jobs),
            budget=1,  # would run every job alone on the CPU path
            on_done=lambda key, outcome: done.append(key),
        )
    assert len(calls) == len(jobs)  # one matrix per call
    assert len(set(calls)) == 2
    assert sorted(done) == sorted(job.key for job in jobs)  # each stored, and journaled, once
    assert on_gpu.keys() == on_cpu.keys()
    for key, outcome in on_cpu.items():
        assert on_gpu[key].record == outcome.record
        assert on_gpu[key].spectra.keys() == outcome.spectra.keys()
        assert all((on_gpu[key].spectra[k] == v).all() for k, v in outcome.spectra.items())


# --- bench_gpu.py --------------------------------------------------------------------------------


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    """benchmarks/bench_gpu.py as a module, with WeightWatcher absent (as on the GPU machine)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setitem(sys.modules, "weightwatcher", None)  # `import weightwatcher` fails
    import bench_gpu

    return bench_gpu


def test_bench_gpu_keeps_every_stage_when_some_fail(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU smoke run (`--device cpu --preset tiny`) with the traps scan failing and no
    WeightWatcher: exit 1, and the JSON holds every stage, written as each one ended."""
    out = tmp_path / "out"
    seen_on_disk: list[list[str]] = []
    scan = bench.scan

    def failing_traps(folder: Path, device: str, traps: bool, *args: Any) -> dict[str, Any]:
        seen_on_disk.append(json.loads((out / "bench_gpu_tiny.json").read_text())["stages"])
        if traps:
            raise RuntimeError("CUDA error: out of memory (injected)")
        return scan(folder, device, traps, *args)

    monkeypatch.setattr(bench, "scan", failing_traps)
    assert "weightwatcher" not in sys.modules or sys.modules["weightwatcher"] is None
    code = bench.main(["--device", "cpu", "--preset", "tiny", "--out", str(out)])
    report = json.loads((out / "bench_gpu_tiny.json").read_text())
    assert code == 1
    assert seen_on_disk[0] == ["env", "checkpoint", "read", "warmup", "equal"]
    assert report["stages"] == [
        "env",
        "checkpoint",
        "read",
        "warmup",
        "equal",
        "traps_streams1",
        "plain_streams1",
        "weightwatcher",
    ]
    assert report["failed"] == ["traps_streams1", "weightwatcher"]
    assert "out of memory (injected)" in report["traps_streams1"]["error"]
    assert report["weightwatcher"]["error"].startswith("ModuleNotFoundError")
    plain = report["plain_streams1"]
    assert plain["ok"] and plain["analyzed"] == plain["layers"] == 16
    assert plain["recorded_device"] == "cpu"
    assert set(plain["profile"]["share"]) == {"read", "w_spectrum_device", "trap_test", "cpu_fits"}
    assert report["read"]["gb"] > 0 and report["equal"]["passed"]
    assert all(row["alpha_rel"] == 0 for row in report["equal"]["layers"].values())


def test_bench_gpu_without_cuda_is_one_line_exit_2(
    bench: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
