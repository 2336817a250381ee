"""Fused qkv matrices split into q, k and v by config.json's head counts (`--split-qkv`).

Each model is made by `transformers` from its config with random weights and saved as
safetensors. The split matrices must be the fused tensor's rows for q, k and v, and (the check
that the layout is the model's own) applied to the attention input they must give the keys and
values transformers caches: v at every position, k at position 0 where rotary is the identity.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import llm_audit
from llm_audit.jobs import oriented
from llm_audit.layers import Layer, plan_layers
from llm_audit.sources import open_source
from tests.conftest import write_shards

transformers = pytest.importorskip("transformers")

SEQ = 3


def save_model(folder: Path, model: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def gpt2(folder: Path) -> tuple[Path, Any]:
    config = transformers.GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).eval()
    return save_model(folder, model), model


def phi3_gqa(folder: Path) -> tuple[Path, Any]:
    config = transformers.Phi3Config(
        hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=96,
        num_hidden_layers=2, vocab_size=50, pad_token_id=0,
    )  # fmt: skip
    model = transformers.Phi3ForCausalLM(config).eval()
    return save_model(folder, model), model


def gpt_neox(folder: Path) -> tuple[Path, Any]:
    config = transformers.GPTNeoXConfig(
        hidden_size=64, num_attention_heads=4, intermediate_size=96, num_hidden_layers=2,
        vocab_size=50,
    )  # fmt: skip
    model = transformers.GPTNeoXForCausalLM(config).eval()
    return save_model(folder, model), model


def falcon_gqa(folder: Path) -> tuple[Path, Any]:
    config = transformers.FalconConfig(
        hidden_size=64, num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True,
        num_hidden_layers=2, vocab_size=50, bias=True,
    )  # fmt: skip
    model = transformers.FalconForCausalLM(config).eval()
    return save_model(folder, model), model


def falcon_mqa(folder: Path) -> tuple[Path, Any]:
    config = transformers.FalconConfig(
        hidden_size=64, num_attention_heads=4, multi_query=True, num_hidden_layers=2,
        vocab_size=50,
    )  # fmt: skip
    model = transformers.FalconForCausalLM(config).eval()
    return save_model(folder, model), model


# model maker, fused tensor of block 0, its module path, (q, k, v) rows
CASES = {
    "gpt2": (gpt2, "transformer.h.0.attn.c_attn.weight", (64, 64, 64)),
    "phi3-gqa": (phi3_gqa, "model.layers.0.self_attn.qkv_proj.weight", (64, 16, 16)),
    "gpt-neox": (gpt_neox, "gpt_neox.layers.0.attention.query_key_value.weight", (64, 64, 64)),
    "falcon-gqa": (falcon_gqa, "transformer.h.0.self_attention.query_key_value.weight",
                   (64, 16, 16)),
    "falcon-mqa": (falcon_mqa, "transformer.h.0.self_attention.query_key_value.weight",
                   (64, 16, 16)),
}  # fmt: skip


def split_layers(folder: Path, fused: str) -> tuple[dict[str, Layer], dict[str, torch.Tensor]]:
    """The q, k, v layers of `fused` with --split-qkv, and their (out, in) matrices as read."""
    with open_source(folder) as source:
        layers, _ = plan_layers(source.tensors(), source.info.config, split_qkv=True)
        parts = {layer.role: layer for layer in layers if layer.tensor.name == fused}
        mats = {role: oriented(layer.read(source), layer) for role, layer in parts.items()}
    return parts, mats


def attention_input_and_cache(model: Any, fused: str) -> tuple[torch.Tensor, Any, Any]:
    """The input of block 0's fused projection, and the keys and values transformers caches."""
    module = model.get_submodule(fused.removesuffix(".weight"))
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3]]), use_cache=True)
    handle.remove()
    cache = out.past_key_values.layers[0]
    return seen[0][0], cache.keys[0], cache.values[0]  # (seq, in), (heads, seq, head_dim) x2


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_matrices_are_the_models_own_q_k_v(tmp_path: Path, case: str) -> None:
    make, fused, sizes = CASES[case]
    folder, model = make(tmp_path / case)
    parts, mats = split_layers(folder, fused)
    assert sorted(parts) == ["k", "q", "v"]
    assert [parts[r].name for r in "qkv"] == [f"{fused}[{r}]" for r in "qkv"]
    assert [mats[r].shape for r in "qkv"] == [(n, 64) for n in sizes]
    assert [parts[r].out_in for r in "qkv"] == [(n, 64) for n in sizes]

    # The three are the fused tensor's rows, each row exactly once.
    W = load_file(str(folder / "model.safetensors"))[fused]
    W = W.T if case == "gpt2" else W  # Conv1D stores (in, out)
    rows = torch.cat([parts[r].rows.index() for r in "qkv"])  # type: ignore[union-attr]
    assert sorted(rows.tolist()) == list(range(W.shape[0]))
    for r in "qkv":
        assert torch.equal(mats[r], W[parts[r].rows.index()])  # type: ignore[union-attr]

    # And they are the model's: W_v x (+ bias) is the cached value, W_k x the key at position 0.
    x, keys, values = attention_input_and_cache(model, fused)
    bias = model.get_submodule(fused.removesuffix(".weight")).bias
    head_dim = keys.shape[-1]
    for role, cached, positions in (("v", values, slice(None)), ("k", keys, slice(0, 1))):
        b = 0 if bias is None else bias[parts[role].rows.index()]  # type: ignore[union-attr]
        ours = (x @ mats[role].T + b).reshape(SEQ, -1, head_dim).transpose(0, 1)
        if cached.shape[0] > ours.shape[0]:  # Falcon caches k/v repeated for each query head
            cached = cached[:: cached.shape[0] // ours.shape[0]]
        torch.testing.assert_close(ours[:, positions], cached[:, positions])


def test_scan_split_qkv_names_roles_and_spectra(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    folder, _ = phi3_gqa(tmp_path / "phi3")
    code, _, err = cli("scan", folder, "--out", tmp_path / "A", "--split-qkv", "--no-progress")
    assert code == 0, err
    records = json.loads((tmp_path / "A" / "audit.json").read_text())["layers"]
    by_name = {r["name"]: r for r in records}
    base = "model.layers.1.self_attn.qkv_proj.weight"
    assert [(by_name[f"{base}[{r}]"]["role"], by_name[f"{base}[{r}]"]["shape"]) for r in "qkv"] == [
        ("q", [64, 64]), ("k", [16, 64]), ("v", [16, 64])
    ]  # fmt: skip
    assert base not in by_name and all(r["role"] != "qkv" for r in records)
    names = [r["name"] for r in records]
    assert names.index(f"{base}[q]") + 2 == names.index(f"{base}[v]")  # q, k, v in order

    # The eigenvalues are those of the k rows alone.
    _, mats = split_layers(folder, base)
    spectra = llm_audit.scan(folder, split_qkv=True, traps=False).spectra
    expected = torch.linalg.eigvalsh(mats["k"].double() @ mats["k"].double().T).numpy()
    got = spectra[f"{base}[k]"]["evals"]
    assert sorted(got) == pytest.approx(sorted(expected), rel=1e-9, abs=1e-12)


def test_default_keeps_fused_qkv_whole(tmp_path: Path) -> None:
    folder, _ = gpt2(tmp_path / "gpt2")
    result = llm_audit.scan(folder, traps=False)
    fused = [r for r in result.records if r["name"].endswith("c_attn.weight")]
    assert [(r["role"], r["shape"]) for r in fused] == [("qkv", [192, 64])] * 2


def test_head_counts_that_do_not_fit_are_one_line_exit_2(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = phi3_gqa(tmp_path / "phi3")
    capsys.readouterr()  # transformers' saving progress bar
    config = json.loads((folder / "config.json").read_text())
    config["num_key_value_heads"] = 4  # 64 + 2 x 32 rows, but qkv_proj has 96
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = cli("scan", folder, "--out", tmp_path / "A", "--split-qkv")
    assert code == 2 and err.count("\n") == 1, err
    assert "qkv_proj.weight" in err and "96 output rows" in err and "give 128" in err
    code, _, err = cli("scan", folder, "--out", tmp_path / "B", "--no-progress")
    assert code == 0, err  # without the option the config is not consulted


def test_missing_head_count_and_unknown_layout_are_errors(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = gpt2(tmp_path / "gpt2")
    capsys.readouterr()  # transformers' saving progress bar
    config = json.loads((folder / "config.json").read_text())
    del config["n_head"]
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = cli("scan", folder, "--out", tmp_path / "A", "--split-qkv")
    assert code == 2 and "number of attention heads" in err and err.count("\n") == 1, err

    g = torch.Generator().manual_seed(0)
    tensors = {f"blocks.{b}.attn.qkv.weight": torch.randn(96, 32, generator=g) for b in range(2)}
    other = write_shards(tmp_path / "generic", tensors, config={"num_attention_heads": 4})
    code, _, err = cli("scan", other, "--out", tmp_path / "B", "--split-qkv")
    assert code == 2 and "no q/k/v layout" in err and "blocks.0.attn.qkv.weight" in err, err


def test_family_files_reject_unknown_layouts() -> None:
    from llm_audit.architectures import parse_family

    entry = {"name": "h.{block}.attn.c_attn.weight", "role": "qkv", "fused_qkv": "interleaved"}
    with pytest.raises(ValueError, match="unknown fused_qkv layout 'interleaved'"):
        parse_family({"family": "x", "model_types": [], "tensors": [entry]}, "x.json")


def test_nonsense_head_counts_are_refused_even_when_they_add_up() -> None:
    from llm_audit.errors import ConfigError
    from llm_audit.qkv import split_rows

    config = {"num_attention_heads": 16, "head_dim": 8, "num_key_value_heads": -2}
    with pytest.raises(ConfigError, match="at least 1"):  # 16*8 + 2*(-2)*8 = 96 rows
        split_rows("contiguous", 96, config, tensor="qkv_proj.weight")
