"""Shared fixtures: tiny real checkpoints written into tmp_path, the bundled MiniLM, CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import llm_audit
from llm_audit.cli import main
from llm_audit.sources import bundled_model_path


@pytest.fixture(autouse=True)
def _isolated_hub(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets an empty Hugging Face cache and no network to the real Hub."""
    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def minilm() -> Path:
    return bundled_model_path()


@pytest.fixture(scope="session")
def minilm_scan() -> llm_audit.AuditResult:
    """The bundled MiniLM scanned with traps (seed 0), once for every module that reads it (the
    WeightWatcher parity, trap and report tests); treat it as read-only."""
    return llm_audit.scan(traps=True, seed=0)


def write_shards(
    folder: Path, tensors: dict[str, torch.Tensor], shards: int = 1, config: dict | None = None
) -> Path:
    """A Hub-layout folder: one model.safetensors, or `shards` files plus an index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for i in range(shards):
            part = names[i::shards]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in part}, str(folder / fname))
            weight_map.update(dict.fromkeys(part, fname))
        index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def llama_tensors(
    blocks: int = 3, hidden: int = 32, inter: int = 64, vocab: int = 100, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g)
    }
    for b in range(blocks):
        p = f"model.layers.{b}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{name}.weight"] = torch.randn(hidden, hidden, generator=g)
        t[p + "mlp.gate_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[p + "mlp.up_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[p + "mlp.down_proj.weight"] = torch.randn(hidden, inter, generator=g)
        t[p + "input_layernorm.weight"] = torch.ones(hidden)
    t["model.norm.weight"] = torch.ones(hidden)
    t["lm_head.weight"] = torch.randn(vocab, hidden, generator=g)
    return t


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    """A 3-block Llama-shaped model in 2 shards with an index, random weights."""
    return write_shards(
        tmp_path / "tiny-llama",
        llama_tensors(),
        shards=2,
        config={"model_type": "llama", "tie_word_embeddings": False},
    )


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `llm-audit ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_cli_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[int, str, str]:
    """Run `python -m llm_audit ARGS` in a fresh process (for settings read at import time)."""
    full_env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "llm_audit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global torch RNG state."""
    torch.manual_seed(0)
