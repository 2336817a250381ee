"""Peak memory of llm-audit on a checkpoint larger than its memory target.

Why: llm-audit streams a model tensor by tensor from memory-mapped shards and drops each shard's map
after its last tensor, so its peak memory should be set by the largest matrices in flight, not by
the model. This checks that on a Llama-shaped checkpoint of >= 4 GB (default: the 1b preset in f32,
4.4 GB in ~1 GB shards, see make_llama.py), scanning it with traps off and on, each in a fresh child
process whose /proc/<pid>/status is sampled every 50 ms (see measure.py).

Read the numbers as: peak RSS (VmHWM, exact) = RssAnon (what llm-audit holds: float64 copies,
Gram matrices, eigenvalues, plus torch's own ~200 MiB) + RssFile (shard pages mapped in, which the
kernel can drop under pressure, plus shared libraries). The target is peak RSS < 2 GiB.

Two more cases put one vocabulary matrix in front (issue 13): `--case vocabulary`, a Llama-3-shaped
bf16 embedding (128256 x 4096, 1.05 GB) plus one 4096² layer, target peak RSS 2.0 GB with traps and
traps at most 1.6x the time without; `--case gguf`, a Gemma-3-shaped 262144 x 640 embedding
written by the `gguf` package (Q8_0 or Q4_0), target 1.2 GB with traps.
`--case mxfp4` (issue 17): the same 128256 x 4096 embedding stored as MXFP4 (`_blocks`/`_scales`,
0.28 GB, written by tests/quant_writers.py) plus one 4096² bf16 layer, target 2.0 GB with traps;
its float32 copy alone would be 2.1 GB, so rows and shuffled elements must be decoded in place.

Usage: python benchmarks/bench_memory.py [--case llama|vocabulary|gguf|mxfp4] [--dtype f32]
       [--traps off,on] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import make_llama
import torch
from measure import Run, checkpoint_files, run_case, set_page_cache

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
CASE_TARGETS_GB = {"llama": 2048 * 2**20 / 1e9, "vocabulary": 2.0, "gguf": 1.2, "mxfp4": 2.0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--case", choices=sorted(CASE_TARGETS_GB), default="llama")
    p.add_argument("--gguf-type", choices=("Q8_0", "Q4_0"), default="Q8_0")
    p.add_argument("--preset", choices=sorted(make_llama.PRESETS), default="1b")
    p.add_argument("--dtype", choices=sorted(make_llama.DTYPES), default="f32")
    p.add_argument("--blocks", type=int, help="override the preset's number of blocks")
    p.add_argument("--shard-gb", type=float, default=1.0)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="use (or generate and keep) the checkpoint here instead of a temp dir",
    )
    p.add_argument(
        "--workdir", type=Path, help="where the temporary checkpoint goes (default $TMPDIR)"
    )
    p.add_argument("--traps", default="off,on", help="comma list of off, on")
    p.add_argument("--target-mib", type=float, help="peak RSS target (MiB; default per case)")
    p.add_argument(
        "--cache",
        choices=("warm", "cold"),
        default="warm",
        help="page cache before each run: shards read once (warm) or evicted (cold)",
    )
    p.add_argument("--timeout", type=float, help="seconds per run")
    p.add_argument("--json", type=Path, help="write results and the memory timeline here")
    return p.parse_args()


def largest_matrix(folder: Path) -> dict[str, Any]:
    """The biggest 2-D tensor in the headers, and its size as stored and as float64."""
    best: dict[str, Any] = {"numel": 0}
    for name, shape, nbytes in _matrices(folder):
        if shape[0] * shape[1] > best["numel"]:
            best = {
                "name": name,
                "shape": shape,
                "numel": shape[0] * shape[1],
                "stored_mib": nbytes / 2**20,
                "float64_mib": shape[0] * shape[1] * 8 / 2**20,
            }
    return best


def _matrices(folder: Path) -> list[tuple[str, list[int], int]]:
    """(name, shape, stored bytes) of every 2-D tensor of a Hub folder or a GGUF file."""
    if folder.suffix == ".gguf":
        import gguf

        tensors = gguf.GGUFReader(folder).tensors
        return [
            (t.name, t.shape.tolist()[::-1], int(t.n_bytes)) for t in tensors if len(t.shape) == 2
        ]
    out = []
    for path in checkpoint_files(folder):
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            shape = entry.get("shape", []) if isinstance(entry, dict) else []
            if len(shape) == 2:
                out.append((name, shape, shape[0] * shape[1] * DTYPE_BYTES.get(entry["dtype"], 0)))
    return out


def checkpoint(args: argparse.Namespace, tmp: str) -> tuple[Path, dict[str, Any]]:
    default = {
        "llama": f"llama-{args.preset}-{args.dtype}",
        "vocabulary": "vocabulary-128256x4096-bf16",
        "gguf": f"vocabulary-262144x640-{args.gguf_type}.gguf",
        "mxfp4": "vocabulary-128256x4096-mxfp4",
    }[args.case]
    folder = args.checkpoint or Path(tmp) / default
    if args.checkpoint and folder.exists() and any(checkpoint_files(folder)):
        info: dict[str, Any] = {"folder": str(folder), "reused": True}
    else:
        print(f"generating {folder} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if args.case == "vocabulary":
            info = {"folder": str(make_llama.write_large_vocabulary(folder))}
        elif args.case == "mxfp4":
            info = {"folder": str(write_mxfp4_vocabulary(folder))}
        elif args.case == "gguf":
            info = {"folder": str(make_llama.write_gguf_vocabulary(folder, qtype=args.gguf_type))}
        else:
            info = make_llama.write_checkpoint(
                folder, args.preset, dtype=args.dtype, blocks=args.blocks, shard_gb=args.shard_gb
            )
        info["generate_s"] = time.perf_counter() - start
    files = checkpoint_files(folder)
    info["num_files"] = len(files)
    info["bytes_on_disk"] = sum(f.stat().st_size for f in files)
    info["largest_shard_mib"] = max(f.stat().st_size for f in files) / 2**20
    info["largest_matrix"] = largest_matrix(folder)
    return folder, info


def write_mxfp4_vocabulary(folder: Path, *, vocab: int = 128_256, hidden: int = 4096) -> Path:
    """A Llama-3-shaped embedding stored as MXFP4, quantized 2048 rows at a time from N(0, 0.02²),
    and one hidden x hidden bf16 layer, with a config.json that names the quantization."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests/
    from safetensors.torch import save_file

    from tests.quant_writers import mxfp4

    g = torch.Generator().manual_seed(0)
    blocks = torch.empty(vocab, hidden // 32, 16, dtype=torch.uint8)
    scales = torch.empty(vocab, hidden // 32, dtype=torch.uint8)
    for start in range(0, vocab, 2048):
        stop = min(vocab, start + 2048)
        blocks[start:stop], scales[start:stop], _ = mxfp4(
            torch.randn(stop - start, hidden, generator=g) * 0.02
        )
    folder.mkdir(parents=True, exist_ok=True)
    square = (torch.randn(hidden, hidden, generator=g) * 0.02).to(torch.bfloat16)
    tensors = {
        "model.embed_tokens.weight_blocks": blocks,
        "model.embed_tokens.weight_scales": scales,
        "model.layers.0.self_attn.o_proj.weight": square,
    }
    save_file(tensors, folder / "model.safetensors")
    config = {"model_type": "llama", "quantization_config": {"quant_method": "mxfp4"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def report(runs: list[Run], info: dict[str, Any], target: float) -> str:
    gb = info["bytes_on_disk"] / 1e9
    big = info["largest_matrix"]
    lines = [
        f"Checkpoint: {gb:.2f} GB in {info['num_files']} shards "
        f"(largest {info['largest_shard_mib']:.0f} MiB); largest matrix {big['name']} "
        f"{big['shape']}: {big['stored_mib']:.0f} MiB stored, "
        f"{big['float64_mib']:.0f} MiB as float64.",
        "",
        "| run | layers | analysis s | peak RSS MiB (VmHWM) | RssAnon / RssFile at peak "
        "| peak RssAnon | peak RssFile | before scan: anon / file | peak RSS / checkpoint "
        f"| < {target:.0f} MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    done = {r.options["traps"]: r for r in runs if not r.error}
    if len(done) == 2:
        ratio = done[True].analysis_s / done[False].analysis_s
        lines.insert(1, f"Traps take {ratio:.2f}x the time of the same scan without them.")
    for r in runs:
        if r.error:
            lines.append(f"| {r.label} | failed: {r.error} | | | | | | | | |")
            continue
        ok = "yes" if r.peak_rss_mib < target else "**NO**"
        lines.append(
            f"| {r.label} | {r.layers_analyzed} | {r.analysis_s:.1f} | {r.peak_rss_mib:.0f} "
            f"| {r.anon_at_peak_mib:.0f} / {r.file_at_peak_mib:.0f} | {r.peak_anon_mib:.0f} "
            f"| {r.peak_file_mib:.0f} | {r.anon_before_mib:.0f} / {r.file_before_mib:.0f} "
            f"| {r.peak_rss_mib * 2**20 / info['bytes_on_disk']:.2f} | {ok} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir=args.workdir) as tmp:
        folder, info = checkpoint(args, tmp)
        if args.case == "llama" and info["bytes_on_disk"] < 4e9:
            print(
                f"note: the checkpoint is {info['bytes_on_disk'] / 1e9:.2f} GB, under the 4 GB "
                "this benchmark is meant for (a smoke run?)",
                file=sys.stderr,
            )
        for traps in args.traps.split(","):
            set_page_cache(folder, warm=args.cache == "warm")
            label = "llm-audit --traps" if traps == "on" else "llm-audit --no-traps"
            run = run_case(label, "llm-audit", folder, traps=traps == "on", timeout=args.timeout)
            status = run.error or f"{run.analysis_s:.1f} s, {run.peak_rss_mib:.0f} MiB"
            print(f"  {label:22} {status}", file=sys.stderr, flush=True)
            runs.append(run)
    print("# llm-audit peak memory\n")
    print(f"Page cache: {args.cache}; /proc/<pid>/status sampled every 50 ms; MiB = 2^20 bytes.\n")
    target = args.target_mib or CASE_TARGETS_GB[args.case] * 1e9 / 2**20
    print(report(runs, info, target))
    if args.json:
        data = {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "checkpoint": info,
            "runs": [{**r.summary(), "samples_t_rss_anon_file_kb": r.samples} for r in runs],
        }
        args.json.write_text(json.dumps(data) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
