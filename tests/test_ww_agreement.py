"""Agreement with WeightWatcher 0.7.7 on the bundled, real all-MiniLM-L6-v2.

Where the two differ by design it is said here: WeightWatcher skips token_type_embeddings (2×384,
fewer than min_evals=8 eigenvalues), and so do we, with the status `too_small`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llm_audit
from tests.ww_reference import ww_details

pytest.importorskip("weightwatcher")

RELATIVE = (
    "D",
    "xmin",
    "log_norm",
    "log_spectral_norm",
    "stable_rank",
    "alpha_weighted",
    "lambda_max",
    "norm",
    "log_alpha_norm",
    "entropy",
)


@pytest.fixture(scope="module")
def ours(minilm_scan: llm_audit.AuditResult) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in minilm_scan.records}


@pytest.fixture(scope="module")
def ww(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return ww_details(minilm, tmp_path_factory.mktemp("ww") / "plain.json")


def test_same_layers_analyzed(ours: dict, ww: dict) -> None:
    analyzed = {n for n, r in ours.items() if r["status"] == "success"}
    assert analyzed == set(ww)
    assert ours["embeddings.token_type_embeddings.weight"]["status"] == "too_small"


def test_alpha_matches(ours: dict, ww: dict) -> None:
    diffs = np.array([abs(ours[n]["alpha"] - ww[n]["alpha"]) for n in ww])
    assert (diffs <= 0.01).mean() >= 0.95, diffs
    assert diffs.max() <= 0.05, diffs


@pytest.mark.parametrize("column", RELATIVE)
def test_other_metrics_match(ours: dict, ww: dict, column: str) -> None:
    for name in ww:
        assert ours[name][column] == pytest.approx(ww[name][column], rel=1e-3), name


@pytest.mark.parametrize(
    "column", ["num_pl_spikes", "num_evals", "N", "M", "rank_loss", "matrix_rank"]
)
def test_counts_match_exactly(ours: dict, ww: dict, column: str) -> None:
    assert {n: ours[n][column] for n in ww} == {n: ww[n][column] for n in ww}
