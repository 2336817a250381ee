"""The trap detector's error rates: false trap layers under i.i.d. nulls, power on planted entries,
and verdict agreement per phase on the recorded calibration runs (`results_detector.md`/`.json`).

    python benchmarks/bench_detector.py [--scale 1.0] [--out benchmarks/results_detector]
                                        [--skip nulls --skip power]   # (c) again, (a) and (b) kept

(a) **Nulls.** Matrices of i.i.d. entries (Gaussian, Laplace, Student-t with 3, 5 and 10 degrees
    of freedom) at the shapes of the MNIST fixture, MiniLM, all-mpnet-base-v2 and a row block of a
    7B model's 4096-wide matrices, one shuffle seed each: the share with a trap (`num_traps` ≥ 1),
    with its exact (Clopper–Pearson) 95% upper bound. Gaussian entries have no entry too large for
    the bulk, so any trap there is a false alarm; Student-t 3 has infinite fourth moment, so its
    largest entries do stand out, and the test finds them (that is what a trap measures).
(b) **Power.** Gaussian matrices with planted entries: one entry of |z| = c·(N·M)^(1/4) (the
    spectral detectability edge is near c = 1), and k = 4 entries of that size in one row or one
    column; the share found.
(c) **Verdicts per phase**, read from each recorded run's `calibration.json` (written by
    `llm-audit calibrate … --reaudit`, every checkpoint at many shuffle seeds).

`--scale` multiplies every draw count (0.1 for a smoke run). Each matrix is analyzed by
`spectral.traps.trap_metrics` as a scan does, one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from scipy.stats import beta

from llm_audit.spectral.traps import trap_metrics

HERE = Path(__file__).parent
RUNS = HERE.parent / "reports" / "calibration"
SHAPES = {  # name: ((out, in), Gaussian draws)
    "MNIST fc1 200x784": ((200, 784), 3000),
    "MNIST fc2 200x200": ((200, 200), 3000),
    "MiniLM attention 384x384": ((384, 384), 3000),
    "MiniLM MLP 1536x384": ((1536, 384), 1000),
    "mpnet MLP 3072x768": ((3072, 768), 150),
    "7B block 1024x4096": ((1024, 4096), 40),
}
OTHER_DRAWS = 0.1  # the heavy-tailed nulls take this share of the Gaussian draws (at least 20)
DISTRIBUTIONS = ("gaussian", "laplace", "student10", "student5", "student3")
EDGE_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
POWER_SHAPE = (384, 1536)
POWER_DRAWS = 200


def draw(kind: str, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """A matrix of i.i.d. entries of unit scale."""
    if kind == "gaussian":
        return torch.randn(shape, generator=gen)
    u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp(1e-300, 1 - 1e-16)
    if kind == "laplace":
        return (-torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())).float()
    dof = float(kind.removeprefix("student"))
    # Student-t by its inverse CDF (scipy), so the torch generator drives every draw
    from scipy.stats import t as student

    return torch.from_numpy(student.ppf(u.numpy(), dof)).float()


def has_trap(W: torch.Tensor, seed: int) -> dict[str, Any]:
    evals = torch.linalg.eigvalsh(
        (W.T @ W).double() if W.shape[0] >= W.shape[1] else (W @ W.T).double()
    )
    rec, _ = trap_metrics(W, evals.numpy(), seed=seed)
    return rec


def upper95(found: int, n: int) -> float:
    """Clopper–Pearson one-sided 95% upper bound on a rate with `found` of `n`."""
    return 1.0 if found >= n else float(beta.ppf(0.95, found + 1, n - found))


def nulls(scale: float) -> list[dict[str, Any]]:
    rows = []
    for name, (shape, gaussian_draws) in SHAPES.items():
        for kind in DISTRIBUTIONS:
            n = gaussian_draws if kind == "gaussian" else max(20, int(gaussian_draws * OTHER_DRAWS))
            n = max(1, int(n * scale))
            gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{kind}".encode()))
            started, found, draws = time.perf_counter(), 0, 0
            for i in range(n):
                rec = has_trap(draw(kind, shape, gen), seed=i)
                found += rec["num_traps"] > 0
                draws += rec["trap_draws"]
            rows.append(
                {"shape": name, "entries": kind, "matrices": n, "trap_layers": found,
                 "rate": found / n, "upper95": upper95(found, n),
                 "mean_shuffles": draws / n, "seconds": time.perf_counter() - started}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def power(scale: float) -> list[dict[str, Any]]:
    rows = []
    N, M = POWER_SHAPE
    edge = (N * M) ** 0.25
    n = max(1, int(POWER_DRAWS * scale))
    cases = [("one entry", c, 1) for c in EDGE_FACTORS]
    cases += [("4 in a row", 1.0, 4), ("4 in a column", 1.0, 4), ("4 in a row", 1.5, 4)]
    for case, c, k in cases:
        gen = torch.Generator().manual_seed(int(c * 1000) + k)
        found = 0
        for i in range(n):
            W = torch.randn(POWER_SHAPE, generator=gen)
            r, col = (
                int(torch.randint(N, (1,), generator=gen)),
                int(torch.randint(M, (1,), generator=gen)),
            )
            signs = torch.randint(0, 2, (k,), generator=gen) * 2 - 1
            for j in range(k):
                rr, cc = (
                    (r, (col + 97 * j) % M) if case != "4 in a column" else ((r + 97 * j) % N, col)
                )
                W[rr, cc] = float(signs[j]) * c * edge
            found += has_trap(W, seed=i)["num_traps"] > 0
        rows.append({"case": case, "c": c, "z": c * edge, "shape": f"{N}x{M}", "draws": n,
                     "found": found, "power": found / n})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def verdicts() -> list[dict[str, Any]]:
    rows = []
    for path in sorted(RUNS.glob("*/calibration.json")):
        data = json.loads(path.read_text())
        grids = [("checkpoints", data.get("seed_agreement"))]
        if data.get("monitor"):
            grids.append(("monitor grid", data["monitor"].get("seed_agreement")))
        for grid, agreement in grids:
            for phase, v in (agreement or {}).items():
                rows.append({"run": path.parent.name, "grid": grid, "phase": phase, **v})
    return rows


def markdown(result: dict[str, Any]) -> str:
    out = [f"# Trap detector error rates ({result['date']}, {result['machine']})", ""]
    out += ["## (a) Trap layers under i.i.d. nulls (one shuffle seed per matrix)", ""]
    out += ["| shape | entries | matrices | trap layers | rate | 95% upper bound | mean shuffles |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["nulls"]:
        cells = (r["shape"], r["entries"], r["matrices"], r["trap_layers"])
        out.append("| " + " | ".join(map(str, cells)) + f" | {r['rate']:.4f} | "
                   f"{r['upper95']:.2g} | {r['mean_shuffles']:.2f} |")  # fmt: skip
    out += ["", "## (b) Power on planted entries (Gaussian 384x1536, |z| = c·(N·M)^(1/4))", ""]
    out += ["| case | c | \\|z\\| | draws | found | power |", "|---|---|---|---|---|---|"]
    for r in result["power"]:
        out.append(f"| {r['case']} | {r['c']} | {r['z']:.1f} | {r['draws']} | {r['found']} | "
                   f"{r['power']:.3f} |")  # fmt: skip
    when = result.get("verdicts_date", result["date"])
    out += ["", f"## (c) Verdict = phase, over every (checkpoint, shuffle seed) audit ({when})", ""]
    out += ["| run | grid | phase | audits | agree | share |", "|---|---|---|---|---|---|"]
    for r in result["verdicts"]:
        share = "–" if r["share"] is None else f"{r['share']:.3f}"
        out.append(f"| {r['run']} | {r['grid']} | {r['phase']} | {r['audits']} | {r['agree']} | "
                   f"{share} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every draw count")
    parser.add_argument("--out", type=Path, default=HERE / "results_detector")
    parser.add_argument(
        "--skip",
        choices=("nulls", "power"),
        action="append",
        default=[],
        help="keep this part's figures (and date) from the existing --out file",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    kept = args.out.with_suffix(".json")
    if args.skip and not kept.is_file():
        parser.error(f"--skip keeps figures from {kept}, which does not exist; run without --skip")
    before = json.loads(kept.read_text()) if args.skip else {}
    today = time.strftime("%Y-%m-%d")
    result = {
        "date": before.get("date", today) if {"nulls", "power"} <= set(args.skip) else today,
        "machine": "2-core VM, one thread, shared with other work",
        "scale": before.get("scale", args.scale) if args.skip else args.scale,
        "nulls": before.get("nulls", []) if "nulls" in args.skip else nulls(args.scale),
        "power": before.get("power", []) if "power" in args.skip else power(args.scale),
        "verdicts": verdicts(),
        "verdicts_date": today,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    gaussian = [r["upper95"] for r in result["nulls"] if r["entries"] == "gaussian"]
    print(
        f"wrote {args.out}.md/.json; largest Gaussian bound {max(gaussian, default=math.nan):.2g}"
    )


if __name__ == "__main__":
    main()
