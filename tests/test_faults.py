"""Faults while scanning: shards that change under the scan, a flaky Hub, a full output disk.

Each ends in either a complete report or one clear line and exit code 2, with no partial report
and nothing corrupt left in the Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from llm_audit.result import FORMATS
from llm_audit.sources.safetensors_files import SafetensorsSource
from tests.conftest import llama_tensors, run_cli_process, write_shards
from tests.hub_server import HubServer

Cli = Callable[..., tuple[int, str, str]]
REPO = "acme/flaky"


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def _break_second_shard_on_first_read(
    monkeypatch: pytest.MonkeyPatch, shard: Path, how: Callable[[Path], None]
) -> None:
    """After the headers are listed, the first tensor read (whole or rows) breaks `shard`."""
    done = []

    def breaking(original):  # type: ignore[no-untyped-def]
        def read(self: SafetensorsSource, *args, **kwargs):  # type: ignore[no-untyped-def]
            if not done:
                done.append(True)
                how(shard)
            return original(self, *args, **kwargs)

        return read

    for name in ("read", "read_rows"):
        monkeypatch.setattr(SafetensorsSource, name, breaking(getattr(SafetensorsSource, name)))


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda p: os.truncate(p, p.stat().st_size // 2), id="truncated"),
        pytest.param(lambda p: p.unlink(), id="deleted"),
    ],
)
def test_shard_breaking_mid_scan_stops_cleanly(
    how: Callable[[Path], None],
    tiny_llama: Path,
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shard = tiny_llama / "model-00002-of-00002.safetensors"
    _break_second_shard_on_first_read(monkeypatch, shard, how)
    out = tmp_path / "report"
    code, _, err = cli("scan", tiny_llama, "--out", out, "--no-progress", "--no-traps")
    _assert_one_line_error(code, err, str(shard), "the file may have changed or be truncated")
    # no report; only the resume journal of the layers that finished before the break, if any
    assert not out.exists() or [p.name for p in out.iterdir()] == [".journal.jsonl"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


# --- a flaky Hub ------------------------------------------------------------------------------


@pytest.fixture
def hub_model(tmp_path: Path) -> Path:
    return write_shards(
        tmp_path / "served",
        llama_tensors(blocks=2, seed=3),
        shards=2,
        config={"model_type": "llama", "tie_word_embeddings": False},
    )


def _env(hub: HubServer, cache: Path, **extra: str) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(cache.parent / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **extra,
    }


def _snapshot_is_complete_or_absent(cache: Path, served: Path) -> list[str]:
    """Names of the snapshot's files, each checked to equal the served file byte for byte."""
    names = []
    for path in cache.glob("models--acme--flaky/snapshots/*/*"):
        if path.exists():  # a dangling link (no blob yet) counts as absent
            assert path.read_bytes() == (served / path.name).read_bytes(), path
            names.append(path.name)
    return sorted(names)


def _scan_hub(hub: HubServer, tmp_path: Path, out: Path) -> tuple[int, str, str]:
    return run_cli_process(
        "scan", REPO, "--out", str(out), "--no-traps", "--no-progress", "--format", "json",
        env=_env(hub, tmp_path / "cache"), timeout=240,
    )  # fmt: skip


@pytest.mark.slow
def test_hub_500s_then_success(hub_model: Path, tmp_path: Path) -> None:
    with HubServer({REPO: hub_model}) as hub:
        hub.fail("/cdn/*model-00001-of-00002.safetensors", status=500, times=2)
        code, _, err = _scan_hub(hub, tmp_path, tmp_path / "out")
        tries = hub.requested_files().count("model-00001-of-00002.safetensors")
    assert code == 0, err
    assert tries >= 3  # two failures, then the retry that worked
    assert "model-00001-of-00002.safetensors" in _snapshot_is_complete_or_absent(
        tmp_path / "cache", hub_model
    )


@pytest.mark.slow
def test_hub_dropping_the_connection_once_is_retried(hub_model: Path, tmp_path: Path) -> None:
    with HubServer({REPO: hub_model}) as hub:
        hub.fail("/cdn/*model-00002-of-00002.safetensors", drop_after=100, times=1)
        code, _, err = _scan_hub(hub, tmp_path, tmp_path / "out")
    assert code == 0, err
    files = _snapshot_is_complete_or_absent(tmp_path / "cache", hub_model)
    assert "model-00002-of-00002.safetensors" in files


@pytest.mark.slow
def test_hub_timing_out_once_is_retried_and_always_is_one_line(
    hub_model: Path, tmp_path: Path
) -> None:
    slow = {"HF_HUB_DOWNLOAD_TIMEOUT": "1", "HF_HUB_ETAG_TIMEOUT": "1"}
    with HubServer({REPO: hub_model}) as hub:
        hub.fail("/cdn/*model-00001-of-00002.safetensors", delay=3, times=1)
        code, _, err = run_cli_process(
            "scan", REPO, "--out", str(tmp_path / "once"), "--no-traps", "--no-progress",
            env={**_env(hub, tmp_path / "cache"), **slow}, timeout=240,
        )  # fmt: skip
        assert code == 0, err
        # the slow answer was abandoned at the 1 s timeout and the file fetched again
        assert hub.requested_files().count("model-00001-of-00002.safetensors") >= 2
        hub.fail("/cdn/*model-00002-of-00002.safetensors", delay=3)
        code, _, err = run_cli_process(
            "scan", REPO, "--out", str(tmp_path / "always"), "--no-traps", "--no-progress",
            env={**_env(hub, tmp_path / "cache2"), **slow}, timeout=240,
        )  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("llm-audit: error:") and REPO in err.splitlines()[-1]
    assert not (tmp_path / "always").exists()


