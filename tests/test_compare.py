"""compare: MiniLM against a fine-tuned copy, a copy with a planted trap, a LoRA adapter."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import llm_audit
from llm_audit.compare import align, compare, effective_rank
from llm_audit.config import load_config
from llm_audit.errors import CheckpointFormatError, ConfigError
from llm_audit.jobs import Job, layer_job
from llm_audit.layers import plan_layers
from llm_audit.scheduler import schedule
from llm_audit.sources import open_source
from llm_audit.spectral.esd import Matrix
from tests.conftest import llama_tensors, write_shards

TRAPPED = "encoder.layer.2.attention.self.value.weight"


@pytest.fixture(scope="module")
def trapped_minilm(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with four entries of one value matrix set to 40 standard deviations."""
    folder = tmp_path_factory.mktemp("trapped") / "minilm-trapped"
    shutil.copytree(minilm, folder)
    state = load_file(folder / "model.safetensors")
    W = state[TRAPPED]
    for r, c in [(3, 7), (50, 100), (101, 11), (200, 250)]:
        W[r, c] = 40 * W.std()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def finetuned_minilm(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM fine-tuned here for 200 steps on a small task (is the sequence sorted?)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.AutoModel.from_pretrained(minilm)
    head = torch.nn.Linear(384, 2)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=2e-5)
    for _ in range(200):
        ids = torch.randint(1000, 2000, (8, 8))
        labels = torch.randint(0, 2, (8,))
        ids[labels == 1] = ids[labels == 1].sort(dim=1).values
        logits = head(model(input_ids=ids).last_hidden_state[:, 0])
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("finetuned") / "minilm-finetuned"
    model.save_pretrained(folder)
    return folder


def test_planted_trap_layer_tops_the_comparison(
    minilm: Path, trapped_minilm: Path, tmp_path: Path
) -> None:
    result = compare(minilm, trapped_minilm)
    summary = result.summary["others"]["minilm-trapped"]
    assert summary["most_changed"][0] == TRAPPED
    assert summary["layers_with_new_traps"] == [TRAPPED]
    assert summary["alignment"] == {"aligned": 40, "missing": 0, "extra": 0, "shape_changed": 0}
    record = next(r for r in result.records if r["name"] == TRAPPED)
    delta = record["delta"]["minilm-trapped"]
    assert record["new_flags"]["minilm-trapped"] == ["correlation_trap"]
    assert delta["effective_rank"] == pytest.approx(4, abs=0.05)  # four planted entries: rank 4
    unchanged = [r for r in result.records if r["name"] != TRAPPED and r["models"]]
    assert all(
        r["delta"]["minilm-trapped"]["status"] == "zero_matrix" for r in unchanged if r["delta"]
    )
    out = result.save(tmp_path / "cmp")
    data = json.loads((out / "compare.json").read_text())
    assert data["layers"][0]["alignment"] == {"minilm-trapped": "aligned"}
    assert (out / "compare.csv").read_text().count("\n") == 41
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for column in ("base_num_traps", "other_num_traps", "dW_num_traps", "dW_rand_num_spikes"):
        cells = {row[column] for row in rows}  # counts stay integers where a row has none
        assert all(c == "" or c.isdigit() for c in cells) and cells - {""}, (column, cells)


def test_finetune_changes_every_layer_a_little(
    minilm: Path, finetuned_minilm: Path, trapped_minilm: Path
) -> None:
    result = compare(minilm, finetuned_minilm, trapped_minilm, traps=True)
    ft = "minilm-finetuned"
    analyzed = [r for r in result.records if ft in r["delta"]]
    assert len(analyzed) == 39  # all but token_type_embeddings (too small)
    # The pooler gets no gradient from this task, so it is exactly unchanged.
    pooler = next(r for r in analyzed if r["name"] == "pooler.dense.weight")
    assert (
        pooler["delta"][ft]["status"] == "zero_matrix" and pooler["delta"][ft]["relative_norm"] == 0
    )
    rel = {r["name"]: r["delta"][ft]["relative_norm"] for r in analyzed if r is not pooler}
    assert all(0 < x < 0.2 for x in rel.values()), rel
    assert result.summary["others"][ft]["layers_with_new_traps"] == []
    assert result.summary["others"]["minilm-trapped"]["layers_with_new_traps"] == [TRAPPED]


def test_cli_compare_fail_on(cli, minilm: Path, trapped_minilm: Path, tmp_path: Path) -> None:
    code, out, err = cli(
        "compare",
        minilm,
        trapped_minilm,
        "--out",
        tmp_path / "c",
        "--no-progress",
        "--fail-on",
        "correlation_trap",
    )
    assert code == 1 and "correlation_trap" in err and TRAPPED in out
    code, _, err = cli(
        "compare", minilm, trapped_minilm, "--out", tmp_path / "c", "--fail-on", "watch"
    )
    assert code == 2 and "layer flags and far_from_base" in err


