"""Tensor names to layers, on checkpoints written by transformers itself for each family."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from llm_audit.architectures import families, model_family, parse_family
from llm_audit.layers import plan_layers
from llm_audit.sources import open_source
from llm_audit.sources.base import SourceInfo
from llm_audit.sources.memory import StateDictSource
from llm_audit.spectral import esd
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
    layers, naming = _plan(_saved(tmp_path, config))
    assert naming == "llama"  # one file names every Llama-style decoder
    assert model_family({"model_type": config.model_type}, naming) == config.model_type
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


def test_tie_follows_the_checkpoints_prefix(tmp_path: Path) -> None:
    """BertForMaskedLM stores `bert.embeddings...` and `cls.predictions.decoder.weight`: the head is
    tied to the prefixed embedding, so it is analyzed once, as the embedding."""
    hidden, vocab = 8, 40
    t = {
        "bert.embeddings.word_embeddings.weight": torch.randn(vocab, hidden),
        "bert.encoder.layer.0.attention.self.query.weight": torch.randn(hidden, hidden),
    }
    t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"].clone()
    config = {"model_type": "bert", "tie_word_embeddings": True}
    layers, _ = _plan(write_shards(tmp_path / "m", t, config=config))
    head = next(layer for layer in layers if layer.role == "lm_head")
    assert head.skip_status == "tied"
    assert "bert.embeddings.word_embeddings.weight" in (head.skip_reason or "")


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
    assert {f.name for f in fams} >= {"bert", "gpt2", "llama", "t5", "deepseek", "mamba"}
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
    with pytest.raises(ValueError, match="unknown stack"):
        parse_family({**good, "tensors": [{"name": "a", "role": "q", "stack": "enc"}]}, "x.json")
    json.dumps(good)


# --- Layer.matrix: the lazy row-block read equals the dense read --------------------------------


def _assert_matrix_is_the_read(
    folder: object, monkeypatch: pytest.MonkeyPatch, **plan: object
) -> int:
    """For every analyzed layer: row blocks (7 at a time), `elements`, the spectrum and the NaN
    count of `Layer.matrix` equal those of the dense (out, in) read. Returns the layers checked."""
    monkeypatch.setattr(esd, "CHUNK_BYTES", 8 * 7 * 64)  # 7 rows of a 64-column float64 block
    checked = 0
    with open_source(folder) as source:
        layers, _ = plan_layers(source.tensors(), source.info.config, **plan)  # type: ignore[arg-type]
        for layer in (x for x in layers if x.skip_status is None):
            stored = layer.read(source)
            dense = stored.T if layer.stored_in_out else stored
            M = layer.matrix(source)
            assert M.shape == tuple(dense.shape) and M.dtype == stored.dtype, layer.name
            blocks = [block for _, block in esd.row_blocks(M, M.dtype, chunk_bytes=7 * 64 * 8)]
            assert torch.equal(torch.cat(blocks), stored), layer.name
            assert torch.equal(M.elements(), stored.reshape(-1)), layer.name
            # Same spectrum (a square matrix may give WᵀW where the dense read gives WWᵀ).
            torch.testing.assert_close(
                esd.eigenvalues(M), esd.eigenvalues(dense), rtol=1e-10, atol=1e-10
            )
            assert esd.nonfinite_count(M) == 0
            checked += 1
    return checked


@pytest.mark.parametrize("split_qkv", [False, True])
@pytest.mark.parametrize("config_class", ["GPT2Config", "Phi3Config", "GPTNeoXConfig"])
def test_layer_matrix_equals_dense_read_fused_qkv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_class: str, split_qkv: bool
) -> None:
    """GPT-2 Conv1D (stored (in, out), q/k/v as columns), Phi-3 (contiguous q/k/v rows) and
    GPT-NeoX (per-head interleaved rows)."""
    extra = {"num_key_value_heads": 2, "pad_token_id": 0} if config_class == "Phi3Config" else {}
    config = getattr(transformers, config_class)(
        **SMALL, **extra, n_embd=32, n_layer=2, n_head=4, n_positions=16
    )
    folder = _saved(tmp_path, config)
    assert _assert_matrix_is_the_read(folder, monkeypatch, split_qkv=split_qkv) >= 6


def test_layer_matrix_equals_dense_read_experts_fp8_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fused 3-D expert tensor, FP8 with block and per-tensor scales, bf16, on disk and in
    memory (where rows are views), and from a source that cannot read part of a tensor."""
    g = torch.Generator().manual_seed(3)
    tensors = {
        "model.layers.0.mlp.experts.gate_up_proj": torch.randn(3, 80, 40, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(300, 200, generator=g).to(
            torch.float8_e4m3fn
        ),
        "model.layers.0.mlp.down_proj.weight_scale_inv": torch.rand(3, 2, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(90, 40, generator=g).to(
            torch.float8_e4m3fn
        ),
        "model.layers.0.mlp.up_proj.weight_scale": torch.tensor(0.01),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(50, 70, generator=g).bfloat16(),
    }
    folder = write_shards(tmp_path / "m", tensors, config={"model_type": "mixtral"})
    assert _assert_matrix_is_the_read(folder, monkeypatch) == 6
    assert _assert_matrix_is_the_read(tensors, monkeypatch) == 6
    whole = StateDictSource(tensors, SourceInfo(id="x", kind="state-dict"))
    whole.partial_reads = False
    layers, _ = plan_layers(whole.tensors(), {"model_type": "mixtral"})
    for layer in layers:
        dense = layer.read(whole)
        assert torch.equal(layer.matrix(whole).rows(0, dense.shape[0], dense.dtype), dense)


def test_nonfinite_count_is_blockwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(esd, "CHUNK_BYTES", 4 * 16 * 5)
    W = torch.randn(100, 16)
    W[3, 4], W[97, 0], W[50, 15] = float("nan"), float("inf"), -float("inf")
    assert esd.nonfinite_count(esd.as_lazy(W)) == esd.nonfinite_count(W.T) == 3


def test_family_recorded_is_declared_not_guessed() -> None:
    """config.json's model_type (or a GGUF header's architecture) wins over the naming file; a
    bare weights file, with no declaration, records the file its names matched."""
    assert model_family({"model_type": "phi"}, "generic") == "phi"
    assert model_family({"model_type": "gguf", "gguf_architecture": "gemma3"}, "gguf") == "gemma3"
    assert model_family(None, "llama") == "llama"
    assert model_family({}, None) is None


def test_stacks_order_the_encoder_before_the_decoder(tmp_path: Path) -> None:
    """Names with an encoder and a decoder component and no family file: the generic rules give
    each its stack, and model order puts every encoder block first, whatever the file order."""
    tensors = {
        f"net.{stack}.layers.{b}.attn.q_proj.weight": torch.randn(16, 16)
        for stack in ("decoder", "encoder")
        for b in (1, 0)
    }
    layers, _ = _plan(write_shards(tmp_path / "m", tensors, config={"model_type": "x"}))
    assert [(layer.stack, layer.block) for layer in layers] == [
        ("encoder", 0),
        ("encoder", 1),
        ("decoder", 0),
        ("decoder", 1),
    ]
