"""Every architecture the README names, as transformers itself writes it: tiny random models.

Each model type is built from its transformers config with a tiny width and two blocks, written
with `save_pretrained` (the Hub layout: per-expert tensors, GPT-2's Conv1D, T5's two stacks) and
scanned. Every weight inside a block must get a role other than `other`, the family recorded must
be the config's model_type, and encoder and decoder blocks must be told apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import llm_audit
from llm_audit.architectures import families
from llm_audit.layers import plan_layers
from llm_audit.roles import RESIDUAL, ROLES
from llm_audit.sources import open_source
from tests.conftest import llama_tensors, write_shards

transformers = pytest.importorskip("transformers")

# Width 32, 2 blocks, 4 heads (2 key-value heads), a vocabulary of 128: each model is ~30k weights.
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
}
SEQ2SEQ = {
    "d_model": 32,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "vocab_size": 128,
    "pad_token_id": 0,
}
MLA = {
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
}
SSM = {"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 128, "state_size": 8}

# model_type -> (config overrides, on top of SMALL unless `own` says they replace it; model class)
DECODER, ENCODER, SEQ2SEQ_LM, SPEECH = "causal", "encoder", "seq2seq", "speech"
ARCHITECTURES: dict[str, tuple[dict[str, Any], bool, str]] = {
    "llama": ({}, False, DECODER),
    "mistral": ({}, False, DECODER),
    "qwen2": ({}, False, DECODER),
    "qwen3": ({"head_dim": 8}, False, DECODER),
    "gemma": ({"head_dim": 8}, False, DECODER),
    "gemma2": ({"head_dim": 8}, False, DECODER),
    "gemma3_text": ({"head_dim": 8}, False, DECODER),
    "phi": ({}, False, DECODER),
    "phi3": ({}, False, DECODER),
    "gpt2": ({"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128}, True, DECODER),
    "gptj": (
        {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128, "rotary_dim": 4},
        True,
        DECODER,
    ),
    "gpt_neox": ({}, False, DECODER),
    "falcon": ({}, False, DECODER),
    "bloom": ({"hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128}, True, DECODER),
    "mpt": (
        {"d_model": 32, "n_layers": 2, "n_heads": 4, "vocab_size": 128, "max_seq_len": 64},
        True,
        DECODER,
    ),
    "opt": ({"ffn_dim": 64, "word_embed_proj_dim": 32}, False, DECODER),
    "olmo": ({}, False, DECODER),
    "olmo2": ({}, False, DECODER),
    "starcoder2": ({}, False, DECODER),
    "cohere": ({}, False, DECODER),
    "granite": ({}, False, DECODER),
    "stablelm": ({}, False, DECODER),
    "deepseek_v2": (MLA, False, DECODER),
    "deepseek_v3": (MLA, False, DECODER),
    "mamba": (SSM, True, DECODER),
    "mamba2": ({**SSM, "num_heads": 4, "head_dim": 16, "n_groups": 1}, True, DECODER),
    "falcon_h1": (
        {
            "mamba_d_ssm": 64,
            "mamba_n_heads": 4,
            "mamba_d_head": 16,
            "mamba_n_groups": 1,
            "mamba_d_state": 8,
            "head_dim": 8,
        },
        False,
        DECODER,
    ),
    "jamba": (
        {
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "mamba_d_state": 8,
        },
        False,
        DECODER,
    ),
    "mixtral": ({"num_local_experts": 4, "num_experts_per_tok": 2}, False, DECODER),
    "qwen2_moe": (
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32,
        },
        False,
        DECODER,
    ),
    "qwen3_moe": (
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "head_dim": 8},
        False,
        DECODER,
    ),
    "gpt_oss": ({"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8}, False, DECODER),
    "bert": ({}, False, ENCODER),
    "roberta": ({}, False, ENCODER),
    "deberta-v2": ({}, False, ENCODER),
    "mpnet": ({}, False, ENCODER),
    "modernbert": ({"global_attn_every_n_layers": 1}, False, ENCODER),
    "t5": (
        {
            "d_model": 32,
            "d_ff": 64,
            "d_kv": 8,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "vocab_size": 128,
        },
        True,
        SEQ2SEQ_LM,
    ),
    "bart": ({**SEQ2SEQ, "max_position_embeddings": 64}, True, SEQ2SEQ_LM),
    "whisper": (
        {
            **SEQ2SEQ,
            "max_source_positions": 32,
            "max_target_positions": 32,
            "num_mel_bins": 16,
            "decoder_start_token_id": 1,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        True,
        SPEECH,
    ),
}
AUTO_CLASS = {
    DECODER: "AutoModelForCausalLM",
    ENCODER: "AutoModel",
    SEQ2SEQ_LM: "AutoModelForSeq2SeqLM",
    SPEECH: "AutoModelForSpeechSeq2Seq",
}
ENCODER_DECODER = {
    name for name, (_, _, kind) in ARCHITECTURES.items() if kind in (SEQ2SEQ_LM, SPEECH)
}


def tiny_checkpoint(folder: Path, model_type: str) -> Path:
    """A two-block random `model_type` model, written by transformers' save_pretrained."""
    overrides, own, kind = ARCHITECTURES[model_type]
    config = transformers.AutoConfig.for_model(
        model_type, **(overrides if own else {**SMALL, **overrides})
    )
    torch.manual_seed(0)
    model = getattr(transformers, AUTO_CLASS[kind]).from_config(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, llm_audit.AuditResult]:
    """Every architecture saved and scanned once (no traps), shared by the tests below."""
    root = tmp_path_factory.mktemp("architectures")
    return {
        name: llm_audit.scan(tiny_checkpoint(root / name, name), traps=False, seed=0)
        for name in ARCHITECTURES
    }


