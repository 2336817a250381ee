"""Peak memory of `compare` on two Llama-shaped checkpoints against a scan of one.

Why: compare streams both models in lockstep, one aligned layer at a time (the base matrix, the
other matrix and their difference), so its peak should stay close to a single scan's, never near
the size of two models. Target: compare's peak RSS within 1.2x of the scan's.

    python benchmarks/bench_compare_memory.py [--preset 1b] [--blocks N] [--traps] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from make_llama import write_checkpoint
from measure import run_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--blocks", type=int)
    parser.add_argument("--traps", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, other = Path(tmp) / "base", Path(tmp) / "other"
        info = write_checkpoint(base, args.preset, blocks=args.blocks, seed=0)
        write_checkpoint(other, args.preset, blocks=args.blocks, seed=1)
        scan = run_case("scan base", "llm-audit", base, traps=args.traps)
        both = run_case("compare base other", "compare", Path(f"{base},{other}"), traps=args.traps)
    rows = [scan, both]
    print(f"checkpoints: 2 x {info['bytes'] / 1e9:.2f} GB ({args.preset}, blocks {args.blocks})\n")
    print("| run | analysis s | peak RSS MiB | RssAnon / RssFile at peak MiB | error |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r.label} | {r.analysis_s:.1f} | {r.peak_rss_mib:.0f} | "
            f"{r.anon_at_peak_mib:.0f} / {r.file_at_peak_mib:.0f} | {r.error or ''} |"
        )
    ratio = both.peak_rss_mib / scan.peak_rss_mib if scan.peak_rss_mib else float("nan")
    print(f"\ncompare / scan peak RSS: {ratio:.2f}x (target <= 1.2x)")
    if args.json:
        args.json.write_text(json.dumps({"runs": [r.summary() for r in rows], "ratio": ratio}))


if __name__ == "__main__":
    main()
