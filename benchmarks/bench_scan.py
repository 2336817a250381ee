"""llm-audit vs WeightWatcher 0.7.7, side by side: analysis time, layers analyzed, peak RSS, alpha.

Why: llm-audit claims to be a faster, leaner WeightWatcher that gives the same alphas. This runs
both on the same checkpoints in one go, each run in a fresh child process (see measure.py), and
prints a markdown table (and writes JSON with --json):

- MiniLM (the bundled all-MiniLM-L6-v2, 22M parameters): llm-audit without and with traps,
  WeightWatcher analyze() and analyze(randomize=True) (its counterpart of the traps).
- A Llama-shaped checkpoint with random weights (make_llama.py; preset 1b = TinyLlama-1.1B's shape,
  bf16, ~1 GB shards), generated into a temporary folder: llm-audit without and with traps,
  WeightWatcher analyze(), and analyze(randomize=True) only with --ww-randomize (it is slow there).

Times are of the analysis call alone; imports and WeightWatcher's model set-up are reported apart.
WeightWatcher runs with OPENBLAS/OMP/MKL_NUM_THREADS=1 (--ww-blas-threads): on small VMs LAPACK
with 2 threads was measured 10-80x slower than with 1, so 1 thread is its best case. llm-audit
runs in the environment as given: it sets its own threads (one layer per core, torch single-
threaded per worker). Both keep their default layer filters (WeightWatcher skips N > 50000 and
M > 15000), so the layer counts can differ; alphas are compared on the layers both analyzed.

With --float32, llm-audit also runs with `--precision float32` (its layers recomputed in float64
are counted); the default runs use the default precision (auto: float64 on a CPU).

Usage: python benchmarks/bench_scan.py [--preset 1b|tiny] [--blocks N] [--ww-randomize]
                                       [--float32] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import make_llama
from measure import Run, run_case, set_page_cache

LLM, LLM_TRAPS = "llm-audit", "llm-audit --traps"
LLM32, LLM32_TRAPS = "llm-audit --precision float32", "llm-audit --traps --precision float32"
WW, WW_RAND = "WW analyze()", "WW analyze(randomize=True)"
PAIRS = [
    (LLM, WW, "plain"),
    (LLM_TRAPS, WW_RAND, "randomized (traps)"),
    (LLM32, WW, "plain, float32"),
    (LLM32_TRAPS, WW_RAND, "randomized (traps), float32"),
]


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--preset", choices=sorted(make_llama.PRESETS), default="1b")
    p.add_argument("--dtype", choices=sorted(make_llama.DTYPES), default="bf16")
    p.add_argument("--blocks", type=int, help="override the preset's number of blocks")
    p.add_argument("--shard-gb", type=float, default=1.0)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="use (or generate and keep) the Llama checkpoint here instead of a temp dir",
    )
    p.add_argument(
        "--workdir", type=Path, help="where the temporary checkpoint goes (default $TMPDIR)"
    )
    p.add_argument("--models", default="minilm,llama", help="comma list of minilm, llama")
    p.add_argument("--ww-randomize", action="store_true", help="also WW randomize=True on Llama")
    p.add_argument(
        "--float32", action="store_true", help="also llm-audit --precision float32 (default: auto)"
    )
    p.add_argument("--ww-blas-threads", type=int, default=1)
    p.add_argument(
        "--cache",
        choices=("warm", "cold"),
        default="warm",
        help="page cache before each run: shards read once (warm) or evicted (cold)",
    )
    p.add_argument(
        "--timeout", type=float, help="seconds per run (a run past it is reported failed)"
    )
    p.add_argument(
        "--repeat",
        type=positive,
        default=1,
        help="run every case this many times and report its median run (single runs of both "
        "tools vary by about 10%% on a shared 2-core VM)",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args()


def machine() -> dict[str, Any]:
    """Where the numbers come from: CPU, memory, versions (read without importing the tools)."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "?")
    mem_kb = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
    versions = {}
    for package in ("llm-audit", "weightwatcher", "torch", "numpy", "scipy", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "versions": versions,
    }


def bundled_minilm() -> Path:
    from llm_audit.sources import bundled_model_path

    return bundled_model_path()


