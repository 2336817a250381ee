"""Tensor names to layers, on checkpoints written by transformers itself for each family."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from llm_audit.architectures import families, parse_family
from llm_audit.layers import plan_layers
from llm_audit.sources import open_source
from tests.conftest import llama_tensors, write_shards

transformers = pytest.importorskip("transformers")

SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "vocab_size": 120,
}


def _saved(tmp_path: Path, config: object, **kw: object) -> Path:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, **kw)
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _plan(folder: Path) -> tuple[list, str]:
    with open_source(folder) as source:
        return plan_layers(source.tensors(), source.info.config)


@pytest.mark.parametrize("config_class", ["LlamaConfig", "MistralConfig", "Qwen2Config"])
def test_llama_like_families(tmp_path: Path, config_class: str) -> None:
    config = getattr(transformers, config_class)(
        **SMALL, num_key_value_heads=2, tie_word_embeddings=False
    )
    layers, family = _plan(_saved(tmp_path, config))
    assert family == config.model_type
    roles = Counter(layer.role for layer in layers)
    assert roles == {
        "q": 3,
        "k": 3,
        "v": 3,
        "o": 3,
        "gate": 3,
        "up": 3,
        "down": 3,
        "embed": 1,
        "lm_head": 1,
    }
    assert [layer.role for layer in layers[:8]] == [
        "embed",
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
    ]
    assert [layer.block for layer in layers[1:-1]] == [b for b in range(3) for _ in range(7)]
    k = next(layer for layer in layers if layer.role == "k")
    assert k.out_in == (16, 32)  # 2 kv heads of 8


def test_gpt2_conv1d_weights_are_oriented_and_tied_head_counted_once(tmp_path: Path) -> None:
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=120, n_positions=64)
    layers, family = _plan(_saved(tmp_path, config))
    assert family == "gpt2"
    c_attn = next(layer for layer in layers if layer.name.endswith("attn.c_attn.weight"))
    assert c_attn.tensor.shape == (32, 96) and c_attn.out_in == (96, 32) and c_attn.role == "qkv"
    fc = next(layer for layer in layers if layer.name.endswith("mlp.c_fc.weight"))
    assert fc.out_in == (128, 32) and fc.role == "up"
    assert [layer.role for layer in layers if layer.block is None] == ["embed", "embed"]  # wte, wpe
    assert not any(layer.role == "lm_head" for layer in layers)  # tied: not stored in the file


def test_bert_minilm_layers(minilm: Path) -> None:
    layers, family = _plan(minilm)
    assert family == "bert"
    assert len(layers) == 40
    assert layers[0].name == "embeddings.word_embeddings.weight"
    assert layers[-1].name == "pooler.dense.weight" and layers[-1].role == "other"
    by_name = {layer.name: layer for layer in layers}
    assert by_name["embeddings.token_type_embeddings.weight"].skip_status == "too_small"
    assert by_name["encoder.layer.3.output.dense.weight"].role == "down"
    assert by_name["encoder.layer.3.intermediate.dense.weight"].out_in == (1536, 384)


def test_model_order_is_numeric_not_alphabetical(tmp_path: Path) -> None:
    folder = write_shards(
        tmp_path / "m",
        llama_tensors(blocks=12, hidden=8, inter=16),
        shards=3,
        config={"model_type": "llama", "tie_word_embeddings": False},
    )
    layers, _ = _plan(folder)
    blocks = [layer.block for layer in layers if layer.block is not None]
    assert blocks == sorted(blocks) and blocks[-1] == 11


def test_tied_head_present_in_file_is_analyzed_once(tmp_path: Path) -> None:
    t = llama_tensors(blocks=1)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    layers, _ = _plan(
        write_shards(tmp_path / "m", t, config={"model_type": "llama", "tie_word_embeddings": True})
    )
    head = next(layer for layer in layers if layer.role == "lm_head")
    assert head.skip_status == "tied" and "model.embed_tokens.weight" in (head.skip_reason or "")


def test_unknown_architecture_falls_back_to_generic(tmp_path: Path) -> None:
    tensors = {
        "net.blocks.0.attn.W_Q.weight": torch.randn(16, 16),
        "net.blocks.0.mlp.fc1.weight": torch.randn(32, 16),
        "net.blocks.1.attn.W_Q.weight": torch.randn(16, 16),
        "net.head.weight": torch.randn(10, 16),
        "net.norm.weight": torch.ones(16),
        "net.conv.weight": torch.randn(4, 4, 3, 3),
    }
    layers, family = _plan(write_shards(tmp_path / "m", tensors))
    assert family == "generic"
    assert [(layer.name, layer.block, layer.role) for layer in layers] == [
        ("net.blocks.0.attn.W_Q.weight", 0, "q"),
        ("net.blocks.0.mlp.fc1.weight", 0, "up"),
        ("net.blocks.1.attn.W_Q.weight", 1, "q"),
        ("net.conv.weight", None, "other"),
        ("net.head.weight", None, "other"),
    ]
    assert layers[3].skip_status == "unsupported_shape"


def test_every_architecture_file_loads_and_typos_are_rejected() -> None:
    fams, generic = families()
    assert {f.name for f in fams} >= {"bert", "gpt2", "llama", "mistral", "qwen2"}
    assert generic.roles_by_keyword
    good = {
        "family": "x",
        "model_types": [],
        "tensors": [{"name": "a.{block}.w.weight", "role": "q"}],
    }
    parse_family(good, "x.json")
    with pytest.raises(ValueError, match="unknown key"):
        parse_family({**good, "tensor": []}, "x.json")
    with pytest.raises(ValueError, match="unknown role"):
        parse_family({**good, "tensors": [{"name": "a", "role": "query"}]}, "x.json")
    with pytest.raises(ValueError, match="unknown key"):
        parse_family({**good, "tensors": [{"name": "a", "role": "q", "tied": "b"}]}, "x.json")
    json.dumps(good)
