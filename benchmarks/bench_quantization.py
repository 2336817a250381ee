"""What quantization does to alpha and traps: MiniLM scanned in float and in each quantized format.

The bundled all-MiniLM-L6-v2's 36 encoder Linear weights are quantized in each format's layout and
written as a checkpoint of that format (embeddings stay float, as these formats leave them); each
checkpoint is scanned with traps, and each quantized layer's alpha and trap count are compared
with the float scan's. GPTQ, AWQ and MXFP4 weights are rounded to nearest by tests/quant_writers.py
(no calibration data: GPTQ's and AWQ's calibrated rounding moves weights differently, and usually
less); bitsandbytes weights are quantized by bitsandbytes itself (its own method is round to
nearest). So the table measures the noise of each format's grid, the floor of what a real
quantized checkpoint adds.

Usage: python benchmarks/bench_quantization.py [--methods float,mxfp4,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests/

import llm_audit
from llm_audit.sources import bundled_model_path
from tests import quant_writers as qw

GROUP = 128
METHODS = ("float", "mxfp4", "gptq-8bit", "gptq-4bit", "gptq-3bit", "awq-4bit", "nf4", "int8")


def quantize(name: str, W: torch.Tensor, method: str) -> dict[str, torch.Tensor]:
    """The tensors a `method` checkpoint holds for the Linear weight `name` (out, in)."""
    stem = name.removesuffix(".weight")
    if method == "mxfp4":
        blocks, scales, _ = qw.mxfp4(W)
        return {f"{name}_blocks": blocks, f"{name}_scales": scales}
    if method.startswith("gptq"):
        parts, _ = qw.gptq(W, int(method[5]), GROUP)
        return {f"{stem}.{k}": v for k, v in parts.items()}
    if method == "awq-4bit":
        parts, _ = qw.awq(W, GROUP)
        return {f"{stem}.{k}": v for k, v in parts.items()}
    import bitsandbytes as bnb

    if method == "int8":
        codes, scb, _ = bnb.functional.int8_vectorwise_quant(W.half())
        return {name: codes, f"{stem}.SCB": scb}
    packed, state = bnb.functional.quantize_4bit(
        W, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    return {name: packed, **{f"{name}.{k}": v for k, v in state.as_dict(packed=True).items()}}


def quant_config(method: str) -> dict[str, Any] | None:
    if method == "float":
        return None
    if method == "mxfp4":
        return {"quant_method": "mxfp4"}
    if method in ("nf4", "int8"):
        return {"quant_method": "bitsandbytes", f"load_in_{4 if method == 'nf4' else 8}bit": True}
    kind, bits = method.split("-")
    return {"quant_method": kind, "bits": int(bits[0]), "group_size": GROUP}


def write(folder: Path, method: str) -> list[str]:
    """MiniLM with its encoder Linear weights in `method`'s format; the names of those weights."""
    source = bundled_model_path()
    tensors = load_file(source / "model.safetensors")
    linear = [n for n, t in tensors.items() if ".encoder." in f".{n}" and n.endswith(".weight")
              and t.dim() == 2]  # fmt: skip
    if method != "float":
        for name in linear:
            tensors.update(quantize(name, tensors.pop(name).float(), method))
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    if (q := quant_config(method)) is not None:
        config["quantization_config"] = q
    (folder / "config.json").write_text(json.dumps(config))
    return linear


def measure(methods: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for method in methods:
            linear = write(Path(tmp) / method, method)
            result = llm_audit.scan(Path(tmp) / method, traps=True)
            rows = {r["name"]: r for r in result.records if r["name"] in linear}
            out[method] = {
                name: {k: rows[name].get(k) for k in ("alpha", "num_traps", "status")}
                for name in linear
            }
            print(f"  {method}: {len(rows)} layers", file=sys.stderr, flush=True)
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    base = results["float"]
    lines = [
        "| format | mean alpha | median abs(Δalpha) | mean abs(Δalpha) | max abs(Δalpha) "
        "| alpha < 2 | trap layers | traps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, layers in results.items():
        alphas = [v["alpha"] for v in layers.values()]
        delta = [abs(v["alpha"] - base[n]["alpha"]) for n, v in layers.items()]
        traps = [v["num_traps"] or 0 for v in layers.values()]
        lines.append(
            f"| {method} | {statistics.mean(alphas):.3f} | {statistics.median(delta):.3f} "
            f"| {statistics.mean(delta):.3f} "
            f"| {max(delta):.3f} | {sum(a < 2 for a in alphas)} | {sum(t > 0 for t in traps)} "
            f"| {sum(traps)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", type=Path, help="write per-layer results here")
    args = p.parse_args()
    methods = args.methods.split(",")
    if methods[0] != "float":
        methods.insert(0, "float")
    results = measure(methods)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