def test_at_least_25_architectures_are_covered() -> None:
    assert len(ARCHITECTURES) >= 25


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_block_weight_has_a_role(
    scans: dict[str, llm_audit.AuditResult], model_type: str
) -> None:
    records = scans[model_type].records
    in_blocks = [r for r in records if r["block"] is not None]
    assert in_blocks, f"{model_type}: no block found"
    assert [r["name"] for r in in_blocks if r["role"] == "other"] == []
    assert all(r["role"] in ROLES for r in records)
    # both blocks found, block numbers read from the names
    assert {r["block"] for r in in_blocks} == {0, 1}


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_family_is_the_config_model_type(
    scans: dict[str, llm_audit.AuditResult], model_type: str
) -> None:
    assert scans[model_type].model["family"] == model_type


@pytest.mark.parametrize("model_type", sorted(ENCODER_DECODER))
def test_encoder_and_decoder_blocks_are_told_apart(
    scans: dict[str, llm_audit.AuditResult], model_type: str
) -> None:
    records = [r for r in scans[model_type].records if r["block"] is not None]
    assert {r["stack"] for r in records} == {"encoder", "decoder"}
    identities = [(r["stack"], r["block"], r["role"], r["expert"]) for r in records]
    roles = {r["role"] for r in records}
    assert {"cross_q", "cross_k", "cross_v", "cross_o"} <= roles
    # model order: every encoder block before the first decoder block
    stacks = [r["stack"] for r in records]
    assert stacks == sorted(stacks, key=("encoder", "decoder").index)
    # within a stack, (block, role) names one matrix, except T5's two MLP inputs (wi_0, wi_1)
    assert len(set(identities)) == len(identities)


def test_cross_attention_roles_are_in_the_decoder_only(
    scans: dict[str, llm_audit.AuditResult],
) -> None:
    for name in ENCODER_DECODER:
        crossing = {r["stack"] for r in scans[name].records if r["role"].startswith("cross_")}
        assert crossing == {"decoder"}, name


def test_mla_and_ssm_roles(scans: dict[str, llm_audit.AuditResult]) -> None:
    mla = {r["role"] for r in scans["deepseek_v3"].records}
    assert {"q_a", "q_b", "kv_a", "kv_b", "o", "router", "expert_gate", "expert_down"} <= mla
    mamba = {r["role"] for r in scans["mamba"].records}
    assert {"ssm_in", "ssm_x", "ssm_dt", "ssm_out", "ssm_conv"} <= mamba
    hybrid = {r["role"] for r in scans["falcon_h1"].records}
    assert {"ssm_in", "ssm_out", "q", "o", "gate", "down"} <= hybrid


def test_decoder_only_models_have_no_stack(scans: dict[str, llm_audit.AuditResult]) -> None:
    for name in ("llama", "opt", "gpt2", "bert"):
        assert {r["stack"] for r in scans[name].records} == {None}, name


def test_unknown_model_type_falls_back_to_the_keyword_rules(tmp_path: Path) -> None:
    """A model_type no family file lists is named by generic.json, not by a neighbour's file,
    and the family recorded is its own model_type."""
    folder = write_shards(
        tmp_path / "m",
        llama_tensors(blocks=2),
        config={"model_type": "brand_new_lm", "tie_word_embeddings": False},
    )
    with open_source(folder) as source:
        layers, naming = plan_layers(source.tensors(), source.info.config)
    assert naming == "generic"
    roles = {layer.name: layer.role for layer in layers}
    assert roles["model.layers.1.self_attn.q_proj.weight"] == "q"
    assert roles["model.layers.1.mlp.down_proj.weight"] == "down"
    assert llm_audit.scan(folder, traps=False).model["family"] == "brand_new_lm"


