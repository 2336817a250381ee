"""Formats beyond plain 2-D float weights: MoE experts, GGUF files, quantized safetensors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import llm_audit
from llm_audit.errors import CheckpointFormatError
from llm_audit.layers import Layer, plan_layers
from llm_audit.quant.fp8 import dequantize_scaled
from llm_audit.sources import open_source
from llm_audit.sources.safetensors_files import SafetensorsSource

TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts_per_tok": 2,
}


def _plan(model: Any) -> tuple[list[Layer], str]:
    with open_source(model) as source:
        return plan_layers(source.tensors(), source.info.config)


def _write(
    folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _alphas(result: llm_audit.AuditResult) -> dict[str, float]:
    return {r["name"]: r["alpha"] for r in result.records if r["status"] == "success"}


# --- mixture of experts ------------------------------------------------------------------------


def _mixtral() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, MixtralConfig

    torch.manual_seed(0)
    config = MixtralConfig(**TINY, intermediate_size=48, num_local_experts=3)
    return AutoModelForCausalLM.from_config(config)


def _qwen2_moe() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        **TINY,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_experts=3,
    )
    return AutoModelForCausalLM.from_config(config)


def _block_rows(layers: list[Layer], block: int) -> list[tuple[str, int | None, tuple[int, int]]]:
    return [(x.role, x.expert, x.out_in) for x in layers if x.block == block]


def test_mixtral_per_expert_checkpoint(tmp_path: Path) -> None:
    """transformers saves Mixtral experts per expert: block_sparse_moe.experts.{e}.w1/w3/w2."""
    _mixtral().save_pretrained(tmp_path / "m")
    layers, family = _plan(tmp_path / "m")
    assert family == "mixtral"
    experts = [(r, e, s) for r, e, s in _block_rows(layers, 1) if e is not None]
    assert experts == (
        [("expert_gate", e, (48, 32)) for e in range(3)]
        + [("expert_up", e, (48, 32)) for e in range(3)]
        + [("expert_down", e, (32, 48)) for e in range(3)]
    )
    router = next(x for x in layers if x.role == "router" and x.block == 0)
    assert router.name == "model.layers.0.block_sparse_moe.gate.weight"
    assert router.out_in == (3, 32) and router.skip_status == "too_small"
    result = llm_audit.scan(tmp_path / "m", traps=False)
    record = next(
        r
        for r in result.records
        if r["name"] == "model.layers.1.block_sparse_moe.experts.2.w2.weight"
    )
    assert (record["block"], record["role"], record["expert"]) == (1, "expert_down", 2)
    assert record["status"] == "success" and record["shape"] == [32, 48]


def test_mixtral_fused_experts_in_memory() -> None:
    """In memory (transformers v5) the experts are fused 3-D (expert, out, in) tensors."""
    model = _mixtral()
    layers, family = _plan(model)
    assert family == "mixtral"
    assert _block_rows(layers, 0) == [
        ("q", None, (32, 32)),
        ("k", None, (16, 32)),
        ("v", None, (16, 32)),
        ("o", None, (32, 32)),
        ("router", None, (3, 32)),
        *[("expert_gate_up", e, (96, 32)) for e in range(3)],
        *[("expert_down", e, (32, 48)) for e in range(3)],
    ]
    assert layers[6].name == "model.layers.0.mlp.experts.gate_up_proj[0]"
    result = llm_audit.scan(model, traps=False)
    down = model.model.layers[1].mlp.experts.down_proj.detach()[2]
    expected = _alphas(llm_audit.scan({"w.weight": down.clone()}, traps=False))["w.weight"]
    assert _alphas(result)["model.layers.1.mlp.experts.down_proj[2]"] == pytest.approx(expected)


def test_qwen2_moe_experts_shared_expert_and_router(tmp_path: Path) -> None:
    model = _qwen2_moe()
    model.save_pretrained(tmp_path / "m")
    for source in (tmp_path / "m", model):  # per-expert names on disk, fused in memory
        layers, family = _plan(source)
        assert family == "qwen2_moe"
        rows = _block_rows(layers, 1)
        assert rows[4:10] == [
            ("router", None, (3, 32)),
            ("router", None, (1, 32)),  # the shared expert's gate
            ("gate", None, (40, 32)),
            ("up", None, (40, 32)),
            ("down", None, (32, 40)),
            rows[9],
        ]
        experts = [row for row in rows if row[1] is not None]
        roles = {row[0] for row in experts}
        assert roles == ({"expert_gate", "expert_up", "expert_down"} if source != model else
                         {"expert_gate_up", "expert_down"})  # fmt: skip
        assert sorted({row[1] for row in experts}) == [0, 1, 2]
        down = [row[2] for row in experts if row[0] == "expert_down"]
        assert down == [(32, 24)] * 3


def test_fused_expert_tensor_is_read_one_slice_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(1)
    fused = torch.randn(4, 64, 32, generator=g)
    folder = _write(
        tmp_path / "m",
        {
            "model.layers.0.mlp.experts.gate_up_proj": fused,
            "net.blocks.3.experts.w2": fused[:3].clone(),
        },
        {"model_type": "mixtral"},
    )
    whole_reads: list[str] = []
    read = SafetensorsSource.read

    def spy(self: SafetensorsSource, tensor: Any) -> torch.Tensor:
        whole_reads.append(tensor.name)
        return read(self, tensor)

    monkeypatch.setattr(SafetensorsSource, "read", spy)
    result = llm_audit.scan(folder, traps=False)
    assert whole_reads == []  # every expert through read_slice
    rows = [(r["name"], r["block"], r["role"], r["expert"], r["shape"]) for r in result.records]
    assert rows == [
        *[(f"model.layers.0.mlp.experts.gate_up_proj[{e}]", 0, "expert_gate_up", e, [64, 32])
          for e in range(4)],
        *[(f"net.blocks.3.experts.w2[{e}]", 3, "expert_down", e, [64, 32]) for e in range(3)],
    ]  # fmt: skip
    monkeypatch.undo()
    alone = _alphas(llm_audit.scan({"x.weight": fused[2].clone()}, traps=False))["x.weight"]
    assert _alphas(result)["model.layers.0.mlp.experts.gate_up_proj[2]"] == pytest.approx(alone)


# --- GGUF --------------------------------------------------------------------------------------


def _gguf_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "token_embd.weight": rng.standard_normal((100, 64)),
        "blk.0.attn_q.weight": rng.standard_normal((64, 64)),
        "blk.0.ffn_up.weight": rng.standard_normal((96, 64)),
        "blk.0.ffn_down.weight": rng.standard_normal((64, 96)),
        "blk.1.attn_q.weight": rng.standard_normal((64, 64)),  # stored Q8_0
        "blk.1.ffn_gate_exps.weight": rng.standard_normal((4, 96, 64)),
        "output_norm.weight": np.ones(64),
    }


def _write_gguf(path: Path, weights: dict[str, np.ndarray]) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, values in weights.items():
        values32 = values.astype(np.float32)
        if name == "blk.1.attn_q.weight":
            q8 = gguf.quants.quantize(values32, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_roles_shapes_and_dequantization(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "m.gguf", _gguf_weights())
    layers, family = _plan(path)
    assert family == "gguf"
    rows = [(x.name, x.block, x.role, x.expert, x.out_in, x.tensor.dtype) for x in layers]
    assert rows == [
        ("token_embd.weight", None, "embed", None, (100, 64), "F32"),
        ("blk.0.attn_q.weight", 0, "q", None, (64, 64), "F32"),
        ("blk.0.ffn_up.weight", 0, "up", None, (96, 64), "F32"),
        ("blk.0.ffn_down.weight", 0, "down", None, (64, 96), "F32"),
        ("blk.1.attn_q.weight", 1, "q", None, (64, 64), "Q8_0"),
        *[(f"blk.1.ffn_gate_exps.weight[{e}]", 1, "expert_gate", e, (96, 64), "F32")
          for e in range(4)],
    ]  # fmt: skip
    with open_source(path) as source:
        q8 = source.read(layers[4].tensor)
        expert = source.read_slice(layers[-1].tensor, 3)
    original = _gguf_weights()
    assert q8.dtype == torch.float32 and q8.shape == (64, 64)
    assert torch.allclose(q8, torch.from_numpy(original["blk.1.attn_q.weight"]).float(), atol=0.05)
    assert torch.equal(expert, torch.from_numpy(original["blk.1.ffn_gate_exps.weight"][3]).float())


def test_gguf_float_alphas_equal_safetensors(tmp_path: Path) -> None:
    weights = _gguf_weights()
    _write_gguf(tmp_path / "m.gguf", weights)
    from_gguf = _alphas(llm_audit.scan(tmp_path / "m.gguf", traps=False))
    same = {n: torch.from_numpy(v).float() for n, v in weights.items() if n.startswith("blk.0")}
    from_st = _alphas(llm_audit.scan(_write(tmp_path / "st", same), traps=False))
    assert set(from_st) == {"blk.0.attn_q.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"}
    for name, alpha in from_st.items():
        assert from_gguf[name] == pytest.approx(alpha, rel=1e-9)
    assert math.isfinite(from_gguf["blk.1.attn_q.weight"])  # the Q8_0 layer was analyzed


def test_truncated_gguf_is_one_clear_error(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "m.gguf", _gguf_weights())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointFormatError, match="truncated") as err:
        llm_audit.scan(path, traps=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- quantized safetensors ---------------------------------------------------------------------


def test_fp8_weights_are_dequantized_with_their_scales(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    w_block = torch.randn(256, 192, generator=g).to(torch.float8_e4m3fn)
    block_scale = torch.tensor([[0.5, 2.0], [1.5, 0.25]])  # DeepSeek-V3: one per 128×128 block
    w_tensor = torch.randn(96, 64, generator=g).to(torch.float8_e4m3fn)
    tensors = {
        "model.layers.0.mlp.down_proj.weight": w_block,
        "model.layers.0.mlp.down_proj.weight_scale_inv": block_scale,
        "model.layers.0.mlp.up_proj.weight": w_tensor,
        "model.layers.0.mlp.up_proj.weight_scale": torch.tensor(0.01),
    }
    result = llm_audit.scan(_write(tmp_path / "m", tensors), traps=False)
    assert {r["name"]: r["status"] for r in result.records} == {
        "model.layers.0.mlp.up_proj.weight": "success",
        "model.layers.0.mlp.down_proj.weight": "success",
    }
    expected = w_block.float().clone()
    expected[:128, 128:] *= 2.0
    expected[:128, :128] *= 0.5
    expected[128:, :128] *= 1.5
    expected[128:, 128:] *= 0.25
    assert torch.equal(dequantize_scaled(w_block, block_scale), expected)
    reference = _alphas(
        llm_audit.scan({"a.weight": expected, "b.weight": w_tensor.float() * 0.01}, traps=False)
    )
    alphas = _alphas(result)
    assert alphas["model.layers.0.mlp.down_proj.weight"] == pytest.approx(reference["a.weight"])
    assert alphas["model.layers.0.mlp.up_proj.weight"] == pytest.approx(reference["b.weight"])


def test_quantized_layouts_not_decoded_are_listed_naming_the_format(tmp_path: Path) -> None:
    """GPTQ zeros of no known bit width, and a bitsandbytes 4-bit weight whose quant_state is not
    JSON, stay
    `unsupported_quantization` under their weight's name (tests/test_quant.py: decoded ones)."""
    i32 = torch.zeros(8, 64, dtype=torch.int32)
    tensors = {
        "model.layers.0.self_attn.q_proj.qweight": i32,  # GPTQ: (in / 8, out) packed int4
        "model.layers.0.self_attn.q_proj.qzeros": torch.zeros(1, 5, dtype=torch.int32),
        "model.layers.0.self_attn.q_proj.scales": torch.ones(1, 64, dtype=torch.float16),
        "model.layers.0.mlp.up_proj.weight": torch.zeros(2048, 1, dtype=torch.uint8),  # nf4
        "model.layers.0.mlp.up_proj.weight.absmax": torch.ones(64),
        "model.layers.0.mlp.up_proj.weight.quant_map": torch.ones(16),
        "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4": torch.zeros(
            10, dtype=torch.uint8
        ),
        "model.layers.0.mlp.gate_proj.weight": torch.randn(64, 64),
    }
    config = {"model_type": "llama", "quantization_config": {"quant_method": "gptq"}}
    result = llm_audit.scan(_write(tmp_path / "m", tensors, config), traps=False)
    by_name = {r["name"]: r for r in result.records}
    assert set(by_name) == {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
    }
    q = by_name["model.layers.0.self_attn.q_proj.weight"]
    assert (q["role"], q["block"], q["status"]) == ("q", 0, "unsupported_quantization")
    assert "GPTQ" in q["reason"]
    assert "bitsandbytes quant_state" in by_name["model.layers.0.mlp.up_proj.weight"]["reason"]
    assert by_name["model.layers.0.mlp.gate_proj.weight"]["status"] == "success"
    assert result.summary["skipped"] == {"unsupported_quantization": 2}


