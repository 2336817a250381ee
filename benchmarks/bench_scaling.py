"""Scan time against parameter count at fixed shapes, and peak memory, on the CPU.

Why: a streaming scan should cost the same per matrix of a given shape wherever the matrix sits, so
doubling the layer stack of a model should double the blocks' share of the scan time, and peak
memory, set by the largest matrices in flight, should not grow at all. This writes Llama-shaped
checkpoints (make_llama.py) with 1, 2 and 4 copies of a base stack of blocks (same hidden size,
heads, vocab; only the number of blocks changes), scans each in a fresh child process
(measure.py: wall and CPU seconds of the scan call, VmHWM), and fits time = a + b * parameters.

The embedding and head are the same in every checkpoint, so parameters do not scale exactly with
the copies; the fit's slope b (seconds per billion parameters added) and its intercept a say how
much is per-parameter work and how much is fixed. The machine's load average is recorded around
every run, since other work on the same cores slows a run down; CPU seconds (user + system of
the scanning process) are reported and fitted too, being far less sensitive to that load than
wall time.

Usage: python benchmarks/bench_scaling.py [--preset 1b] [--base-blocks 2] [--copies 1,2,4]
       [--traps off|on|off,on] [--repeats 2] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import make_llama
from measure import Run, run_case, set_page_cache


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--preset", choices=sorted(make_llama.PRESETS), default="1b")
    p.add_argument("--dtype", choices=sorted(make_llama.DTYPES), default="bf16")
    p.add_argument("--base-blocks", type=int, default=2, help="blocks in one copy of the stack")
    p.add_argument("--copies", default="1,2,4", help="comma list: copies of the base stack")
    p.add_argument("--traps", default="off", help="comma list of off, on")
    p.add_argument("--repeats", type=int, default=2, help="runs per case; the fastest is used")
    p.add_argument("--shard-gb", type=float, default=0.5)
    p.add_argument("--workdir", type=Path, help="where the checkpoints go (default $TMPDIR)")
    p.add_argument("--timeout", type=float, help="seconds per run")
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument("--markdown", type=Path, help="write the report here too")
    return p.parse_args()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, largest |residual| / y)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    worst = max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys, strict=True))
    return a, b, worst


def measure_once(args: argparse.Namespace, folder: Path, traps: bool) -> dict[str, Any]:
    """One run (warm page cache), with the load average around it."""
    set_page_cache(folder, warm=True)
    before = loadavg()
    run: Run = run_case("llm-audit", "llm-audit", folder, traps=traps, timeout=args.timeout)
    if run.error:
        raise SystemExit(f"{folder}: {run.error}")
    return {**run.summary(), "load_before": before, "load_after": loadavg()}


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, plus every run's wall and CPU seconds."""
    best = min(runs, key=lambda r: r["analysis_s"])
    return {
        **best,
        "all_analysis_s": [r["analysis_s"] for r in runs],
        "min_cpu_s": min(r["cpu_s"] for r in runs),
        "runs": runs,
    }


