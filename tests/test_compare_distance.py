"""The far_from_base finding of compare, on real fine-tunes of the bundled MiniLM on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import llm_audit
from llm_audit.config import AuditConfig
from llm_audit.distance import distance
from llm_audit.report.compare_page import render_compare_html
from llm_audit.sources import bundled_model_path
from tests.finetune import finetune

GENTLE_STEPS, HOT_STEPS = 30, 100


@pytest.fixture(scope="module")
def fine_tunes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetunes")
    return {
        "gentle": finetune(root / "gentle", lr=2e-5, steps=GENTLE_STEPS),
        "hot": finetune(root / "hot", lr=1e-3, steps=HOT_STEPS),
    }


@pytest.mark.slow
def test_a_gentle_fine_tune_is_near_and_a_hot_one_far(fine_tunes: dict[str, Path]) -> None:
    result = llm_audit.compare(
        bundled_model_path(), fine_tunes["gentle"], fine_tunes["hot"], traps=False
    )
    gentle, hot = (result.summary["others"][label] for label in result.summary["others"])
    assert gentle["findings"] == [] and hot["findings"] == ["far_from_base"]
    assert gentle["distance"]["max_relative_norm"] < 0.1 / 3  # the bound is far above it
    assert hot["distance"]["far_share"] >= 0.5
    assert hot["distance"]["median_relative_norm"] > 0.1
    # the page: the far model's card says so first, in its border and its first line, whatever
    # its verdict; the gentle one's does not
    page = render_compare_html(result.to_json(), {})
    cards = page.split('<div class="verdict v-')[1:]
    assert [" far" in card.split(">", 1)[0] for card in cards] == [False, False, True]
    assert cards[2].index("far-note") < cards[2].index("class='reason'")
    assert page.count("class='far-note'") == 1


def test_the_rule_counts_layers_beyond_either_bound() -> None:
    def record(name: str, role: str, rel: float, d_alpha: float) -> dict:
        return {
            "name": name,
            "role": role,
            "delta": {"ft": {"relative_norm": rel}},
            "delta_alpha": {"ft": d_alpha},
        }

    records = [
        record("a", "attn_q", 0.5, 0.0),  # moved: the update
        record("b", "attn_k", 0.01, -1.5),  # moved: alpha
        record("c", "mlp_up", 0.01, 0.1),
        record("d", "mlp_down", 0.02, math.nan),
        record("e", "embed", 3.0, 5.0),  # embeddings are not counted
    ]
    block = distance(records, "ft", AuditConfig())
    assert (block["layers"], block["far_layers"], block["far_share"]) == (4, 2, 0.5)
    assert block["far_from_base"] and block["far_layer_names"] == ["a", "b"]
    strict = AuditConfig().replace(compare=AuditConfig().compare.__class__(far_layer_fraction=0.75))
    assert not distance(records, "ft", strict)["far_from_base"]


def test_the_config_refuses_senseless_bounds(tmp_path: Path) -> None:
    from llm_audit.config import load_config
    from llm_audit.errors import ConfigError

    path = tmp_path / "c.yaml"
    for bad in ("far_layer_fraction: 2", "far_relative_norm: 0", "far_delta_alpha: -1"):
        path.write_text(f"compare:\n  {bad}\n")
        with pytest.raises(ConfigError, match="far_layer_fraction in \\(0, 1\\]"):
            load_config(path)