def run_model(
    model: str, folder: Path, cases: list[tuple[str, str, dict[str, Any]]], args: argparse.Namespace
) -> list[tuple[str, Run]]:
    runs = []
    for label, tool, options in cases:
        threads = args.ww_blas_threads if tool == "ww" else None
        attempts = []
        for _ in range(args.repeat):
            set_page_cache(folder, warm=args.cache == "warm")
            attempts.append(
                run_case(label, tool, folder, blas_threads=threads, timeout=args.timeout, **options)
            )
        done = sorted((r for r in attempts if r.error is None), key=lambda r: r.analysis_s)
        run = done[len(done) // 2] if done else attempts[0]  # the median run stands for the case
        if args.repeat > 1:
            run.repeat_s = [r.analysis_s for r in attempts]
        status = run.error or f"{run.analysis_s:.2f} s, {run.peak_rss_mib:.0f} MiB"
        print(f"  {model:8} {label:28} {status}", file=sys.stderr, flush=True)
        runs.append((model, run))
    return runs


def cases_for(model: str, args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        (LLM, "llm-audit", {"traps": False}),
        (LLM_TRAPS, "llm-audit", {"traps": True}),
        (WW, "ww", {"randomize": False}),
    ]
    if args.float32:
        cases[2:2] = [
            (LLM32, "llm-audit", {"traps": False, "precision": "float32"}),
            (LLM32_TRAPS, "llm-audit", {"traps": True, "precision": "float32"}),
        ]
    if model == "minilm" or args.ww_randomize:
        cases.append((WW_RAND, "ww", {"randomize": True}))
    return cases


def alpha_diff(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Max |alpha_a - alpha_b| over the layers both have a finite alpha for."""
    common = sorted(n for n in a.keys() & b.keys() if math.isfinite(a[n]) and math.isfinite(b[n]))
    if not common:
        return {"common": 0, "max_abs": None, "worst": None, "over_0.01": 0}
    diffs = {n: abs(a[n] - b[n]) for n in common}
    worst = max(diffs, key=lambda n: diffs[n])
    return {
        "common": len(common),
        "max_abs": diffs[worst],
        "worst": worst,
        "over_0.01": sum(d > 0.01 for d in diffs.values()),
    }


def compare(runs: list[tuple[str, Run]]) -> list[dict[str, Any]]:
    """WW/llm-audit ratios of time and peak RSS, and the alpha check, per model and pair."""
    by_key = {(model, run.label): run for model, run in runs if run.error is None}
    out = []
    for model in dict.fromkeys(m for m, _ in runs):
        for ours_label, ww_label, what in PAIRS:
            ours, ww = by_key.get((model, ours_label)), by_key.get((model, ww_label))
            if ours is None or ww is None:
                continue
            out.append(
                {
                    "model": model,
                    "comparison": what,
                    "time_ratio": ww.analysis_s / ours.analysis_s,
                    "rss_ratio": ww.peak_rss_mib / ours.peak_rss_mib,
                    "layers": [ours.layers_analyzed, ww.layers_analyzed],
                    "alpha": alpha_diff(ours.alphas, ww.alphas),
                }
            )
    return out


def markdown(runs: list[tuple[str, Run]], comparisons: list[dict[str, Any]]) -> str:
    lines = [
        "| model | run | layers | analysis s | CPU s | import + load s | peak RSS MiB "
        "| RssAnon / RssFile at peak MiB | before analysis MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, r in runs:
        if r.error:
            lines.append(f"| {model} | {r.label} | failed: {r.error} | | | | | | |")
            continue
        recomputed = f" ({r.recomputed_float64} in float64)" if r.options.get("precision") else ""
        lines.append(
            f"| {model} | {r.label} | {r.layers_analyzed}{recomputed} "
            f"| {r.analysis_s:.2f}{_spread(r)} "
            f"| {r.cpu_s:.1f} "
            f"| {r.import_s:.1f} + {r.load_s:.1f} | {r.peak_rss_mib:.0f} "
            f"| {r.anon_at_peak_mib:.0f} / {r.file_at_peak_mib:.0f} | {r.rss_before_mib:.0f} |"
        )
    lines += [
        "",
        "| model | comparison | time WW / llm-audit | peak RSS WW / llm-audit "
        "| layers llm-audit / WW | max abs Δalpha (common layers) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for c in comparisons:
        a = c["alpha"]
        alpha = (
            "-"
            if a["max_abs"] is None
            else (
                f"{a['max_abs']:.2g} on {a['common']} layers ({a['over_0.01']} over 0.01; "
                f"worst {a['worst']})"
            )
        )
        lines.append(
            f"| {c['model']} | {c['comparison']} | {c['time_ratio']:.1f}x | {c['rss_ratio']:.2f}x "
            f"| {c['layers'][0]} / {c['layers'][1]} | {alpha} |"
        )
    return "\n".join(lines)


def _spread(r: Run) -> str:
    """The other repeats' times, when the case was run more than once."""
    return f" (of {', '.join(f'{t:.2f}' for t in sorted(r.repeat_s))})" if r.repeat_s else ""


def llama_checkpoint(args: argparse.Namespace, tmp: str) -> tuple[Path, dict[str, Any]]:
    folder = args.checkpoint or Path(tmp) / f"llama-{args.preset}"
    index = folder / "model.safetensors.index.json"
    if args.checkpoint and index.exists():
        return folder, {"folder": str(folder), "reused": True}
    print(f"generating the {args.preset} checkpoint in {folder} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    info = make_llama.write_checkpoint(
        folder, args.preset, dtype=args.dtype, blocks=args.blocks, shard_gb=args.shard_gb
    )
    info["generate_s"] = time.perf_counter() - start
    return folder, info


def main() -> None:
    args = parse_args()
    models = args.models.split(",")
    env = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}}
    runs: list[tuple[str, Run]] = []
    checkpoint: dict[str, Any] | None = None
    if "minilm" in models:
        runs += run_model("minilm", bundled_minilm(), cases_for("minilm", args), args)
    if "llama" in models:
        with tempfile.TemporaryDirectory(prefix="bench-llama-", dir=args.workdir) as tmp:
            folder, checkpoint = llama_checkpoint(args, tmp)
            name = f"llama-{args.preset}"
            runs += run_model(name, folder, cases_for("llama", args), args)
    comparisons = compare(runs)

    m = env["machine"]
    print(f"# llm-audit vs WeightWatcher {m['versions']['weightwatcher']}\n")
    print(
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; python {m['python']}, "
        f"torch {m['versions']['torch']}, llm-audit {m['versions']['llm-audit']}. "
        f"WeightWatcher with OPENBLAS/OMP/MKL_NUM_THREADS={args.ww_blas_threads}; llm-audit "
        f"with its own threading. Page cache: {args.cache}. Times: the analysis call only."
    )
    if checkpoint:
        print(f"\nLlama checkpoint: {json.dumps(checkpoint)}")
    print()
    print(markdown(runs, comparisons))
    if args.json:
        data = {
            **env,
            "checkpoint": checkpoint,
            "comparisons": comparisons,
            "runs": [{"model": model, **r.summary()} for model, r in runs],
        }
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
