"""Two scans of one model with one seed give byte-identical audit.json, timing fields aside."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_audit.result import versions

Cli = Callable[..., tuple[int, str, str]]
TIMING = (("summary", "seconds"), ("settings", "started"))


def _without_timing(text: str) -> str:
    audit: dict[str, Any] = json.loads(text)
    for section, key in TIMING:
        assert key in audit[section]
        audit[section][key] = None
    return json.dumps(audit, indent=1)


def test_same_seed_same_bytes_on_one_process(tiny_llama: Path, tmp_path: Path, cli: Cli) -> None:
    texts = []
    for run in ("a", "b"):
        out = tmp_path / run
        code, _, err = cli(
            "scan", tiny_llama, "--out", out, "--seed", "7", "--no-progress", "--format", "json"
        )
        assert code == 0, err
        texts.append((out / "audit.json").read_text())
    assert _without_timing(texts[0]) == _without_timing(texts[1])
    # the raw files differ at most in the timing fields' lines
    lines = [t.splitlines() for t in texts]
    differing = {a.split(":")[0].strip() for a, b in zip(*lines, strict=True) if a != b}
    assert differing <= {'"seconds"', '"started"'}, differing


def test_seed_and_every_library_version_are_recorded(
    tiny_llama: Path, tmp_path: Path, cli: Cli
) -> None:
    out = tmp_path / "r"
    code, _, err = cli("scan", tiny_llama, "--out", out, "--seed", "7", "--no-progress")
    assert code == 0, err
    settings = json.loads((out / "audit.json").read_text())["settings"]
    assert settings["seed"] == 7
    recorded = settings["versions"]
    assert recorded == versions()
    for package in ("python", "llm-audit", "torch", "numpy", "safetensors", "huggingface_hub"):
        assert recorded[package] not in ("", "unknown"), package