@pytest.mark.parametrize(
    ("extra", "family"),
    [
        ({}, "llama"),  # llama's names, which its MoE relatives (deepseek, qwen2_moe) list too
        ({"w": True}, "generic"),  # one listed name beside tensors no family lists
    ],
)
def test_a_bare_weights_file_is_named_by_the_family_its_names_single_out(
    tmp_path: Path, extra: dict[str, bool], family: str
) -> None:
    """Without a config the names are the only evidence: llama's own names read as llama (not
    the first relative in the list), and a lone `model.embed_tokens.weight` beside `wN`
    matrices is no evidence of any family (it read as deepseek)."""
    tensors = llama_tensors(blocks=2)
    if extra:
        embed = tensors["model.embed_tokens.weight"]
        tensors = {"model.embed_tokens.weight": embed}
        tensors |= {f"model.layers.{b}.w{i}": torch.randn(32, 32) for b in range(2) for i in (1, 2)}
    folder = write_shards(tmp_path / "m", tensors, config=None)
    with open_source(folder) as source:
        _, naming = plan_layers(source.tensors(), source.info.config)
    assert naming == family


def test_every_role_says_how_it_meets_the_residual_stream() -> None:
    assert set(RESIDUAL) == set(ROLES)
    assert set(RESIDUAL.values()) == {"reads", "writes", None}
    assert RESIDUAL["o"] == RESIDUAL["down"] == RESIDUAL["expert_down"] == "writes"
    assert RESIDUAL["q"] == RESIDUAL["up"] == RESIDUAL["lm_head"] == "reads"
    used = {t.role for fam in families()[0] for t in fam.templates}
    assert used <= set(ROLES)


def test_every_model_type_is_listed_once() -> None:
    listed = [m for fam in families()[0] for m in fam.model_types]
    assert len(listed) == len(set(listed))
    assert set(ARCHITECTURES) <= set(listed)


def test_docs_document_every_role_and_the_readme_every_estimator() -> None:
    root = Path(__file__).parent.parent
    table = (root / "docs" / "architectures.md").read_text(encoding="utf-8")
    for role in ROLES:
        assert f"| `{role}` |" in table, role
    assert "ww|xmin_peak|median|clauset" in (root / "README.md").read_text(encoding="utf-8")


def test_depth_plots_have_a_panel_per_stack(scans: dict[str, llm_audit.AuditResult]) -> None:
    """Encoder block 0 and decoder block 0 are not plotted as one depth: one panel per stack."""
    from llm_audit.report.html import render_html

    page = render_html(scans["bart"].to_json())
    for title in ("encoder q", "decoder q", "decoder cross_q", "encoder down"):
        assert f">{title}</text>" in page, title
    assert page.index(">encoder q</text>") < page.index(">decoder q</text>")
    assert ">q</text>" not in page  # no panel mixes the stacks


def test_compare_keeps_encoder_and_decoder_blocks_apart(tmp_path: Path) -> None:
    """A fine-tune of T5 lines up with its base layer by layer: encoder block 0 with encoder
    block 0, never with decoder block 0, and the records say which stack."""
    base = tiny_checkpoint(tmp_path / "base", "t5")
    tuned = transformers.AutoModelForSeq2SeqLM.from_pretrained(base)
    with torch.no_grad():
        tuned.encoder.block[0].layer[0].SelfAttention.q.weight.mul_(2.0)
    tuned.save_pretrained(tmp_path / "tuned")
    diff = llm_audit.compare(base, tmp_path / "tuned", traps=False)
    in_blocks = [r for r in diff.records if r["block"] is not None]
    assert all(set(r["alignment"].values()) == {"aligned"} for r in in_blocks)
    assert {r["stack"] for r in in_blocks} == {"encoder", "decoder"}
    by_place = {(r["stack"], r["block"], r["role"]): r for r in in_blocks}
    assert by_place["encoder", 0, "q"]["delta"]["tuned"]["relative_norm"] == pytest.approx(1.0)
    assert by_place["decoder", 0, "q"]["delta"]["tuned"]["relative_norm"] == 0.0
    assert [r["stack"] for r in diff.table() if r["block"] is not None] == [
        r["stack"] for r in in_blocks
    ]
