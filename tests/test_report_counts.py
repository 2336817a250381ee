"""One vocabulary of counts: the terminal summary, audit.json, layers.csv and report.html of one
`llm-audit scan` give the same flagged, counted, trap and finding numbers (summary.py defines
them), for the bundled MiniLM, all-mpnet-base-v2 and the collapsed MNIST fixture."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llm_audit.cli import main
from llm_audit.config import VerdictRule
from llm_audit.vocabulary import (
    ALPHA_FIT_FAILED,
    ALPHA_GT_6,
    ALPHA_LT_2,
    FINDINGS,
    OUTLIER_DIMENSION,
    STRUCTURED,
    TRAP_FLAGS,
)
from tests.test_real_weights import mpnet  # noqa: F401  (a fixture)

FIXTURE = Path(__file__).parent / "fixtures" / "calibration" / "collapsed.safetensors"


def from_csv(path: Path) -> dict[str, Any]:
    """The counts, recomputed from the per-layer table alone (its `counted` and `flags`)."""
    table = pd.read_csv(path, keep_default_na=False)
    rows = table[table["counted"]]
    flags = [set(filter(None, str(f).split(","))) for f in rows["flags"]]
    traps = pd.to_numeric(rows["num_traps"]).tolist()
    rule = VerdictRule()
    counting = [{f for f in fs if rule.counts(f)} for fs in flags]
    trap_layers = [i for i, fs in enumerate(counting) if fs & set(TRAP_FLAGS)]
    return {
        "num_counted": len(rows),
        "num_flagged": sum(bool(fs) for fs in counting),
        "num_with_findings": sum(bool(fs - c) for fs, c in zip(flags, counting, strict=True)),
        "num_alpha_lt_2": sum(ALPHA_LT_2 in fs for fs in flags),
        "num_alpha_gt_6": sum(ALPHA_GT_6 in fs for fs in flags),
        "num_alpha_fit_failed": sum(ALPHA_FIT_FAILED in fs for fs in flags),
        "num_outlier_dimension": sum(OUTLIER_DIMENSION in fs for fs in flags),
        "num_trap_layers": len(trap_layers),
        "total_traps": int(sum(traps[i] for i in trap_layers)),
        "total_outlier_dimension_traps": int(
            sum(t for t, fs in zip(traps, flags, strict=True) if OUTLIER_DIMENSION in fs)
        ),
        "num_structured": sum(STRUCTURED in fs for fs in flags),
        "total_structured_traps": int(
            sum(t for t, fs in zip(traps, flags, strict=True) if STRUCTURED in fs)
        ),
    }


def from_terminal(text: str) -> dict[str, Any]:
    counted = re.search(
        r"counted by the verdict: flagged layers: (\d+) of (\d+) · alpha < 2: (\d+) · "
        r"fit failed: (\d+) · trap layers: (\d+) \((\d+) traps\)",
        text,
    )
    found = re.search(
        r"findings \(not counted\): alpha > 6: (\d+) · traps on outlier dimensions: (\d+) "
        r"\((\d+) traps\) · structured traps: (\d+) \((\d+) traps\)",
        text,
    )
    assert counted and found, text[-800:]
    c, f = [int(x) for x in counted.groups()], [int(x) for x in found.groups()]
    return {
        "num_flagged": c[0],
        "num_counted": c[1],
        "num_alpha_lt_2": c[2],
        "num_alpha_fit_failed": c[3],
        "num_trap_layers": c[4],
        "total_traps": c[5],
        "num_alpha_gt_6": f[0],
        "num_outlier_dimension": f[1],
        "total_outlier_dimension_traps": f[2],
        "num_structured": f[3],
        "total_structured_traps": f[4],
        "verdict": re.search(r"^verdict: (\w+)", text, re.M)[1],  # type: ignore[index]
    }


def from_page(html: str) -> dict[str, Any]:
    pairs = dict(re.findall(r'<dt>([^<]+)</dt><dd class="n">([^<]+)</dd>', html))
    big = re.search(r"<h3>counted by the verdict</h3><p class=\"big\">(\d+) <small>of (\d+)", html)
    findings = re.search(r"<h3>findings, not counted</h3><p class=\"big\">(\d+) ", html)
    trap_layers, traps = re.fullmatch(r"(\d+) \((\d+) traps\)", pairs["trap layers"]).groups()  # type: ignore[union-attr]
    dims, dim_traps = re.fullmatch(  # type: ignore[union-attr]
        r"(\d+) \((\d+) traps\)", pairs["traps on outlier dimensions"]
    ).groups()
    structured, structured_traps = re.fullmatch(  # type: ignore[union-attr]
        r"(\d+) \((\d+) traps\)", pairs["structured traps"]
    ).groups()
    assert big and findings
    return {
        "num_flagged": int(big[1]),
        "num_counted": int(big[2]),
        "num_with_findings": int(findings[1]),
        "num_alpha_lt_2": int(pairs["alpha &lt; 2"]),
        "num_alpha_gt_6": int(pairs["alpha &gt; 6"]),
        "num_alpha_fit_failed": int(pairs["fit failed"]),
        "num_trap_layers": int(trap_layers),
        "total_traps": int(traps),
        "num_outlier_dimension": int(dims),
        "total_outlier_dimension_traps": int(dim_traps),
        "num_structured": int(structured),
        "total_structured_traps": int(structured_traps),
        "verdict": re.search(r'<span class="verdict-name">(\w+)</span>', html)[1],  # type: ignore[index]
    }


def scan_everything(model: str | None, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """Run `llm-audit scan` once and read its four outputs."""
    args = ["scan", *([model] if model else []), "--out", str(out), "--seed", "0", "--no-progress"]
    assert main([*args, "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "audit.json").read_text())["summary"]
    return {
        "terminal": from_terminal(text),
        "json": summary,
        "csv": from_csv(out / "layers.csv"),
        "page": from_page((out / "report.html").read_text()),
    }


def assert_one_vocabulary(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary = outputs["json"]
    for name in ("terminal", "csv", "page"):
        for key, value in outputs[name].items():
            assert value == summary[key], (name, key, value, summary[key])
    assert set(FINDINGS) == {ALPHA_GT_6, OUTLIER_DIMENSION, STRUCTURED}  # the lines parsed above
    return dict(summary)


def test_minilm_counts_agree_and_it_reads_healthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = assert_one_vocabulary(scan_everything(None, tmp_path / "minilm", capsys))
    # healthy: its 4 alpha > 6 layers and 5 outlier-dimension trap layers are findings
    assert s["verdict"] == "healthy" and s["num_flagged"] == 0 and s["num_counted"] == 37
    assert s["num_alpha_gt_6"] == 4 and s["num_outlier_dimension"] == 5
    assert s["total_outlier_dimension_traps"] == 6 and s["num_with_findings"] == 9
    assert [f["name"] for f in s["findings"]] == [ALPHA_GT_6, OUTLIER_DIMENSION]
    assert s["num_flagged_outside"] == 1  # the position embeddings: alpha < 2, not counted


def test_collapsed_fixture_counts_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = assert_one_vocabulary(scan_everything(str(FIXTURE), tmp_path / "mnist", capsys))
    assert s["num_counted"] == 3 and s["num_trap_layers"] >= 1 and s["total_traps"] >= 1


@pytest.mark.slow
@pytest.mark.real_weights
def test_mpnet_counts_agree(
    mpnet: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = assert_one_vocabulary(scan_everything(str(mpnet), tmp_path / "mpnet", capsys))
    assert s["num_counted"] > 0