def test_fp8_without_a_scale_stays_unsupported(tmp_path: Path) -> None:
    w = torch.randn(64, 32).to(torch.float8_e4m3fn)
    result = llm_audit.scan(_write(tmp_path / "m", {"a.weight": w}), traps=False)
    (record,) = result.records
    assert record["status"] == "unsupported_dtype" and "weight_scale" in record["reason"]


def test_summary_pools_the_experts_of_each_block() -> None:
    result = llm_audit.scan(_mixtral(), traps=True)
    pooled = result.summary["experts"]
    assert set(pooled) == {"0", "1"}
    alphas = [r["alpha"] for r in result.records if r["block"] == 1 and r["expert"] is not None]
    assert pooled["1"]["num_experts"] == 3 and pooled["1"]["num_matrices"] == 6
    assert pooled["1"]["mean_alpha"] == pytest.approx(float(np.mean(alphas)))
    assert pooled["1"]["max_alpha"] == max(alphas)
    traps = [
        r.get("num_traps", 0) for r in result.records if r["block"] == 1 and r["expert"] is not None
    ]
    assert pooled["1"]["max_traps"] == max(traps)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "F16"])
def test_gguf_row_blocks_equal_whole_tensor_dequantization(tmp_path: Path, qtype: str) -> None:
    """Every quantization block lies in one row, so rows dequantized alone are the same values."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(5)
    weights = {"token_embd.weight": rng.standard_normal((70, 96)), "blk.0.ffn_gate_exps.weight":
               rng.standard_normal((3, 40, 64))}  # fmt: skip
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    for name, values in weights.items():
        stored = values.astype(np.float16 if qtype == "F16" else np.float32)
        if qtype != "F16":
            stored = gguf.quants.quantize(stored, kind)
        writer.add_tensor(name, stored, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_source(tmp_path / "m.gguf") as source:
        assert source.partial_reads
        layers, _ = plan_layers(source.tensors(), source.info.config)
        assert [x.tensor.dtype for x in layers] == [qtype] * 4
        for layer in layers:
            whole = layer.read(source)
            M = layer.matrix(source)
            blocks = [M.rows(a, min(a + 7, len(whole)), M.dtype) for a in range(0, len(whole), 7)]
            assert torch.equal(torch.cat(blocks), whole), layer.name
            assert torch.equal(M.elements(), whole.reshape(-1)), layer.name
            # The trap shuffle's reads: Q8_0 and Q4_0 decoded element by element, bit for bit
            # what gguf.quants.dequantize gives, for int32 and int64 indices.
            assert (M.gather is not None) == (qtype != "F16"), layer.name
            index = torch.randperm(whole.numel(), generator=torch.Generator().manual_seed(1))
            bits = torch.int16 if qtype == "F16" else torch.int32
            expected = whole.reshape(-1)[index].view(bits)
            for dtype in (torch.int32, torch.int64):
                assert torch.equal(M.gatherer()(index.to(dtype)).view(bits), expected), layer.name
