"""Quantized checkpoints (llm_audit/quant): each format decoded as its reference decodes it.

MXFP4 is checked against transformers' own dequantizer (`integrations.mxfp4`), bitsandbytes against
bitsandbytes. GPTQ's and AWQ's reference packages cannot be installed here (GPTQModel needs another
torch, AutoGPTQ and AutoAWQ ship CUDA builds), so they are checked against writers made from the
published layouts (tests/quant_writers.py) and known answers; the writers' packing was checked bit
for bit against AutoGPTQ 0.7.1's `QuantLinear.pack` and AutoAWQ 0.2.9's `dequantize_gemm` (README).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import llm_audit
from llm_audit.layers import plan_layers
from llm_audit.quant import find_quantized
from llm_audit.quant.awq import unpack_columns
from llm_audit.quant.base import QuantizedWeight, unpack_last
from llm_audit.sources.base import SourceInfo
from llm_audit.sources.memory import StateDictSource
from llm_audit.sources.safetensors_files import SafetensorsSource
from tests import quant_writers as qw


def _source(tensors: dict[str, torch.Tensor]) -> StateDictSource:
    return StateDictSource(tensors, SourceInfo("test", "state-dict"))


def _weight(tensors: dict[str, torch.Tensor], packed: str, config: Any = None) -> QuantizedWeight:
    source = _source(tensors)
    found = find_quantized(source.tensors(), config, read=source.read)
    return found.weights[packed]


def _check_reads(q: QuantizedWeight, tensors: dict[str, torch.Tensor], expected: torch.Tensor,
                 expert: int | None = None) -> None:  # fmt: skip
    """Whole, row blocks that start and stop anywhere, and single elements: all `expected`."""
    source = _source(tensors)
    rows = expected.shape[0]
    assert torch.equal(q.rows(source, 0, rows, expert=expert), expected)
    for start, stop in ((1, 2), (3, rows - 5), (rows // 2, rows)):
        assert torch.equal(q.rows(source, start, stop, expert=expert), expected[start:stop])
    gather = q.element_reader(source, expert=expert)
    assert gather is not None
    index = torch.randint(0, expected.numel(), (2000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(gather(index), expected.reshape(-1)[index])


# --- shared bit unpacking -----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_integers_are_read_as_one_little_endian_bit_stream(bits: int) -> None:
    values = [(7 * j + 3) % 2**bits for j in range(64)]
    stream = sum(v << (j * bits) for j, v in enumerate(values))
    words = [(stream >> (32 * k)) & 0xFFFFFFFF for k in range(2 * bits)]
    packed = torch.tensor([w - 2**32 if w >= 2**31 else w for w in words], dtype=torch.int32)
    assert unpack_last(packed.reshape(1, -1), bits).tolist() == [values]


def test_three_bit_values_split_across_words_are_joined() -> None:
    """Value 10 of a 3-bit stream is bits 30-32: the top two bits of word 0 and bit 0 of word 1."""
    words = torch.tensor([[-(2**30), 1, 0]], dtype=torch.int32)  # bits 30, 31 and 32 set
    values = unpack_last(words, 3)[0]
    assert values[10] == 7 and int(values.sum()) == 7


# --- MXFP4 --------------------------------------------------------------------------------------


def test_mxfp4_matches_transformers_dequantizer_on_every_code_and_scale() -> None:
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 40, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(0, 256, (3, 40, 4), generator=g, dtype=torch.uint8)
    scales[0, 0] = torch.tensor([0, 1, 254, 255])  # 2^-127 (subnormal) to 2^128 (inf)
    tensors = {"m.experts.down_proj_blocks": blocks, "m.experts.down_proj_scales": scales}
    q = _weight(tensors, "m.experts.down_proj_blocks")
    assert (q.shape, q.stored_in_out, q.describe()) == (
        (3, 40, 128),
        False,
        {"method": "mxfp4", "bits": 4, "group_size": 32},
    )
    reference = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2)
    assert bool(torch.isinf(reference).any())  # scale byte 255 with a large code
    for expert in range(3):
        _check_reads(q, tensors, reference[expert], expert)


def test_mxfp4_writer_round_trips_through_transformers() -> None:
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    W = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    blocks, scales, dequantized = qw.mxfp4(W)
    reference = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2)
    assert torch.equal(reference, dequantized)
    assert 0.05 < float((dequantized - W).norm() / W.norm()) < 0.2  # 4 bits: about 12% error


def _gpt_oss(tmp_path: Path, *, quantized: bool) -> Path:
    """A tiny gpt-oss checkpoint from transformers' config: its experts as MXFP4 (as the Hub
    holds them), or as the float weights that those MXFP4 tensors stand for."""
    from transformers import AutoModelForCausalLM, GptOssConfig

    torch.manual_seed(0)
    config = GptOssConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, layer_types=["full_attention"] * 2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        weight = state.pop(name)  # (experts, in, out)
        blocks, scales, dequantized = qw.mxfp4(weight.transpose(1, 2))  # rows = outputs
        if quantized:
            state[f"{name}_blocks"], state[f"{name}_scales"] = blocks, scales
        else:
            state[name] = dequantized.transpose(1, 2).contiguous()
    folder = tmp_path / ("mxfp4" if quantized else "float")
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    saved = config.to_dict()
    if quantized:
        saved["quantization_config"] = {"quant_method": "mxfp4"}
    (folder / "config.json").write_text(json.dumps(saved))
    return folder


def test_gpt_oss_mxfp4_checkpoint_scans_with_expert_roles(tmp_path: Path) -> None:
    quantized = llm_audit.scan(_gpt_oss(tmp_path, quantized=True), traps=True)
    dense = llm_audit.scan(_gpt_oss(tmp_path, quantized=False), traps=False)
    rows = {r["name"]: r for r in quantized.records}
    assert not [r for r in quantized.records if r["status"] == "unsupported_quantization"]
    experts = [r for r in quantized.records if r["role"].startswith("expert_")]
    assert sorted({(r["role"], tuple(r["shape"])) for r in experts}) == [
        ("expert_down", (64, 64)),
        ("expert_gate_up", (128, 64)),
    ]
    assert len(experts) == 2 * 2 * 4  # blocks x matrices x experts
    gate_up = rows["model.layers.1.mlp.experts.gate_up_proj[3]"]
    assert (gate_up["block"], gate_up["expert"], gate_up["status"]) == (1, 3, "success")
    assert gate_up["quantization"] == {"method": "mxfp4", "bits": 4, "group_size": 32}
    assert gate_up["dtype"] == "MXFP4" and "num_traps" in gate_up
    assert rows["model.layers.0.self_attn.q_proj.weight"]["quantization"] is None
    assert quantized.model["quantization"] == {"method": "mxfp4", "bits": 4, "group_size": 32}
    assert dense.model["quantization"] is None
    same = {r["name"]: r["alpha"] for r in dense.records if r["status"] == "success"}
    assert {n: r["alpha"] for n, r in rows.items() if n in same} == pytest.approx(same, rel=1e-6)
    assert set(same) == {n for n, r in rows.items() if r["status"] == "success"}


def test_report_says_spectra_include_quantization_noise(tmp_path: Path) -> None:
    from llm_audit.report import render_html

    result = llm_audit.scan(_gpt_oss(tmp_path, quantized=True), traps=False)
    page = render_html(result.to_json(), result.spectra)
    assert "Quantized weights (mxfp4, 4 bits): the spectra are those of the dequantized" in page
    assert "include quantization noise" in page


# --- GPTQ and AWQ -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_decodes_its_packing(bits: int, act_order: bool) -> None:
    W = torch.randn(96, 256, generator=torch.Generator().manual_seed(bits))
    parts, expected = qw.gptq(W, bits, 64, act_order=act_order)
    tensors = {f"l.{k}": v for k, v in parts.items()}
    q = _weight(tensors, "l.qweight", {"quantization_config": {"quant_method": "gptq"}})
    assert (q.name, q.shape, q.stored_in_out) == ("l.weight", (256, 96), True)
    assert q.describe() == {"method": "gptq", "bits": bits, "group_size": 64}
    _check_reads(q, tensors, expected.T.contiguous())


def test_gptq_without_g_idx_groups_rows_in_order() -> None:
    """Older checkpoints (GPTQ-for-LLaMa) have no g_idx: row i is in group i // group_size."""
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(6))
    parts, expected = qw.gptq(W, 4, 32)
    tensors = {f"l.{k}": v for k, v in parts.items() if k != "g_idx"}
    q = _weight(tensors, "l.qweight")
    assert q.describe() == {"method": "gptq", "bits": 4, "group_size": 32}
    _check_reads(q, tensors, expected.T.contiguous())


