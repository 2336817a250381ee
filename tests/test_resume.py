"""The resume journal: a scan killed half way and resumed equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import llm_audit
from llm_audit.errors import ConfigError
from tests.conftest import write_shards

TIMING = ("seconds", "started")


def stack_model(folder: Path, *, layers: int, size: int) -> Path:
    """`layers` square up_proj matrices in 4 shards, random weights."""
    g = torch.Generator().manual_seed(1)
    tensors = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(size, size, generator=g)
        for i in range(layers)
    }
    return write_shards(folder, tensors, shards=4)


def without_timing(audit: dict) -> dict:
    audit["summary"] = {k: v for k, v in audit["summary"].items() if k not in TIMING}
    audit["settings"] = {k: v for k, v in audit["settings"].items() if k not in TIMING}
    return audit


def read_audit(folder: Path) -> dict:
    return without_timing(json.loads((folder / "audit.json").read_text()))


def kill_after(args: list[str], journal: Path, jobs: int) -> list[str]:
    """Start `llm-audit ARGS`, SIGKILL it once `jobs` jobs are journaled; the journaled keys."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_audit", *args, "--no-progress"], stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 180
    while not (journal.exists() and journal.read_bytes().count(b"\n") > jobs):  # + the header
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return journaled_names(journal)


def journaled_names(journal: Path) -> list[str]:
    lines = journal.read_bytes().split(b"\n")[1:-1]  # header first; last piece has no newline
    return [json.loads(line)["key"] for line in lines]


@pytest.mark.slow
def test_killed_scan_resumes_to_the_uninterrupted_report(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    # 768 x 768 with traps: a few seconds in all on two cores, long enough to kill half way
    model = stack_model(tmp_path / "m", layers=40, size=768)
    out = tmp_path / "killed"
    journal = out / ".journal.jsonl"
    first = kill_after(["scan", str(model), "--out", str(out), "--traps"], journal, jobs=10)
    assert 10 <= len(first) < 40 and not (out / "audit.json").exists()

    # the Python API keeps its journal: it shows no layer computed twice
    api_journal = tmp_path / "api.jsonl"
    shutil.copy(journal, api_journal)
    api = llm_audit.scan(model, journal=api_journal, resume=True, traps=True)
    names = journaled_names(api_journal)
    assert len(names) == len(set(names)) == 40
    assert names[: len(first)] == first

    # the CLI writes the report, then removes its journal
    code, _, err = cli("scan", model, "--out", out, "--traps", "--resume", "--no-progress")
    assert code == 0, err
    assert not journal.exists()
    code, _, err = cli("scan", model, "--out", tmp_path / "whole", "--traps", "--no-progress")
    assert code == 0, err
    assert read_audit(out) == read_audit(tmp_path / "whole")
    api.save(tmp_path / "api", ("json",))
    assert read_audit(tmp_path / "api") == read_audit(out)
    resumed = np.load(out / "spectra.npz")
    whole = np.load(tmp_path / "whole" / "spectra.npz")
    assert sorted(resumed.files) == sorted(whole.files)
    assert all(np.array_equal(resumed[k], whole[k]) for k in whole.files)


def test_a_torn_last_line_is_ignored_and_overwritten(tmp_path: Path) -> None:
    model = stack_model(tmp_path / "m", layers=6, size=64)
    journal = tmp_path / "j.jsonl"
    whole = llm_audit.scan(model, journal=journal)
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:50])  # 3 layers + a torn one
    resumed = llm_audit.scan(model, journal=journal, resume=True)
    assert resumed.records == json.loads(json.dumps(whole.records))
    names = journaled_names(journal)
    assert len(names) == len(set(names)) == 6


def test_other_settings_refuse_the_journal(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = stack_model(tmp_path / "m", layers=3, size=64)
    journal = tmp_path / "j.jsonl"
    llm_audit.scan(model, journal=journal, traps=False)
    with pytest.raises(ConfigError, match=r"traps changed.*drop --resume"):
        llm_audit.scan(model, journal=journal, resume=True, traps=True)
    with pytest.raises(ConfigError, match=r"split_qkv changed"):
        llm_audit.scan(model, journal=journal, resume=True, traps=False, split_qkv=True)

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(journal, out / ".journal.jsonl")
    args = ("scan", model, "--out", out, "--no-traps", "--resume", "--no-progress")
    code, _, err = cli(*args, "--seed", "7")
    assert code == 2 and "seed changed" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*args)
    assert code == 0, err
    assert not (out / ".journal.jsonl").exists()  # removed once the report is written

    llm_audit.scan(model, journal=journal, traps=True)  # no resume: the journal starts over
    assert len(journaled_names(journal)) == 3


def test_a_damaged_journal_line_or_a_missing_journal_is_a_one_line_error(tmp_path: Path) -> None:
    model = stack_model(tmp_path / "m", layers=4, size=16)
    journal = tmp_path / "j.jsonl"
    llm_audit.scan(model, journal=journal, traps=False)
    lines = journal.read_bytes().split(b"\n")
    lines[2] = b'{"key": "x", "record": 3}'  # a middle line with the wrong type
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(ConfigError, match="line 3 of the resume journal is not a finished job"):
        llm_audit.scan(model, journal=journal, traps=False, resume=True)
    with pytest.raises(ConfigError, match="resume needs a journal"):
        llm_audit.scan(model, traps=False, resume=True)
