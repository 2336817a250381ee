"""How often WeightWatcher's xmin rule picks a tiny tail by a hair: near-ties in the min-KS scan.

Why: the `ww` estimator (WeightWatcher's default, kept for parity) takes the xmin with the smallest
KS distance D over every eigenvalue. Where a tail of a few eigenvalues and a tail of many have
almost the same D, the choice flips on a difference far below what either tail can resolve (a
tail of n points has an empirical CDF in steps of 1/n), and alpha jumps with it. This measures,
on each real model's counted layers and on a calibration run's first layer, how many fits rest on
fewer than `MIN_TAIL` eigenvalues, how far (in D) the best fit with a larger tail is, and what
alpha and the alpha flags would be there. It changes nothing in llm-audit: it is the evidence
for docs/weightwatcher.md ("Near-ties in the xmin scan").

Usage: python benchmarks/bench_fingers.py [--models minilm,mpnet,smollm2,gemma3] [--run RUN_DIR]
       [--json PATH]
RUN_DIR: a calibration run's folder (its checkpoints/step-*.safetensors and checkpoints/monitor/).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bench_precision import MODELS
from safetensors.numpy import load_file

import llm_audit
from llm_audit.config import AuditConfig
from llm_audit.spectral.powerlaw import EVALS_THRESH, candidate_fits, fit_power_law
from llm_audit.summary import is_counted

MIN_TAIL = 20  # WW's own small-N boundary: below it WW fits with a different rule altogether


def near_tie(evals: np.ndarray) -> dict[str, Any]:
    """The `ww` fit, the best fit whose tail holds at least `MIN_TAIL` eigenvalues, and the
    `xmin_peak` fit (the estimator built against "fingers")."""
    fit = fit_power_law(evals)
    xmins, alphas, distances = candidate_fits(evals)
    tails = int(np.count_nonzero(evals > EVALS_THRESH)) - np.arange(xmins.size)
    large = np.flatnonzero(tails >= MIN_TAIL)
    best = int(large[np.argmin(distances[large])]) if large.size else None
    return {
        "alpha": fit.alpha,
        "alpha_xmin_peak": fit_power_law(evals, estimator="xmin_peak").alpha,
        "tail": fit.num_pl_spikes,
        "D": fit.D,
        "alpha_large_tail": float(alphas[best]) if best is not None else None,
        "tail_large": int(tails[best]) if best is not None else None,
        "D_gap": float(distances[best] - fit.D) if best is not None else None,
    }


def model_case(name: str, tmp: Path) -> dict[str, Any]:
    result = llm_audit.scan(MODELS[name](tmp), traps=False)
    t = AuditConfig().thresholds
    rows = [
        {"layer": r["name"], **near_tie(result.spectra[r["name"]]["evals"])}
        for r in result.records
        if is_counted(r, result.summary) and r["status"] == "success"
    ]
    small = [r for r in rows if r["tail"] < MIN_TAIL]
    alphas = [r["alpha"] for r in rows]
    alt = [r["alpha_large_tail"] if r["tail"] < MIN_TAIL else r["alpha"] for r in rows]
    return {
        "layers": len(rows),
        "tail_below_min": len(small),
        "D_gap_median": float(np.median([r["D_gap"] for r in small])) if small else None,
        "D_gap_below_0.005": sum(r["D_gap"] < 0.005 for r in small),
        "alpha_gt_6": [sum(a > t.alpha_high for a in alphas), sum(a > t.alpha_high for a in alt)],
        "alpha_lt_2": [sum(a < t.alpha_low for a in alphas), sum(a < t.alpha_low for a in alt)],
        "xmin_peak_alpha_gt_6": sum(r["alpha_xmin_peak"] > t.alpha_high for r in rows),
        "xmin_peak_alpha_lt_2": sum(r["alpha_xmin_peak"] < t.alpha_low for r in rows),
        "closest": sorted(small, key=lambda r: r["D_gap"])[:5],
    }


def run_case(run: Path) -> list[dict[str, Any]]:
    """The first layer at every checkpoint whose `ww` tail is below MIN_TAIL (fingers)."""
    found = [*run.glob("checkpoints/step-*.safetensors"), *run.glob("checkpoints/monitor/step-*")]
    by_step = {int(p.stem.split("-")[1]): p for p in found}  # a step on both grids: once
    rows = []
    for step in sorted(by_step):
        W = load_file(by_step[step])["layers.0.weight"].astype(np.float64)
        tie = near_tie(np.linalg.eigvalsh(W @ W.T))
        if tie["tail"] < MIN_TAIL:
            rows.append({"step": step, **tie})
    return rows


def _tie_line(r: dict[str, Any]) -> str:
    return (
        f"alpha {r['alpha']:.2f} on {r['tail']} (D {r['D']:.4f}); "
        f"{r['alpha_large_tail']:.2f} on {r['tail_large']} (D +{r['D_gap']:.4f}); "
        f"xmin_peak {r['alpha_xmin_peak']:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--run", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        p.error(f"--models: unknown {', '.join(sorted(unknown))}; use any of {', '.join(MODELS)}")
    if args.run and not any(args.run.glob("checkpoints/step-*.safetensors")):
        p.error(f"--run: {args.run} has no checkpoints/step-*.safetensors (not a calibration run)")
    out: dict[str, Any] = {"min_tail": MIN_TAIL, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            case = model_case(name, Path(tmp))
            out["models"][name] = case
            print(
                f"{name}: {case['tail_below_min']} of {case['layers']} counted layers fit a tail "
                f"of < {MIN_TAIL}; {case['D_gap_below_0.005']} of them within D 0.005 of a tail >= "
                f"{MIN_TAIL} (median gap {case['D_gap_median']}); alpha > 6: "
                f"{case['alpha_gt_6'][0]} -> {case['alpha_gt_6'][1]}, alpha < 2: "
                f"{case['alpha_lt_2'][0]} -> {case['alpha_lt_2'][1]}; xmin_peak: alpha > 6 "
                f"{case['xmin_peak_alpha_gt_6']}, alpha < 2 {case['xmin_peak_alpha_lt_2']}"
            )
            for r in case["closest"]:
                print(f"   {r['layer']}: {_tie_line(r)}")
    if args.run:
        out["run"] = {"path": str(args.run), "fingers": run_case(args.run)}
        for r in out["run"]["fingers"]:
            print(f"step {r['step']:,}: {_tie_line(r)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