def report(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        "# Scan time and peak memory against parameter count (CPU)",
        "",
        f"Machine: {header['machine']}. Date: {header['date']}. Command: `{header['command']}`.",
        f"Load average (1/5/15 min) at start: {header['load_start']}, at end: "
        f"{header['load_end']}; per run below (1-min, before/after).",
        "",
        f"Checkpoints: `{header['preset']}` shape ({header['shape']}), {header['dtype']}, "
        f"{header['base_blocks']} blocks per copy; embedding and head identical in all. "
        f"Times: the `llm_audit.scan` call alone, fastest of {header['repeats']} runs, warm page "
        "cache; peak RSS is the child's VmHWM.",
        "",
        "| traps | copies | blocks | parameters (M) | layers | scan s, fastest (all runs) "
        "| s per B params | CPU s (fewest) | CPU s per B params | time / 1 copy | CPU / 1 copy "
        "| params / 1 copy | peak RSS MiB (all runs) | RssAnon at peak MiB | load before/after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    fits = []
    for traps in dict.fromkeys(r["traps"] for r in rows):
        case = [r for r in rows if r["traps"] == traps]
        first = case[0]
        for r in case:
            every = ", ".join(f"{s:.1f}" for s in r["all_analysis_s"])
            rss = ", ".join(f"{run['peak_rss_mib']:.0f}" for run in r["runs"])
            loads = " · ".join(
                f"{run['load_before'][0]:.1f}/{run['load_after'][0]:.1f}" for run in r["runs"]
            )
            lines.append(
                f"| {traps} | {r['copies']} | {r['blocks']} | {r['params'] / 1e6:,.0f} "
                f"| {r['layers_analyzed']} | {r['analysis_s']:.1f} ({every}) "
                f"| {r['analysis_s'] / (r['params'] / 1e9):.1f} | {r['min_cpu_s']:.1f} "
                f"| {r['min_cpu_s'] / (r['params'] / 1e9):.1f} "
                f"| {r['analysis_s'] / first['analysis_s']:.2f} "
                f"| {r['min_cpu_s'] / first['min_cpu_s']:.2f} "
                f"| {r['params'] / first['params']:.2f} "
                f"| {max(run['peak_rss_mib'] for run in r['runs']):.0f} ({rss}) "
                f"| {r['anon_at_peak_mib']:.0f} | {loads} |"
            )
        params = [r["params"] / 1e9 for r in case]
        a, b, worst = fit_line(params, [r["analysis_s"] for r in case])
        ca, cb, cworst = fit_line(params, [r["min_cpu_s"] for r in case])
        rss = [run["peak_rss_mib"] for r in case for run in r["runs"]]
        fits.append(
            f"- traps {traps}: wall time = {a:.1f} s + {b:.1f} s per billion parameters (largest "
            f"residual {worst:.1%}); CPU time = {ca:.1f} s + {cb:.1f} s per billion parameters "
            f"(largest residual {cworst:.1%}); peak RSS over every run {min(rss):.0f}–"
            f"{max(rss):.0f} MiB while parameters grow {params[-1] / params[0]:.2f}x."
        )
    return "\n".join([*lines, "", "Linear fit over the copies (least squares):", "", *fits])


def main() -> None:
    args = parse_args()
    copies = [int(c) for c in args.copies.split(",")]
    traps_list = [t.strip() == "on" for t in args.traps.split(",")]
    shape = make_llama.PRESETS[args.preset]
    header = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/bench_scaling.py " + " ".join(sys.argv[1:]),
        "load_start": "/".join(f"{x:.2f}" for x in loadavg()),
        "preset": args.preset,
        "shape": f"hidden {shape.hidden_size}, intermediate {shape.intermediate_size}, "
        f"{shape.num_attention_heads} heads / {shape.num_key_value_heads} kv, "
        f"vocab {shape.vocab_size}",
        "dtype": args.dtype,
        "base_blocks": args.base_blocks,
        "repeats": args.repeats,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-", dir=args.workdir) as tmp:
        folders = {}
        for c in copies:
            folder = Path(tmp) / f"copies-{c}"
            info = make_llama.write_checkpoint(
                folder,
                args.preset,
                dtype=args.dtype,
                blocks=args.base_blocks * c,
                shard_gb=args.shard_gb,
            )
            folders[c] = (folder, info)
            print(f"wrote {folder}: {info['num_parameters'] / 1e6:,.0f}M", file=sys.stderr)
        # Repeats outermost: a change of load on the shared machine hits every size alike.
        runs: dict[tuple[bool, int], list[dict[str, Any]]] = {}
        for _ in range(args.repeats):
            for traps in traps_list:
                for c in copies:
                    run = measure_once(args, folders[c][0], traps)
                    runs.setdefault((traps, c), []).append(run)
                    print(
                        f"  traps {'on' if traps else 'off':3} copies {c}: "
                        f"{run['analysis_s']:.1f} s, CPU {run['cpu_s']:.1f} s, "
                        f"{run['peak_rss_mib']:.0f} MiB, load {run['load_before'][0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
        for traps in traps_list:
            for c in copies:
                info = folders[c][1]
                rows.append(
                    {
                        "traps": "on" if traps else "off",
                        "copies": c,
                        "blocks": args.base_blocks * c,
                        "params": info["num_parameters"],
                        "bytes": info["bytes"],
                        **best_of(runs[(traps, c)]),
                    }
                )
    header["load_end"] = "/".join(f"{x:.2f}" for x in loadavg())
    text = report(rows, header)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"settings": header, "runs": rows}, indent=1) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