def test_gptq_v2_zeros_are_stored_without_the_offset() -> None:
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(5))
    parts, expected = qw.gptq(W, 4, 32, v2=True)
    tensors = {f"l.{k}": v for k, v in parts.items()}
    config = {"quantization_config": {"quant_method": "gptq", "checkpoint_format": "gptq_v2"}}
    _check_reads(_weight(tensors, "l.qweight", config), tensors, expected.T.contiguous())
    v1 = _weight(tensors, "l.qweight", {"quantization_config": {"quant_method": "gptq"}})
    assert not torch.equal(v1.rows(_source(tensors), 0, 64), expected.T)


def test_gptq_known_answer() -> None:
    """4 bits, 32 inputs by 32 outputs: every word 0x76543210 holds q = 0..7 for its 8 inputs;
    every zero stored as 2 (z = 3 in the original format), scale 0.5: W = 0.5 · (q − 3)."""
    tensors = {
        "l.qweight": torch.full((4, 32), 0x76543210, dtype=torch.int32),
        "l.qzeros": torch.full((1, 4), 0x22222222, dtype=torch.int32),
        "l.scales": torch.full((1, 32), 0.5, dtype=torch.float16),
        "l.g_idx": torch.zeros(32, dtype=torch.int32),
    }
    q = _weight(tensors, "l.qweight")
    column = 0.5 * (torch.arange(32.0) % 8 - 3)
    assert torch.equal(q.rows(_source(tensors), 0, 32), column.unsqueeze(1).expand(32, 32))


