"""A 7B audit on one GPU: seconds, GB/s read, I/O versus compute, and WeightWatcher for scale.

Why: the target is a Llama-7B audit, traps included, in 60 s or less on one H200. This script is
prepared to run as is on such a machine (nothing here has a GPU):

1. Synthesize a Llama-2-7B-shaped checkpoint (make_llama.py preset `7b`: hidden 4096, intermediate
   11008, 32 blocks, vocab 32000, bf16, ~`--shard-gb` shards, 13.5 GB) on the machine's disk, unless
   `--folder` already holds one.
2. Time the reads alone: every weight matrix read and copied to the GPU, no compute, once from a
   cold page cache (shards evicted) and once warm.
3. Scan on the GPU (warm cache) without and with traps: seconds and GB/s. I/O share = warm read
   seconds / scan seconds (an upper bound: the scan overlaps reading with compute); compute =
   scan seconds - read seconds when that is positive.
4. WeightWatcher 0.7.7 `analyze()` (and `randomize=True`, its traps) on one layer of each distinct
   shape, timed per layer and EXTRAPOLATED to the whole model by counting layers of each shape.

Usage: python benchmarks/bench_gpu.py [--folder DIR] [--shard-gb 2] [--device cuda]
       [--no-ww] [--ww-randomize] [--json PATH]
Exits 2 with one line when no CUDA device is present. `--device cpu --preset tiny` is a smoke run
of the script itself (seconds), not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import make_llama
import torch
from measure import set_page_cache

import llm_audit
from llm_audit.sources import open_source


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--folder", type=Path, help="checkpoint folder (default: a temporary one)")
    p.add_argument("--shard-gb", type=float, default=2.0, help="shard size when writing (GB)")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: a smoke run only)")
    p.add_argument("--preset", default="7b", choices=sorted(make_llama.PRESETS), help="shape")
    p.add_argument("--no-ww", action="store_true", help="skip the WeightWatcher comparison")
    p.add_argument("--ww-randomize", action="store_true", help="also time analyze(randomize=True)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    return p.parse_args()


def checkpoint(folder: Path, preset: str, shard_gb: float) -> dict[str, Any]:
    if (folder / "model.safetensors.index.json").exists():
        print(f"using the checkpoint in {folder}", file=sys.stderr)
        return {"folder": str(folder), "written": False}
    t0 = time.perf_counter()
    info = make_llama.write_checkpoint(folder, preset, dtype="bf16", shard_gb=shard_gb)
    return {**info, "written": True, "write_s": time.perf_counter() - t0}


def read_only(folder: Path, device: str) -> tuple[float, int]:
    """Seconds to read every 2-D tensor onto the device (no compute), and the bytes read."""
    sync(device)
    t0, nbytes = time.perf_counter(), 0
    with open_source(folder) as source:
        for t in source.tensors():
            if len(t.shape) == 2:
                x = source.read(t).to(device, non_blocking=True)
                nbytes += x.numel() * x.element_size()
                del x
    sync(device)
    return time.perf_counter() - t0, nbytes


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if on_gpu(device):
        torch.cuda.synchronize()


def scan(folder: Path, device: str, traps: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = llm_audit.scan(folder, device=device, traps=traps)
    seconds = time.perf_counter() - t0
    ok = [r for r in result.records if r["status"] == "success"]
    return {
        "seconds": seconds,
        "engine_seconds": result.summary["seconds"],
        "layers": len(result.records),
        "analyzed": len(ok),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu(device) else None,
        "mean_alpha": result.summary["mean_alpha"],
    }


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
            print(f"  ww {t.name} {shape}: {per_shape['x'.join(map(str, shape))]:.1f} s")
    total = sum(per_shape["x".join(map(str, s))] * n for s, n in counts.items())
    return {"seconds_per_layer": per_shape, "extrapolated_model_seconds": total}


def main() -> None:
    args = parse_args()
    device = args.device
    if on_gpu(device) and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device found; run it on a GPU machine", file=sys.stderr)
        sys.exit(2)
    gpu = torch.cuda.get_device_name(torch.device(device)) if on_gpu(device) else None
    report: dict[str, Any] = {"gpu": gpu, "preset": args.preset}
    with tempfile.TemporaryDirectory(prefix="llama7b-") as tmp:
        folder = args.folder or Path(tmp)
        report["checkpoint"] = checkpoint(folder, args.preset, args.shard_gb)
        set_page_cache(folder, warm=False)
        cold_s, nbytes = read_only(folder, device)
        set_page_cache(folder, warm=True)
        warm_s, _ = read_only(folder, device)
        report["read"] = {
            "gb": nbytes / 1e9,
            "cold_s": cold_s,
            "cold_gb_per_s": nbytes / 1e9 / cold_s,
            "warm_s": warm_s,
            "warm_gb_per_s": nbytes / 1e9 / warm_s,
        }
        for traps in (False, True):
            if on_gpu(device):
                torch.cuda.reset_peak_memory_stats()
            run = scan(folder, device, traps)
            run["gb_per_s"] = nbytes / 1e9 / run["seconds"]
            run["io_share_upper_bound"] = min(1.0, warm_s / run["seconds"])
            run["compute_s_estimate"] = max(0.0, run["seconds"] - warm_s)
            report["traps" if traps else "no_traps"] = run
            print(f"scan traps={traps}: {json.dumps(run)}", file=sys.stderr)
        if not args.no_ww:
            report["weightwatcher_EXTRAPOLATED"] = {"analyze": weightwatcher(folder, False)}
            if args.ww_randomize:
                report["weightwatcher_EXTRAPOLATED"]["analyze_randomize"] = weightwatcher(
                    folder, True
                )
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
