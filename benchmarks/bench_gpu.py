"""A Llama audit on one GPU, stage by stage: seconds, GB/s, where time goes, CPU-vs-GPU equality.

Why: the target is a Llama-7B audit, traps included, in 60 s or less on one H200. GPU minutes are
few, so every stage is timed on its own, may fail on its own, and the JSON file is rewritten as
soon as each stage ends: a run killed by its time limit, or a stage that raises, still leaves
every figure measured before it.

Stages (each a key of the JSON, with `ok`, `wall_s` and `error` when it failed):
  env          torch, CUDA, the GPU, CPU count, versions
  checkpoint   a Llama-shaped bf16 checkpoint (make_llama.py shapes; `--blocks` shrinks it),
               written unless `--folder` holds one; on a GPU its weights are drawn there (fast)
  read         every weight matrix read and copied to the device the way a scan does (pinned
               buffer, side stream), no compute: once with the shards evicted, once warm
  warmup       a one-layer scan: CUDA context, cuBLAS/cuSOLVER handles, kernels loaded
  equal        `--check-layers` scanned on the CPU and on the device, with traps: alpha within
               1e-6, xmin and tail size, trap counts equal (the shuffle is device-independent)
  traps_streamsN, plain_streamsN
               the scan with traps for each `--streams` count of GPU workers, then without
               traps with the last count: wall seconds, GB/s, peak GPU memory, and the share
               of the time summed over threads spent reading
               (reader thread: memory map -> pinned -> copy launch), in the W spectrum on the
               device (Gram + eigvalsh), in the trap test (shuffle, Grams, Cholesky/eigvalsh and
               its MP fit) and in CPU fits (power law, MP, metrics)
  weightwatcher  WeightWatcher 0.7.7 on one layer per shape, EXTRAPOLATED by the shape counts;
               optional (`--ww`; off by default on CUDA, where it is not installed)

Usage: python benchmarks/bench_gpu.py [--preset 7b|1b|tiny] [--blocks N] [--folder DIR]
       [--device cuda] [--streams 3] [--out DIR (default $OUT or .)] [--json PATH]
       [--check-layers REGEX|none] [--ww|--no-ww] [--ww-randomize] [--skip STAGE,...]
Exits 2 with one line when CUDA is asked for and absent, 1 when a stage failed (its JSON is
written all the same), 0 otherwise. `--device cpu --preset tiny` is a smoke run of the script
(seconds), not a benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import make_llama
import torch
from measure import set_page_cache

import llm_audit
from llm_audit import analysis, scheduler
from llm_audit.sources import open_source

# Layers compared CPU against device, per preset: a CPU eigvalsh of 4096 takes a minute or more on
# one core, so the 7b preset checks none (the 1b run checks the same code at 2048 wide).
CHECK_LAYERS = {
    "tiny": r"model\.layers\.0\.",
    "1b": r"model\.layers\.0\.(self_attn\.k_proj|mlp\.down_proj)",
    "7b": "none",
}
ALPHA_RTOL = 1e-6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--preset", default="7b", choices=sorted(make_llama.PRESETS), help="shape")
    p.add_argument("--blocks", type=int, help="transformer blocks (default: the preset's)")
    p.add_argument("--folder", type=Path, help="checkpoint folder, reused if it holds one")
    p.add_argument("--shard-gb", type=float, default=2.0, help="shard size when writing (GB)")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: a smoke run only)")
    p.add_argument(
        "--streams", default=str(scheduler.GPU_WORKERS), help="GPU worker counts, e.g. 1,2,4"
    )
    p.add_argument("--out", type=Path, help="folder for the JSON (default: $OUT, else .)")
    p.add_argument("--json", type=Path, help="the JSON file (default: OUT/bench_gpu_PRESET.json)")
    p.add_argument("--check-layers", help="regex of layers compared CPU vs device, or none")
    p.add_argument("--ww", action=argparse.BooleanOptionalAction, help="WeightWatcher stage")
    p.add_argument("--ww-randomize", action="store_true", help="also time randomize=True")
    p.add_argument("--skip", default="", help="stages to skip: read,warmup,plain,traps,equal")
    return p.parse_args(argv)


class Report:
    """The figures so far, rewritten to `path` after every stage."""

    def __init__(self, path: Path, head: dict[str, Any]):
        self.path = path
        self.data: dict[str, Any] = {**head, "stages": []}
        self.failed: list[str] = []
        self.write()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Run a stage: whatever it puts in the dict is kept, and its error if it raises."""
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        print(f"=== {name}", file=sys.stderr, flush=True)
        try:
            yield out
            out["ok"] = True
        except Exception as exc:  # the next stages still run; the error is in the JSON
            out["ok"] = False
            out["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
            out["traceback"] = traceback.format_exc()[-4000:]
            self.failed.append(name)
            print(f"{name} failed: {out['error']}", file=sys.stderr, flush=True)
        out["wall_s"] = round(time.perf_counter() - t0, 3)
        self.data[name] = out
        self.data["stages"].append(name)
        self.write()
        print(f"{name}: {json.dumps(out, default=str)[:1500]}", file=sys.stderr, flush=True)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if on_gpu(device):
        torch.cuda.synchronize(torch.device(device))


# --- stages ----------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    from llm_audit.result import versions

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "versions": versions(),
        "gpu_workers_default": scheduler.GPU_WORKERS,
    }
    if on_gpu(device):
        props = torch.cuda.get_device_properties(torch.device(device))
        out.update(
            gpu=props.name,
            gpu_mem_gib=round(props.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
            linalg_library=str(torch.backends.cuda.preferred_linalg_library()),
        )
    return out


def checkpoint(
    folder: Path, preset: str, blocks: int | None, shard_gb: float, device: str
) -> dict[str, Any]:
    """The checkpoint in `folder`: reused, or written (weights drawn on the GPU where there is
    one: 13.5 GB of CPU randn takes minutes, the GPU's seconds; other weights, same shapes)."""
    if (folder / "model.safetensors.index.json").exists():
        return {"folder": str(folder), "written": False}
    t0 = time.perf_counter()
    if on_gpu(device):
        info = write_on_device(folder, preset, blocks, shard_gb, torch.device(device))
    else:
        info = make_llama.write_checkpoint(
            folder, preset, dtype="bf16", blocks=blocks, shard_gb=shard_gb
        )
    return {**info, "written": True, "write_s": time.perf_counter() - t0}


def write_on_device(
    folder: Path, preset: str, blocks: int | None, shard_gb: float, device: torch.device
) -> dict[str, Any]:
    """make_llama's layout, bf16, weights `randn * 0.02` drawn on `device` (seeded per tensor)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = make_llama.PRESETS[preset]
    if blocks is not None:
        shape = dataclasses.replace(shape, num_hidden_layers=blocks)
    tensors = make_llama.llama_tensors(shape)
    shards = make_llama.plan_shards(tensors, 2, int(shard_gb * 1e9))
    weight_map: dict[str, str] = {}
    index = 0
    for k, shard in enumerate(shards, start=1):
        filename = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        with (folder / filename).open("wb") as fh:
            fh.write(make_llama.safetensors_header(shard, "BF16", 2))
            for name, tshape in shard:
                if name.endswith("norm.weight"):
                    t = torch.ones(tshape, dtype=torch.bfloat16)
                else:
                    g = torch.Generator(device=device).manual_seed(index)
                    drawn = torch.randn(tshape, generator=g, device=device)
                    t = (drawn * make_llama.INIT_STD).to(torch.bfloat16).cpu()
                fh.write(t.view(torch.uint8).numpy().data)
                weight_map[name] = filename
                index += 1
            fh.flush()
            os.fsync(fh.fileno())
    total = sum(make_llama.numel(s) * 2 for _, s in tensors)
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json))
    config = make_llama.config_json(shape, torch.bfloat16)
    (folder / "config.json").write_text(json.dumps(config))
    return {
        "folder": str(folder),
        "preset": preset,
        "shape": shape.__dict__,
        "num_parameters": sum(make_llama.numel(s) for _, s in tensors),
        "num_matrices": sum(len(s) == 2 for _, s in tensors),
        "bytes": total,
        "shards": len(shards),
        "drawn_on": str(device),
    }


def read_only(folder: Path, device: str) -> tuple[float, int]:
    """Seconds to read every 2-D tensor onto the device as a scan does, no compute; bytes."""
    upload = scheduler.Uploader(torch.device(device)) if on_gpu(device) else None
    sync(device)
    t0, nbytes = time.perf_counter(), 0
    with open_source(folder) as source:
        for t in source.tensors():
            if len(t.shape) != 2:
                continue
            W = source.read(t)
            if upload is not None:
                x, _ = upload(W)
            else:
                x, _ = scheduler.stage(W, pin=False)
            nbytes += x.numel() * x.element_size()
            del x
    sync(device)
    return time.perf_counter() - t0, nbytes


def read_stage(folder: Path, device: str, out: dict[str, Any]) -> int:
    with contextlib.suppress(OSError):  # fadvise where the filesystem has a page cache
        set_page_cache(folder, warm=False)
    cold_s, nbytes = read_only(folder, device)
    set_page_cache(folder, warm=True)
    warm_s, _ = read_only(folder, device)
    gb = nbytes / 1e9
    out.update(gb=gb, cold_s=cold_s, cold_gb_per_s=gb / cold_s, warm_s=warm_s)
    out["warm_gb_per_s"] = gb / warm_s
    return nbytes


# The engine's functions each part of a scan's time is measured in (by wrapping them).
PARTS: dict[str, list[tuple[Any, str]]] = {
    "read": [(scheduler.Uploader, "__call__")],
    "w_spectrum_device": [(analysis, "gram"), (analysis, "gram_eigenvalues")],
    "trap_test": [(analysis, "trap_metrics")],
    "cpu_fits": [(analysis, "fit_power_law"), (analysis, "mp_metrics")],
}


class Profile:
    """Seconds spent in the engine's parts (`PARTS`), summed over threads, while installed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(PARTS, 0)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        saved = []
        for part, targets in PARTS.items():
            for owner, attr in targets:
                original = getattr(owner, attr, None)
                if original is None:  # the engine changed: that part is not measured
                    continue
                saved.append((owner, attr, original))
                setattr(owner, attr, self._timed(part, original))
        try:
            yield
        finally:
            for owner, attr, original in saved:
                setattr(owner, attr, original)

    def _timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[part] += time.perf_counter() - t0
                    self.calls[part] += 1

        return timed

    def shares(self) -> dict[str, Any]:
        total = sum(self.seconds.values())
        return {
            "summed_s": {k: round(v, 3) for k, v in self.seconds.items()},
            "calls": self.calls,
            "share": {k: round(v / total, 4) if total else None for k, v in self.seconds.items()},
            "note": "seconds summed over the reader thread and every worker thread; the GPU "
            "parts include waiting for the GPU; trap_test includes its CPU MP fit",
        }


def scan(folder: Path, device: str, traps: bool, streams: int, nbytes: int) -> dict[str, Any]:
    profile = Profile()
    saved_workers = scheduler.GPU_WORKERS
    scheduler.GPU_WORKERS = streams
    if on_gpu(device):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    try:
        with profile.installed():
            t0 = time.perf_counter()
            result = llm_audit.scan(folder, device=device, traps=traps)
            seconds = time.perf_counter() - t0
    finally:
        scheduler.GPU_WORKERS = saved_workers
    ok = [r for r in result.records if r["status"] == "success"]
    return {
        "traps": traps,
        "gpu_workers": streams if on_gpu(device) else None,
        "seconds": seconds,
        "engine_seconds": result.summary["seconds"],
        "gb_per_s": nbytes / 1e9 / seconds if nbytes else None,
        "layers": len(result.records),
        "analyzed": len(ok),
        "num_traps": sum(int(r.get("num_traps") or 0) for r in ok),
        "peak_gpu_gib": (
            torch.cuda.max_memory_allocated(torch.device(device)) / 2**30
            if on_gpu(device)
            else None
        ),
        "mean_alpha": result.summary.get("mean_alpha"),
        "recorded_device": result.settings.get("device"),
        "profile": profile.shares(),
    }


def equal(folder: Path, device: str, layers: str) -> dict[str, Any]:
    """The same layers on the CPU and on `device`, with traps: what must agree, per layer, and
    whether all of it did (`passed`)."""
    t0 = time.perf_counter()
    cpu = llm_audit.scan(folder, device="cpu", traps=True, layers=layers)
    cpu_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev = llm_audit.scan(folder, device=device, traps=True, layers=layers)
    dev_s = time.perf_counter() - t0
    rows = {}
    for c, d in zip(cpu.records, dev.records, strict=True):
        row: dict[str, Any] = {"status": [c["status"], d["status"]]}
        if c["status"] == d["status"] == "success":
            row["alpha_rel"] = abs(c["alpha"] - d["alpha"]) / abs(c["alpha"])
            row["xmin_rel"] = abs(c["xmin"] - d["xmin"]) / abs(c["xmin"])
            row["tail_equal"] = c["num_pl_spikes"] == d["num_pl_spikes"]
            row["lambda_max_rel"] = abs(c["lambda_max"] - d["lambda_max"]) / c["lambda_max"]
            row["traps_equal"] = all(
                c.get(k) == d.get(k) for k in ("num_traps", "rand_num_spikes", "num_shuffles")
            )
            row["max_rand_eval_rel"] = abs(c["max_rand_eval"] - d["max_rand_eval"]) / abs(
                c["max_rand_eval"]
            )
            row["ok"] = bool(
                row["alpha_rel"] <= ALPHA_RTOL
                and row["xmin_rel"] <= ALPHA_RTOL
                and row["tail_equal"]
                and row["traps_equal"]
            )
        else:
            row["ok"] = c["status"] == d["status"]
        rows[c["name"]] = row
    passed = bool(rows) and all(r["ok"] for r in rows.values())
    return {"layers": rows, "passed": passed, "cpu_s": cpu_s, "device_s": dev_s}


def weightwatcher(folder: Path, randomize: bool) -> dict[str, Any]:
    """WeightWatcher on one layer per distinct shape, extrapolated by the shape counts."""
    import numpy as np
    import weightwatcher as ww

    with open_source(folder) as source:
        matrices = [t for t in source.tensors() if len(t.shape) == 2]
        counts = Counter(t.shape for t in matrices)
        per_shape: dict[str, float] = {}
        for shape in counts:
            t = next(m for m in matrices if m.shape == shape)
            layer = torch.nn.Linear(shape[1], shape[0], bias=False)
            layer.weight.data = source.read(t).float()
            np.random.seed(0)
            t0 = time.perf_counter()
            ww.WeightWatcher(model=torch.nn.Sequential(layer)).analyze(randomize=randomize)
            per_shape["x".join(map(str, shape))] = time.perf_counter() - t0
    total = sum(per_shape["x".join(map(str, s))] * n for s, n in counts.items())
    return {"seconds_per_layer": per_shape, "extrapolated_model_seconds": total}


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if on_gpu(device) and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device found; run it on a GPU machine", file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    streams = [int(s) for s in args.streams.split(",")] if on_gpu(device) else [1]
    run_ww = args.ww if args.ww is not None else not on_gpu(device)
    check = args.check_layers or CHECK_LAYERS[args.preset]
    name = f"bench_gpu_{args.preset}" + (f"_b{args.blocks}" if args.blocks else "")
    out_dir = args.out or Path(os.environ.get("OUT") or ".")
    report = Report(
        args.json or out_dir / f"{name}.json",
        {
            "preset": args.preset,
            "blocks": args.blocks,
            "device": device,
            "argv": argv or sys.argv[1:],
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        folder = args.folder or Path(tmp)
        with report.stage("env") as out:
            out.update(environment(device))
        with report.stage("checkpoint") as out:
            out.update(checkpoint(folder, args.preset, args.blocks, args.shard_gb, device))
        if report.data["checkpoint"]["ok"]:
            nbytes = 0
            if "read" not in skip:
                with report.stage("read") as out:
                    nbytes = read_stage(folder, device, out)
            if "warmup" not in skip:
                with report.stage("warmup") as out:
                    t0 = time.perf_counter()
                    llm_audit.scan(
                        folder, device=device, traps=True, layers=r"layers\.0\.self_attn\.q_proj"
                    )
                    out["seconds"] = time.perf_counter() - t0
            if "equal" not in skip and check != "none":
                with report.stage("equal") as out:
                    out["check_layers"] = check
                    out.update(equal(folder, device, check))
                    if not out["passed"]:  # the stage fails, its rows say where
                        bad = [name for name, row in out["layers"].items() if not row["ok"]]
                        raise AssertionError(f"CPU and {device} disagree on {bad}")
            # traps first (the 60 s target is with traps), for each worker count; plain once
            runs = [] if "traps" in skip else [(True, n) for n in streams]
            runs += [] if "plain" in skip else [(False, streams[-1])]
            for traps, n in runs:
                with report.stage(f"{'traps' if traps else 'plain'}_streams{n}") as out:
                    out.update(scan(folder, device, traps, n, nbytes))
            if run_ww:
                with report.stage("weightwatcher") as out:
                    out["EXTRAPOLATED"] = True
                    out["analyze"] = weightwatcher(folder, False)
                    if args.ww_randomize:
                        out["analyze_randomize"] = weightwatcher(folder, True)
    report.data["failed"] = report.failed
    report.write()
    print(f"bench_gpu.py: wrote {report.path}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