@pytest.mark.slow
def test_hub_always_dropping_the_connection_is_one_line(hub_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with HubServer({REPO: hub_model}) as hub:
        hub.fail("/cdn/*model-00002-of-00002.safetensors", drop_after=100)
        code, _, err = _scan_hub(hub, tmp_path, out)
    # huggingface_hub logs its own resume attempts to stderr before our one line
    assert code == 2 and "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("llm-audit: error:")]
    assert ours == [err.splitlines()[-1]], err
    assert REPO in ours[0] and "cannot fetch from the Hub" in ours[0]
    assert not out.exists()
    files = _snapshot_is_complete_or_absent(tmp_path / "cache", hub_model)
    assert "model-00002-of-00002.safetensors" not in files


# --- a full disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def _tiny_disk(folder: Path, size: str = "16k") -> Iterator[Path]:
    """A 16 kB tmpfs at `folder` (needs root); skips the test where it cannot be mounted."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_full_output_disk_is_one_line_and_leaves_no_report(
    tiny_llama: Path, tmp_path: Path, cli: Cli
) -> None:
    with _tiny_disk(tmp_path / "disk") as disk:
        out = disk / "report"
        code, _, err = cli("scan", tiny_llama, "--out", out, "--no-progress", "--no-traps")
        staging = [p.name for p in disk.iterdir() if p.name.startswith(".report")]  # or lock
        reports = [p.name for p in out.glob("*") if p.name in FORMATS.values()]
    _assert_one_line_error(code, err, str(out), "No space left on device")
    assert staging == [] and reports == []  # no half-written report (a resume journal may stay)


def test_disk_full_at_the_first_journal_line_is_said_once_and_leaves_no_journal(
    tmp_path: Path, cli: Cli
) -> None:
    g = torch.Generator().manual_seed(0)
    model = write_shards(  # each layer's journal line (record and spectra) is over 4 kB
        tmp_path / "m", {"model.layers.0.mlp.up_proj.weight": torch.randn(128, 128, generator=g)}
    )
    with _tiny_disk(tmp_path / "disk", "4k") as disk:
        out = disk / "report"
        code, _, err = cli("scan", model, "--out", out, "--no-progress", "--no-traps")
        left = sorted(p.name for p in disk.rglob("*"))
    _assert_one_line_error(code, err, "resume journal", "No space left on device")
    assert err.count("No space left on device") == 1
    assert left == []  # no empty journal, no report folder, no lock


def test_unwritable_output_folder_is_one_line(tiny_llama: Path, tmp_path: Path, cli: Cli) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = cli("scan", tiny_llama, "--out", blocker / "report", "--no-progress")
    _assert_one_line_error(code, err, str(blocker / "report"), "cannot create the folder")
    assert blocker.read_text() == "not a folder"


# --- SIGTERM, as schedulers and `timeout` send it ----------------------------------------------


def test_sigterm_while_the_report_is_staged_is_one_line_and_leaves_it_resumable(
    tiny_llama: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    def terminated_while_staging(table: object, path: Path) -> None:
        path.write_text("half")  # a file of the staged report, then the signal arrives
        os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "reports" / "out"
    monkeypatch.setattr("llm_audit.result.write_csv", terminated_while_staging)
    code, _, err = cli("scan", tiny_llama, "--out", out, "--no-progress", "--no-traps")
    assert code == 143, err
    assert err.count("\n") == 1 and err.startswith("llm-audit: terminated (SIGTERM); ")
    assert "--resume" in err
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == ["out"]  # no staging folder, no lock file
    assert sorted(p.name for p in out.iterdir()) == [".journal.jsonl"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the CLI's only
    monkeypatch.undo()
    code, _, err = cli("scan", tiny_llama, "--out", out, "--no-progress", "--no-traps", "--resume")
    assert code == 0, err
    assert (out / "audit.json").exists() and not (out / ".journal.jsonl").exists()


@pytest.mark.slow
def test_a_real_sigterm_mid_scan_exits_143_with_one_line(tmp_path: Path) -> None:
    import signal
    import sys
    import time

    g = torch.Generator().manual_seed(0)
    model = write_shards(
        tmp_path / "m",
        {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(512, 512, generator=g)
         for i in range(40)},
    )  # fmt: skip
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_audit", "scan", str(model), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    journal, deadline = out / ".journal.jsonl", time.monotonic() + 180
    while not (journal.exists() and journal.read_bytes().count(b"\n") > 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the scan ended first"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)  # within 10 s
    assert proc.returncode == 143, err
    ours = [line for line in err.split("\n") if "llm-audit:" in line]
    assert len(ours) == 1 and ours[0].startswith("llm-audit: terminated (SIGTERM); "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out"]  # no lock, no staging
    assert journal.exists()
