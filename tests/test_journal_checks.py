"""A resume journal is checked, not trusted: every job line carries a checksum of its content and is
validated against the schema; a line edited by hand or damaged on disk refuses the journal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import llm_audit
from llm_audit.errors import ConfigError
from llm_audit.journal import _digest, is_journal_name
from tests.conftest import write_shards


@pytest.fixture
def journaled(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-layer model and the journal of its scan (a header and three job lines)."""
    g = torch.Generator().manual_seed(2)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(24, 24, generator=g)
               for i in range(3)}  # fmt: skip
    model = write_shards(tmp_path / "m", tensors, shards=1)
    journal = tmp_path / "j.jsonl"
    llm_audit.scan(model, journal=journal, traps=True, seed=0)
    assert journal.read_text().count("\n") == 4
    return model, journal


def _edit(journal: Path, change: Callable[[dict[str, Any]], None], *, resign: bool) -> None:
    """Change the second job line; with `resign`, recompute its checksum as a forger would."""
    lines = journal.read_text().splitlines(keepends=True)
    entry = json.loads(lines[2])
    change(entry)
    if resign:
        entry["sha256"] = _digest({"key": None, "record": None, "spectra": None, **entry})
    lines[2] = json.dumps(entry) + "\n"
    journal.write_text("".join(lines))


def _resume(model: Path, journal: Path) -> llm_audit.AuditResult:
    return llm_audit.scan(model, journal=journal, resume=True, traps=True, seed=0)


def test_an_intact_journal_is_resumed_whole(journaled: tuple[Path, Path]) -> None:
    model, journal = journaled
    first = json.loads(journal.read_text().splitlines()[2])["record"]
    resumed = _resume(model, journal)
    assert next(r for r in resumed.records if r["name"] == first["name"])["alpha"] == first["alpha"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("alpha", 1.5), ("num_traps", 99), ("rand_num_spikes", 77), ("name", "model.other.weight")],
)
def test_an_edited_value_fails_the_checksum(
    journaled: tuple[Path, Path], field: str, value: object
) -> None:
    model, journal = journaled
    _edit(journal, lambda e: e["record"].__setitem__(field, value), resign=False)
    with pytest.raises(ConfigError, match=r"line 3 of the resume journal .* fails its checksum"):
        _resume(model, journal)


def test_edited_spectra_fail_the_checksum(journaled: tuple[Path, Path]) -> None:
    model, journal = journaled
    _edit(journal, lambda e: e["spectra"].__setitem__("evals", "AAAAAAAAAAA="), resign=False)
    with pytest.raises(ConfigError, match="fails its checksum"):
        _resume(model, journal)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda e: e["record"].__setitem__("alpha", "1.5"), "alpha is not a number"),
        (lambda e: e["record"].__setitem__("num_traps", True), "num_traps is not a number"),
        (lambda e: e["record"].__setitem__("status", 3), "status is not text"),
        (lambda e: e.__setitem__("record", [1, 2]), "record or spectra that is not a mapping"),
        (lambda e: e.pop("spectra"), "does not hold exactly the fields"),
        (lambda e: e.__setitem__("key", 7), "key or checksum that is not text"),
        (lambda e: e["spectra"].__setitem__("evals", "AAA="), "not base64 float64 values"),
    ],
)
def test_a_line_against_the_schema_is_refused_even_with_a_valid_checksum(
    journaled: tuple[Path, Path], change: Callable[[dict[str, Any]], None], says: str
) -> None:
    model, journal = journaled
    _edit(journal, change, resign=True)
    with pytest.raises(ConfigError, match=says):
        _resume(model, journal)


@pytest.mark.parametrize(
    "damage",
    [
        lambda line: line[: len(line) // 2] + b"\n",  # cut in the middle, then a newline
        lambda line: b'{"key": "a", "key": "b"}\n',  # a key twice
        lambda line: b"[" * 100 + b"\n",  # nested past the limit
    ],
)
def test_a_damaged_middle_line_is_refused(
    journaled: tuple[Path, Path], damage: Callable[[bytes], bytes]
) -> None:
    model, journal = journaled
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = damage(lines[2])
    journal.write_bytes(b"".join(lines))
    with pytest.raises(ConfigError, match="line 3 of the resume journal") as caught:
        _resume(model, journal)
    assert "drop --resume to start over" in str(caught.value)


def test_journal_names() -> None:
    assert is_journal_name(".journal.jsonl") and is_journal_name(".journal.rank12.jsonl")
    assert not is_journal_name(".journal.rankx.jsonl") and not is_journal_name("journal.jsonl")