def test_awq_known_answer_for_its_packing_order() -> None:
    """Nibble k of a word holds column AWQ_ORDER[k]: 0x76543210 unpacks as 0 4 1 5 2 6 3 7."""
    words = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_columns(words).tolist() == [[0, 4, 1, 5, 2, 6, 3, 7]]


def test_awq_decodes_its_packing() -> None:
    W = torch.randn(96, 256, generator=torch.Generator().manual_seed(7))
    parts, expected = qw.awq(W, 64)
    tensors = {f"l.{k}": v for k, v in parts.items()}
    config = {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64}}
    q = _weight(tensors, "l.qweight", config)
    assert (q.name, q.shape, q.stored_in_out) == ("l.weight", (256, 96), True)
    assert q.describe() == {"method": "awq", "bits": 4, "group_size": 64}
    _check_reads(q, tensors, expected.T.contiguous())


def _llama_layers(tmp_path: Path, per_layer: dict[str, dict[str, torch.Tensor]],
                  config: dict[str, Any]) -> Path:  # fmt: skip
    folder = tmp_path / "m"
    folder.mkdir()
    tensors = {
        f"model.layers.0.{layer}.{k}": v for layer, p in per_layer.items() for k, v in p.items()
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    return folder


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptq_and_awq_checkpoints_scan_like_their_float_weights(
    tmp_path: Path, method: str
) -> None:
    g = torch.Generator().manual_seed(11)
    parts, floats = {}, {}
    for layer, shape in (("self_attn.q_proj", (128, 96)), ("mlp.down_proj", (96, 160))):
        W = torch.randn(*shape, generator=g)
        parts[layer], floats[f"model.layers.0.{layer}.weight"] = (
            qw.gptq(W, 4, 32, act_order=True) if method == "gptq" else qw.awq(W, 32)
        )
    config = {"quantization_config": {"quant_method": method, "bits": 4, "group_size": 32}}
    result = llm_audit.scan(_llama_layers(tmp_path, parts, config), traps=True)
    reference = llm_audit.scan(floats, traps=False)
    rows = {r["name"]: r for r in result.records}
    assert set(rows) == set(floats)
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert (q["role"], q["shape"], q["status"]) == ("q", [128, 96], "success")
    assert q["quantization"] == {"method": method, "bits": 4, "group_size": 32}
    alphas = {r["name"]: r["alpha"] for r in reference.records}
    assert {n: r["alpha"] for n, r in rows.items()} == pytest.approx(alphas, rel=1e-6)


# --- bitsandbytes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("quant_type", "nested"), [("nf4", False), ("nf4", True), ("fp4", True)])
def test_bitsandbytes_4bit_matches_bitsandbytes(quant_type: str, nested: bool) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    W = torch.randn(72, 200, generator=torch.Generator().manual_seed(2))  # 200: rows split bytes
    packed, state = bnb.functional.quantize_4bit(
        W, blocksize=64, quant_type=quant_type, compress_statistics=nested
    )
    reference = bnb.functional.dequantize_4bit(packed, state).float()
    tensors = {
        "l.weight": packed,
        **{f"l.weight.{k}": v for k, v in state.as_dict(packed=True).items()},
    }
    q = _weight(tensors, "l.weight")
    assert (q.shape, q.dtype) == ((72, 200), quant_type.upper())
    assert q.describe() == {"method": "bitsandbytes", "bits": 4, "group_size": 64}
    _check_reads(q, tensors, reference)


def test_bitsandbytes_int8_matches_bitsandbytes() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    W = torch.randn(48, 80, generator=torch.Generator().manual_seed(4)).half()
    codes, scb, _ = bnb.functional.int8_vectorwise_quant(W)
    reference = bnb.functional.int8_vectorwise_dequant(codes, scb)
    tensors = {"l.weight": codes, "l.SCB": scb}
    q = _weight(tensors, "l.weight")
    assert q.describe() == {"method": "bitsandbytes", "bits": 8, "group_size": None}
    _check_reads(q, tensors, reference)


# --- layouts that are not decoded ---------------------------------------------------------------


def test_unknown_layouts_stay_unsupported_with_the_reason(tmp_path: Path) -> None:
    gptq_parts, _ = qw.gptq(torch.randn(64, 64), 4, 32)
    gptq_parts["g_idx"] = gptq_parts["g_idx"][:10]
    awq_parts, _ = qw.awq(torch.randn(64, 64), 32)
    per_layer = {"self_attn.q_proj": gptq_parts, "self_attn.k_proj": awq_parts}
    per_layer["mlp.up_proj"] = {
        "weight": torch.zeros(2048, 1, dtype=torch.uint8),
        "weight.absmax": torch.ones(64),
        "weight.quant_map": torch.ones(16),
        "weight.quant_state.bitsandbytes__nf4": torch.zeros(10, dtype=torch.uint8),
    }
    per_layer["mlp.gate_proj"] = {"weight": torch.randn(64, 64)}
    config = {"quantization_config": {"quant_method": "awq", "version": "gemv"}}
    result = llm_audit.scan(_llama_layers(tmp_path, per_layer, config), traps=False)
    reasons = {r["name"]: (r["status"], r["reason"]) for r in result.records}
    assert reasons["model.layers.0.self_attn.q_proj.weight"] == (
        "unsupported_quantization",
        "GPTQ g_idx of shape [10]; not dequantized",
    )
    assert reasons["model.layers.0.self_attn.k_proj.weight"] == (
        "unsupported_quantization",
        "AWQ version 'gemv' (only gemm is decoded); not dequantized",
    )
    status, reason = reasons["model.layers.0.mlp.up_proj.weight"]
    assert status == "unsupported_quantization" and "quant_state" in reason
    assert reasons["model.layers.0.mlp.gate_proj.weight"][0] == "success"
    assert len(reasons) == 4  # scales, zeros, absmax: parts of a weight, not layers


def test_safetensors_reads_only_the_rows_asked_for(tmp_path: Path) -> None:
    """A row block of a dequantized matrix is decoded from reads of those rows of its tensors,
    so memory holds one block of float32 at a time, whatever the matrix size."""
    W = torch.randn(64, 4096, generator=torch.Generator().manual_seed(9))
    blocks, scales, expected = qw.mxfp4(W)
    path = tmp_path / "w.safetensors"
    save_file({"w_blocks": blocks, "w_scales": scales}, path)
    source = SafetensorsSource([path], SourceInfo(str(path), "safetensors-file"))
    reads: list[tuple[str, int, int]] = []
    read_rows = source.read_rows

    def logged(tensor: Any, start: int, stop: int, **kw: Any) -> torch.Tensor:
        reads.append((tensor.name, start, stop))
        return read_rows(tensor, start, stop, **kw)

    source.read_rows = logged  # type: ignore[method-assign]
    (layer,) = plan_layers(source.tensors(), None)[0]
    matrix = layer.matrix(source)
    assert torch.equal(matrix.rows(10, 20, torch.float32), expected[10:20])
    assert reads == [("w_blocks", 10, 20), ("w_scales", 10, 20)]


def test_compare_float_with_gptq_subtracts_in_one_orientation(tmp_path: Path) -> None:
    """GPTQ stores Wᵀ; the update against a float base is still W_gptq − W_float, not a mix."""
    W = torch.randn(128, 96, generator=torch.Generator().manual_seed(13))
    parts, dequantized = qw.gptq(W, 4, 32)
    config = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    other = _llama_layers(tmp_path, {"self_attn.q_proj": parts}, config)
    name = "model.layers.0.self_attn.q_proj.weight"
    result = llm_audit.compare({name: W}, other, traps=False)
    (record,) = [r for r in result.records if r["name"] == name]
    (delta,) = record["delta"].values()
    noise = llm_audit.scan({name: dequantized - W}, traps=False).records[0]
    assert delta["alpha"] == pytest.approx(noise["alpha"], rel=1e-6)
    assert delta["stable_rank"] == pytest.approx(noise["stable_rank"], rel=1e-6)
