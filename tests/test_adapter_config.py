"""adapter_config.json is validated against the adapter's tensors: `r` a positive integer equal to
the factors' rank (per module with `rank_pattern`), `lora_alpha` a finite number, flags booleans.
A wrong `r` used to scale every update silently."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from llm_audit.errors import CheckpointFormatError
from llm_audit.sources.peft import LoraAdapterSource

RANKS = {"q_proj": 4, "v_proj": 2}


def _adapter(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """An adapter of q_proj (rank 4) and v_proj (rank 2) on 8 x 6 matrices; B·A per module."""
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    tensors, products = {}, {}
    for module, rank in RANKS.items():
        a, b = torch.randn(rank, 6, generator=g), torch.randn(8, rank, generator=g)
        prefix = f"base_model.model.layers.0.{module}"
        tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
        products[f"layers.0.{module}.weight"] = b @ a
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return products


@pytest.mark.parametrize(
    ("config", "scales"),
    [
        ({"r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 2}}, {"q_proj": 2, "v_proj": 4}),
        (
            {
                "r": 4,
                "lora_alpha": 8,
                "rank_pattern": {"v_proj": 2},
                "alpha_pattern": {"q_proj": 1},
            },
            {"q_proj": 0.25, "v_proj": 4},
        ),
        (
            {"r": 4, "lora_alpha": 16, "use_rslora": True, "rank_pattern": {"v_proj": 2}},
            {"q_proj": 8, "v_proj": 16 / math.sqrt(2)},
        ),
    ],
)
def test_each_update_is_scaled_by_its_own_rank_and_alpha(
    tmp_path: Path, config: dict[str, Any], scales: dict[str, float]
) -> None:
    products = _adapter(tmp_path / "a", config)
    with LoraAdapterSource(tmp_path / "a") as source:
        for t in source.tensors():
            module = t.name.split(".")[-2]
            torch.testing.assert_close(source.read(t), products[t.name] * scales[module])


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"r": 4}, "r is 4 but the lora_A and lora_B of layers.0.v_proj have rank 2"),
        ({"r": 2, "rank_pattern": {"q_proj": 8}}, "r is 8 but"),
        ({"r": 0}, "r must be a positive integer, got 0"),
        ({"r": -4}, "r must be a positive integer, got -4"),
        ({"r": True}, "r: expected an integer, got True"),
        ({"r": 4.0}, "r: expected an integer, got 4.0"),
        ({"r": 4, "lora_alpha": float("nan")}, "lora_alpha must be a finite number"),
        ({"r": 4, "lora_alpha": [8]}, "lora_alpha: expected an integer or a number"),
        ({"r": 4, "rank_pattern": ["v_proj"]}, "rank_pattern: expected a mapping"),
        ({"r": 4, "rank_pattern": {"v_proj": "2"}}, "rank_pattern['v_proj']: expected an integer"),
        ({"r": 4, "fan_in_fan_out": 1}, "fan_in_fan_out: expected true or false"),
    ],
)
def test_a_config_that_lies_about_the_adapter_is_refused(
    tmp_path: Path, config: dict[str, Any], says: str
) -> None:
    _adapter(tmp_path / "a", config)
    with pytest.raises(CheckpointFormatError) as caught:
        LoraAdapterSource(tmp_path / "a")
    assert str(tmp_path / "a" / "adapter_config.json") in str(caught.value)
    assert says in str(caught.value)