@pytest.fixture(scope="module")
def lora_adapter(
    minilm: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A rank-4 LoRA adapter on MiniLM's query/value made with peft, and the merged weights."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    model = transformers.AutoModel.from_pretrained(minilm)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    lora = peft.get_peft_model(model, config)
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # B starts at zero; give the update a spectrum
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    lora.save_pretrained(folder)
    merged = {k: v.detach().clone() for k, v in lora.merge_and_unload().state_dict().items()}
    return folder, merged


def test_lora_adapter_alone_has_the_rank_of_the_adapter(lora_adapter: tuple[Path, dict]) -> None:
    folder, _ = lora_adapter
    result = llm_audit.scan(folder, traps=False)
    assert len(result.records) == 12
    assert all(r["matrix_rank"] == 4 and r["rank_loss"] == 380 for r in result.records)
    assert result.model["source"] == "lora-adapter"


def test_lora_merged_view_equals_merging_in_memory(
    minilm: Path, lora_adapter: tuple[Path, dict]
) -> None:
    folder, merged = lora_adapter
    result = compare(minilm, folder, traps=False)
    in_memory = {r["name"]: r for r in llm_audit.scan(merged, traps=False).records}
    adapted = [r for r in result.records if r["name"].endswith(("query.weight", "value.weight"))]
    assert len(adapted) == 12
    for r in adapted:
        mine = r["models"]["adapter"]
        assert mine["alpha"] == pytest.approx(in_memory[r["name"]]["alpha"], rel=1e-6)
        assert mine["log_norm"] == pytest.approx(in_memory[r["name"]]["log_norm"], rel=1e-6)
        assert r["delta"]["adapter"]["effective_rank"] <= 4
    untouched = next(r for r in result.records if r["name"].endswith("0.output.dense.weight"))
    assert untouched["models"]["adapter"] == untouched["models"]["base"]


def test_adapter_for_another_base_is_a_clear_error(
    lora_adapter: tuple[Path, dict], tiny_llama: Path
) -> None:
    folder, _ = lora_adapter
    with pytest.raises(CheckpointFormatError, match="does not have"):
        compare(tiny_llama, folder)


def test_different_architectures_do_not_align(minilm: Path, tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="no layer aligns") as err:
        compare(minilm, tiny_llama)
    assert "embeddings.word_embeddings.weight" in str(err.value)


def test_partial_alignment_proceeds_and_lists_what_was_left_out(tmp_path: Path) -> None:
    base = llama_tensors(blocks=2)
    other = llama_tensors(blocks=3, seed=5)
    other["model.layers.0.mlp.up_proj.weight"] = torch.randn(80, 32)  # resized
    result = compare(
        write_shards(tmp_path / "a", base), write_shards(tmp_path / "b", other), traps=False
    )
    left_out = result.summary["others"]["b"]["not_aligned"]
    assert left_out["model.layers.0.mlp.up_proj.weight"] == "shape_changed"
    assert sum(s == "extra" for s in left_out.values()) == 7  # the 7 matrices of block 2
    assert {r["name"] for r in result.records if r["alignment"]["b"] == "aligned"} >= {
        "model.embed_tokens.weight"
    }


def test_align_and_effective_rank_known_answers() -> None:
    assert effective_rank(torch.tensor([4.0, 4.0, 4.0, 0.0]).numpy()) == pytest.approx(3.0)
    assert effective_rank(torch.zeros(3).numpy()) == 0.0
    assert align({}, {}) == {}


@pytest.mark.parametrize("in_files", [True, False])
def test_update_spectrum_is_that_of_the_difference(tmp_path: Path, in_files: bool) -> None:
    """ΔW's eigenvalues equal those of other − base: from row blocks of both files, or from
    in-memory state dicts (a source without partial reads, read whole per job)."""
    base, other = llama_tensors(blocks=1), llama_tensors(blocks=1, seed=9)
    if in_files:
        result = compare(
            write_shards(tmp_path / "a", base), write_shards(tmp_path / "b", other), traps=False
        )
    else:
        result = compare(base, other, traps=False)
    label = result.others[0]["label"]
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"):
        delta = (other[name].double() - base[name].double()).numpy()
        expected = np.sort(np.linalg.svd(delta, compute_uv=False) ** 2)
        ours = result.spectra[f"{label}|dW|{name}"]["evals"]
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12 * expected[-1])


def test_the_largest_matrix_is_analyzed_alone(tmp_path: Path) -> None:
    """The runner's byte budget: no other job is in flight while a vocabulary matrix is read."""
    state = {"model.embed_tokens.weight": torch.randn(4000, 32)}
    state |= {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(64, 32) for i in range(6)}
    source = open_source(state)
    layers, _ = plan_layers(source.tensors(), None)
    finished: list[str] = []
    in_flight: dict[str, int] = {}

    def watched(job: Job) -> Job:
        def read() -> Matrix:
            in_flight[job.key] = len(in_flight) - len(finished)
            return job.read()

        return Job(job.key, job.layer, read, job.nbytes, job.cost)

    jobs = [watched(layer_job(layer.name, layer, source)) for layer in layers]
    jobs.insert(3, jobs.pop(0))  # the big one in the middle, after smaller ones
    budget = max(j.nbytes for j in jobs)
    schedule(
        jobs,
        load_config(None).replace(traps=False),
        device=torch.device("cpu"),
        total=len(jobs),
        workers=2,
        budget=budget,
        on_done=lambda key, outcome: finished.append(key),
    )
    assert in_flight["model.embed_tokens.weight"] == 0
    assert max(in_flight.values()) > 0  # small jobs do overlap
