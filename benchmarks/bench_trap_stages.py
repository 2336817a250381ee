"""Where the trap test's time goes on one large matrix, stage by stage, against the plain Gram.

Why: the trap test's cost over a plain scan has a floor set by the machine: one float32 Gram of the
shuffled matrix (a GEMM at the CPU's float32 rate) and one random read per element (π, then a gather
from the memory map, at memory latency). This times each stage over a sample of row blocks, as
`traps.shuffled_gram` runs them on `--threads` threads, and extrapolates to the whole matrix; the
plain float64 Gram of W is timed over the same rows, and the M×M eigen-steps once each.

Usage: python benchmarks/bench_trap_stages.py CHECKPOINT.safetensors [--tensor NAME]
           [--blocks 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors import safe_open

from llm_audit.spectral import traps
from llm_audit.spectral.esd import CHUNK_BYTES, GramSum, as_lazy, torch_threads
from llm_audit.spectral.shuffle import Permutation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--tensor", help="default: the largest 2-D tensor")
    p.add_argument("--blocks", type=int, default=32, help="row blocks of the shuffle sampled")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    with safe_open(str(args.checkpoint), "pt") as f:
        names = f.keys()
        name = args.tensor or max(
            (k for k in names if len(f.get_slice(k).get_shape()) == 2),
            key=lambda k: torch.Size(f.get_slice(k).get_shape()).numel(),
        )
        W = f.get_tensor(name)  # a view of the memory map: pages come in as the gather reads them
    N, M = max(W.shape), min(W.shape)
    lazy = as_lazy(W if W.shape[0] >= W.shape[1] else W.T)
    permutation, take = Permutation(N * M, 1), lazy.gatherer()
    step = max(1, traps.SHUFFLE_BLOCK_BYTES // (4 * M))
    rows = min(N, args.blocks * step)
    permutation.block(0, min(N * M, 2**22), threads=args.threads)  # tables and pages warmed
    times = dict.fromkeys(["pi", "pi_and_gather", "gram_f32", "plain_gram_f64"], 0.0)
    shuffled = GramSum(M, (), torch.float32, torch.device("cpu"))
    for start in range(0, rows, step):
        block = torch.empty(step * M)
        t = time.perf_counter()
        permutation.block(start * M, (start + step) * M, threads=args.threads)
        times["pi"] += time.perf_counter() - t
        t = time.perf_counter()
        permutation.gather(take, start * M, block, threads=args.threads)
        times["pi_and_gather"] += time.perf_counter() - t
        with torch_threads(args.threads):
            t = time.perf_counter()
            shuffled.add(block.reshape(step, M))
            times["gram_f32"] += time.perf_counter() - t
    plain = GramSum(M, (), torch.float64, torch.device("cpu"))
    plain_step = max(1, CHUNK_BYTES // (8 * M))
    with torch_threads(args.threads):
        for start in range(0, rows, plain_step):
            t = time.perf_counter()
            plain.add(lazy.rows(start, min(rows, start + plain_step), torch.float64))
            times["plain_gram_f64"] += time.perf_counter() - t
    scale = N / rows
    G = plain.result()
    eigen = {}
    for label, run in (
        ("eigvalsh float64 (W's spectrum)", lambda: torch.linalg.eigvalsh(G)),
        ("eigvalsh float32 (shuffled spectrum)", lambda: torch.linalg.eigvalsh(G.float())),
        ("Cholesky float64 (trap-free count)", lambda: torch.linalg.cholesky_ex(G)),
    ):
        t = time.perf_counter()
        run()
        eigen[label] = time.perf_counter() - t
    print(f"{name} {tuple(W.shape)} {W.dtype}; {rows} of {N} rows, {args.threads} threads\n")
    print("| stage | whole matrix s |\n|---|---:|")
    print(f"| plain: float64 Gram of W | {times['plain_gram_f64'] * scale:.1f} |")
    print(f"| traps: π alone | {times['pi'] * scale:.1f} |")
    print(f"| traps: π and the gather from the map | {times['pi_and_gather'] * scale:.1f} |")
    print(f"| traps: float32 Gram of the shuffle | {times['gram_f32'] * scale:.1f} |")
    for label, seconds in eigen.items():
        print(f"| {label}, one thread | {seconds:.1f} |")


if __name__ == "__main__":
    main()
