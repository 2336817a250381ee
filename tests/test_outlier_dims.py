"""Outlier dimensions or scattered traps (outlier_dims.py): the hidden axis of each role, the
chance rule, and the measured cases: MiniLM as released, planted random entries, a planted
outlier dimension, and the collapsed MNIST calibration checkpoint."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import llm_audit
from llm_audit.config import AuditConfig, Thresholds, VerdictRule
from llm_audit.flags import flagged, verdict
from llm_audit.outlier_dims import (
    COLUMN,
    ROW,
    chance_of_pile,
    hidden_axis,
    hidden_size,
    place_traps,
)
from llm_audit.report.terminal import format_summary
from llm_audit.sources import bundled_model_path

FIXTURES = Path(__file__).parent / "fixtures" / "calibration"
CHANCE = Thresholds().outlier_dimension_chance


# --- the hidden axis and size ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "shape", "axis"),
    [
        ("o", (384, 384), ROW),  # writes the residual stream: (out, in), out is hidden
        ("down", (384, 1536), ROW),
        ("q", (384, 384), COLUMN),  # reads it
        ("up", (1536, 384), COLUMN),
        ("qkv", (1152, 384), COLUMN),
        ("embed", (30522, 384), COLUMN),  # (vocabulary, hidden)
        ("lm_head", (30522, 384), COLUMN),
        ("other", (384, 1536), ROW),  # no role rule: the one side of hidden size
        ("other", (1536, 384), COLUMN),
        ("other", (384, 384), None),  # square: either side could be the stream
        ("down", (1536, 384), COLUMN),  # its role side does not fit: placed by shape
        ("up", (1536, 1024), None),  # neither side is the stream
    ],
)
def test_hidden_axis(role: str, shape: tuple[int, int], axis: int | None) -> None:
    assert hidden_axis(role, shape, 384) == axis


def test_no_hidden_size_no_axis() -> None:
    assert hidden_axis("o", (200, 200), None) is None


def test_hidden_size_from_config_then_embedding() -> None:
    embed = {"role": "embed", "shape": [1000, 64]}
    assert hidden_size({"hidden_size": 384}, [embed]) == 384
    assert hidden_size({"n_embd": 768}, []) == 768
    assert hidden_size({"text_config": {"hidden_size": 640}}, []) == 640  # Gemma-3 style
    assert hidden_size({"hidden_size": True}, [embed]) == 64  # not a size: embedding width
    assert hidden_size(None, [embed]) == 64
    assert hidden_size(None, [{"role": "other", "shape": [200, 784]}]) is None  # an MLP


# --- the chance rule ------------------------------------------------------------------------------


def test_chance_of_pile_known_values() -> None:
    # Two entries on two indices: both on one index with probability 1/2 (exact: no overlap).
    assert chance_of_pile(2, 2, 2) == pytest.approx(0.5)
    # One entry always lands somewhere; n entries on H indices: H * P(Bin(n, 1/H) >= k).
    assert chance_of_pile(1, 10, 384) == 1.0
    assert chance_of_pile(3, 3, 1) == 1.0 and chance_of_pile(4, 3, 384) == 0.0
    p = 1 / 384
    exact = 384 * sum(math.comb(60, j) * p**j * (1 - p) ** (60 - j) for j in range(4, 61))
    assert chance_of_pile(4, 60, 384) == pytest.approx(exact, rel=1e-9)
    assert chance_of_pile(5, 60, 384) < CHANCE < chance_of_pile(4, 60, 384)


def _trap(name: str, role: str, shape: list[int], cells: list[tuple[int, int]], traps: int = 1):
    entries = [{"row": r, "col": c, "value": 1.0, "z": 50.0 - i} for i, (r, c) in enumerate(cells)]
    return {
        "name": name,
        "role": role,
        "shape": shape,
        "status": "success",
        "alpha": 3.0,
        "num_traps": traps,
        "trap_entries": entries,
    }


def _random_cells(rng: np.random.Generator, rows: int, cols: int, k: int = 10):
    return [(int(rng.integers(rows)), int(rng.integers(cols))) for _ in range(k)]


def test_entries_piled_on_one_hidden_index_across_layers() -> None:
    rng = np.random.default_rng(0)
    records = [
        # rows of writers and columns of readers: hidden index 7 in every layer, 4 of 10 entries
        _trap("l0.o", "o", [64, 64], [(7, c) for c in range(4)] + _random_cells(rng, 64, 64, 6)),
        _trap("l1.down", "down", [64, 256], [(7, 9), (7, 3), (7, 200), (7, 1)]),
        _trap("l2.q", "q", [64, 64], [(5, 7), (9, 7), (11, 7), *_random_cells(rng, 64, 64, 7)]),
        {"name": "l3.v", "role": "v", "shape": [64, 64], "status": "success", "num_traps": 0},
    ]
    places = place_traps(records, 64, CHANCE)
    assert [d.index for d in places.dimensions] == [7]
    assert places.dimensions[0].layers == ("l0.o", "l1.down", "l2.q")
    assert places.dimensions[0].entries == 11 and places.dimensions[0].max_abs_z == 50.0
    kinds = [r["trap_kind"] for r in places.records]
    assert kinds == ["outlier_dimension", "outlier_dimension", "outlier_dimension", None]
    assert [e["hidden_index"] for e in places.records[2]["trap_entries"][:3]] == [7, 7, 7]


def test_a_second_trap_entry_off_the_dimensions_makes_the_layer_scattered() -> None:
    piled = [(7, c) for c in range(5)]
    both = _trap("b", "o", [64, 64], [(7, 40), (30, 2), *piled], traps=2)
    places = place_traps([_trap("a", "o", [64, 64], piled), both], 64, CHANCE)
    assert [d.index for d in places.dimensions] == [7]
    assert [r["trap_kind"] for r in places.records] == ["outlier_dimension", "scattered"]


def test_random_positions_are_scattered() -> None:
    rng = np.random.default_rng(1)
    records = [_trap(f"l{i}.o", "o", [384, 1536], _random_cells(rng, 384, 1536)) for i in range(6)]
    places = place_traps(records, 384, CHANCE)
    assert places.dimensions == []
    assert {r["trap_kind"] for r in places.records} == {"scattered"}


def test_without_a_hidden_axis_traps_are_scattered() -> None:
    piled = _trap("layers.0.weight", "other", [200, 784], [(3, c) for c in range(10)])
    places = place_traps([piled], None, CHANCE)
    assert places.dimensions == [] and places.records[0]["trap_kind"] == "scattered"
    assert places.records[0]["trap_entries"][0]["hidden_index"] is None


# --- flags and verdict ----------------------------------------------------------------------------


def _flagged(kind: str | None, traps: int = 1) -> dict[str, Any]:
    record = {"status": "success", "alpha": 3.0, "num_traps": traps, "trap_kind": kind}
    return flagged(record, Thresholds())


def test_outlier_dimension_flag_is_informational_unless_configured() -> None:
    assert _flagged("outlier_dimension")["flags"] == ["outlier_dimension"]
    assert _flagged("scattered")["flags"] == ["correlation_trap"]
    assert _flagged(None, traps=0)["flags"] == []
    layers = [_flagged(None, traps=0) for _ in range(6)] + [_flagged("outlier_dimension")] * 2
    name, reason = verdict(layers, AuditConfig())
    assert name == "healthy" and reason.endswith("findings, not counted: 2 outlier_dimension")
    counting = AuditConfig(verdict=VerdictRule(count_outlier_dimensions=True))
    assert verdict(layers, counting)[0] == "watch"  # 2 trap layers of 8, no alpha < 2
    many = [*layers[:4], *[_flagged("outlier_dimension")] * 4]
    assert verdict(many, AuditConfig())[0] == "healthy"
    assert verdict(many, counting)[0] == "pathological"  # 4 of 8: the rule for traps alone
    scattered = [*layers[:4], *[_flagged("scattered")] * 4]
    assert verdict(scattered, AuditConfig())[0] == "pathological"


def test_config_rejects_a_chance_outside_0_1(tmp_path: Path) -> None:
    from llm_audit.config import load_config
    from llm_audit.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("thresholds:\n  outlier_dimension_chance: 1.5\n")
    with pytest.raises(ConfigError, match="outlier_dimension_chance must lie strictly"):
        load_config(path)
    path.write_text("verdict:\n  count_outlier_dimensions: 1\n")
    with pytest.raises(ConfigError, match="count_outlier_dimensions must be of type bool"):
        load_config(path)


# --- measured cases -------------------------------------------------------------------------------


def test_minilm_traps_lie_on_its_outlier_dimensions(minilm_scan: llm_audit.AuditResult) -> None:
    """MiniLM as released: 6 trap layers (position embeddings, output.dense of blocks 0-4), each
    trap entry on a hidden index where the trap layers' largest entries pile up: 223 (15 of the
    60), 267 (10), 99 (8, among them every layer's largest but block 4's) and 127 (8)."""
    kinds = {r["name"]: r["trap_kind"] for r in minilm_scan.records if r.get("trap_kind")}
    expected = ["embeddings.position_embeddings.weight"]
    expected += [f"encoder.layer.{b}.output.dense.weight" for b in range(5)]
    assert kinds == dict.fromkeys(expected, "outlier_dimension")
    summary = minilm_scan.summary
    dims = {d["index"]: d for d in summary["outlier_dimensions"]}
    assert summary["hidden_size"] == 384 and set(dims) == {223, 267, 99, 127}
    assert dims[267]["layers"] == expected[:3]
    assert max(d["chance"] for d in dims.values()) < 1e-9
    # counted layers (embeddings left out): none with scattered traps, five with 6 traps on the
    # outlier dimensions, which the training monitor's `total_traps` does not count
    assert summary["num_trap_layers"] == 0 and summary["num_outlier_dimension"] == 5
    assert summary["total_traps"] == 0 and summary["total_outlier_dimension_traps"] == 6


def _minilm_with(changes: dict[str, torch.Tensor]) -> llm_audit.AuditResult:
    """MiniLM with some matrices replaced, scanned on those and the released trap layers (a
    layer's record depends only on its matrix; layers without traps place nothing)."""
    state = load_file(str(bundled_model_path() / "model.safetensors"))
    state.update(changes)
    names = ["embeddings.position_embeddings.weight"]
    names += [f"encoder.layer.{b}.output.dense.weight" for b in range(5)] + list(changes)
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    return llm_audit.scan(state, traps=True, seed=0, layers=pattern)


def _plant(W: torch.Tensor, cells: list[tuple[int, int]], z: float) -> torch.Tensor:
    W = W.clone()
    mean, std = float(W.mean()), float(W.std())
    for r, c in cells:
        W[r, c] = mean + z * std
    return W


def test_planted_random_entries_are_scattered() -> None:
    """Huge entries at random positions in three layers (one of them already a trap layer on
    the outlier dimensions): each becomes a correlation trap, scattered."""
    state = load_file(str(bundled_model_path() / "model.safetensors"))
    rng = np.random.default_rng(0)
    names = [
        "encoder.layer.1.attention.self.query.weight",
        "encoder.layer.3.intermediate.dense.weight",
        "encoder.layer.2.output.dense.weight",
    ]
    changes = {n: _plant(state[n], _random_cells(rng, *state[n].shape, k=3), 120.0) for n in names}
    result = _minilm_with(changes)
    by_name = {r["name"]: r for r in result.records}
    for n in names:
        assert by_name[n]["trap_kind"] == "scattered"
        assert "correlation_trap" in by_name[n]["flags"]
    assert result.summary["num_trap_layers"] == 3


def test_a_planted_outlier_dimension_is_found_with_its_index() -> None:
    """Hidden index 150 made extreme (three entries of z 60 to 150) in the attention output
    (row 150) and query (column 150) of blocks 1-4: every one of those layers traps on it."""
    state = load_file(str(bundled_model_path() / "model.safetensors"))
    rng = np.random.default_rng(150)
    changes = {}
    for b in range(1, 5):
        o = f"encoder.layer.{b}.attention.output.dense.weight"
        q = f"encoder.layer.{b}.attention.self.query.weight"
        cols = rng.integers(0, 384, size=3)
        rows = rng.integers(0, 384, size=3)
        z = float(rng.uniform(60, 150))
        changes[o] = _plant(state[o], [(150, int(c)) for c in cols], z)
        changes[q] = _plant(state[q], [(int(r), 150) for r in rows], z)
    result = _minilm_with(changes)
    by_name = {r["name"]: r for r in result.records}
    assert all(by_name[n]["trap_kind"] == "outlier_dimension" for n in changes)
    dims = {d["index"]: d for d in result.summary["outlier_dimensions"]}
    assert 150 in dims and set(dims[150]["layers"]) == set(changes)


def test_collapsed_mnist_first_layer_is_scattered_and_pathological() -> None:
    """The MLP has no residual stream (no config, no embedding): its traps cannot lie on an
    outlier dimension and stay correlation traps; its verdict stays pathological."""
    state = load_file(str(FIXTURES / "collapsed.safetensors"))
    result = llm_audit.scan(state, traps=True, seed=0)
    first = result.records[0]
    assert first["trap_kind"] == "scattered" and "correlation_trap" in first["flags"]
    entries = first["trap_entries"]
    # crowded on 3 hidden units (rows), on 10 different input pixels: scattered, not structured
    assert len({e["row"] for e in entries}) == 3 and len({e["col"] for e in entries}) == 10
    assert result.summary["hidden_size"] is None and result.summary["outlier_dimensions"] == []
    assert result.summary["verdict"] == "pathological"


def test_compare_catches_a_new_scattered_trap_beside_the_outlier_dimensions(
    tmp_path: Path,
) -> None:
    """A "fine-tune" of MiniLM that plants two huge entries at random places in block 2's MLP
    output (a layer whose released traps lie on outlier dimensions): compare reports a new
    correlation trap there, and the base's outlier dimensions for both models."""
    state = load_file(str(bundled_model_path() / "model.safetensors"))
    name = "encoder.layer.2.output.dense.weight"
    other = dict(state)
    other[name] = _plant(state[name], [(17, 400), (301, 1100)], 200.0)
    keep = ["embeddings.position_embeddings.weight"]
    keep += [f"encoder.layer.{b}.output.dense.weight" for b in range(5)]
    pattern = "^(" + "|".join(re.escape(n) for n in keep) + ")$"
    result = llm_audit.compare(state, other, traps=True, seed=0, layers=pattern)
    (label,) = result.summary["others"]
    per_other = result.summary["others"][label]
    assert per_other["layers_with_new_traps"] == [name]
    assert per_other["layers_with_new_outlier_dimension_traps"] == []
    record = next(r for r in result.records if r["name"] == name)
    assert record["models"]["base"]["flags"] == ["outlier_dimension"]
    assert "correlation_trap" in record["models"][label]["flags"]
    dims = result.summary["outlier_dimensions"]
    assert 267 in dims["base"] and 267 in dims[label]


# --- the report panel -----------------------------------------------------------------------------


def _audit_with(records: list[dict[str, Any]], dims: list[dict[str, Any]]) -> dict[str, Any]:
    from llm_audit.vocabulary import SCHEMA_VERSION

    summary = {"verdict": "healthy", "hidden_size": 64, "outlier_dimensions": dims}
    return {"schema_version": SCHEMA_VERSION, "summary": summary, "layers": records}


def test_report_panel_lists_dimensions_and_scattered_layers() -> None:
    from llm_audit.report import render_html

    evil = "<b>l1.o</b>"
    records = [
        {"name": "l0.o", "role": "o", "status": "success", "flags": ["outlier_dimension"],
         "num_traps": 1, "trap_kind": "outlier_dimension"},
        {"name": evil, "role": "o", "status": "success", "flags": ["correlation_trap"],
         "num_traps": 1, "trap_kind": "scattered"},
    ]  # fmt: skip
    dims = [{"index": 7, "entries": 11, "layers": ["l0.o"], "max_abs_z": 50.0, "chance": 2e-9}]
    html = render_html(_audit_with(records, dims))
    panel = html[html.index('<section id="outliers"') :]
    panel = panel[: panel.index("</section>")]
    assert "<td>7</td><td>11</td><td>50</td><td>2.0e-09</td>" in panel
    assert 'href="#L0"' in panel and 'href="#L1"' in panel  # the layers link to their cards
    assert evil not in html and "&lt;b&gt;" in panel
    assert "1 counted trap layer(s) have every trap entry on these dimensions" in panel
    assert "1 counted trap layer(s) have scattered ones" in panel and 'href="#outliers"' in html
    # no trap layer: no panel and no link to it
    quiet = [{"name": "l0.o", "role": "o", "status": "success", "flags": [], "trap_kind": None}]
    html = render_html(_audit_with(quiet, []))
    assert 'id="outliers"' not in html and 'href="#outliers"' not in html


def test_the_cli_summary_names_the_outlier_dimensions(minilm_scan: llm_audit.AuditResult) -> None:
    """The terminal summary says where the informational traps are, not only that none count."""
    text = format_summary(minilm_scan.summary, minilm_scan.records)
    last = text.splitlines()[-1]
    assert last.startswith("outlier dimensions (informational): 223 (")
    assert "267 (3 layers)" in last and last.endswith("6 traps lie on them")


def test_a_grid_of_trap_entries_is_structured_and_random_ones_scattered() -> None:
    from llm_audit.outlier_dims import chance_of_few, structure_chance

    grid = [{"row": r, "col": c} for r in (3, 50, 90) for c in (10, 200, 300)]
    grid.append({"row": 7, "col": 11})
    assert structure_chance(grid, (384, 1536)) < 1e-8
    hot_rows = [{"row": (75, 107, 150)[i % 3], "col": 60 * i + 7} for i in range(10)]
    assert structure_chance(hot_rows, (200, 784)) > 1e-3  # anti-grokking's shape: scattered
    rng = np.random.default_rng(0)
    for shape in ((200, 784), (384, 384), (4096, 11008)):
        random_entries = [
            {"row": int(rng.integers(shape[0])), "col": int(rng.integers(shape[1]))}
            for _ in range(10)
        ]
        assert structure_chance(random_entries, shape) > 1e-3
    # the exact small case: 3 draws over 2 values take 1 value with chance 2/8
    assert chance_of_few(1, 3, 2) == pytest.approx(0.25)


def test_planted_grid_reads_structured_in_a_scan() -> None:
    from llm_audit.scan import scan

    W = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    for r in (10, 100, 200):
        for c in (5, 300, 400):
            W[r, c] = 40.0
    rec = scan({"fc.weight": W}, traps=True, seed=0).records[0]
    assert rec["num_traps"] >= 1 and rec["trap_kind"] == "structured"
    assert "structured" in rec["flags"] and "correlation_trap" not in rec["flags"]


def test_the_collapsed_mnist_layer_is_scattered() -> None:
    from llm_audit.scan import scan

    fixture = Path(__file__).parent / "fixtures" / "calibration" / "collapsed.safetensors"
    tensors = load_file(str(fixture))
    for seed in (0, 1, 2):
        first = scan(tensors, traps=True, seed=seed).records[0]
        assert first["num_traps"] >= 1 and first["trap_kind"] == "scattered"
