"""Exit codes CI can believe: 1 only when `--fail-on` fires, 2 for every anticipated bad input (one
line naming the file or argument and the fix), 3 for a bug (one line saying so and how to get the
traceback), 130 for Ctrl-C (on its own line, saying how to resume).

Every command is driven with broken inputs; none may exit 1, print a traceback, or say more than
one line.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import llm_audit
from llm_audit.journal import JOURNAL_NAME
from tests.conftest import run_cli_process, write_shards
from tests.corpus.make_corpus import CASES
from tests.test_untrusted import ALIAS_BOMB

Cli = Callable[..., tuple[int, str, str]]
SCAN_MODULE = importlib.import_module("llm_audit.scan")  # `llm_audit.scan` is the function


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good tiny model, a good audit.json, and broken files of every kind the commands read."""
    root = tmp_path_factory.mktemp("broken")
    g = torch.Generator().manual_seed(0)
    write_shards(root / "good", {"w.weight": torch.randn(16, 16, generator=g)})
    result = llm_audit.scan(root / "good", traps=False)
    result.save(root / "report", ("json",))
    audit = json.loads((root / "report" / "audit.json").read_text())
    (root / "flags_a_string.json").write_text(
        json.dumps({**audit, "layers": [{**audit["layers"][0], "flags": "alpha_lt_2"}]})
    )
    (root / "alpha_text.json").write_text(
        json.dumps({**audit, "layers": [{**audit["layers"][0], "alpha": "2.5"}]})
    )
    (root / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "bomb.yaml").write_text(ALIAS_BOMB)
    (root / "list.yaml").write_text("- 1\n- 2\n")
    os.mkfifo(root / "fifo.json")
    for name in ("adapter_r_zero", "adapter_r_text", "adapter_r_not_the_rank"):
        (root / name).mkdir()
        CASES[name].write(root / name)
    (root / "fifo_model").mkdir()
    os.mkfifo(root / "fifo_model" / "model.safetensors")
    return root


# (command line, a fragment of the one line) with {root} the inputs folder, {out} a fresh folder.
BROKEN = {
    "scan-missing-path": (["scan", "{root}/nothere", "--out", "{out}"], "not a Hub id"),
    "scan-hub-id-5000-chars": (["scan", "a" * 5000, "--out", "{out}"], "not a Hub id"),
    "scan-hub-id-dot-dot": (["scan", "a/..", "--out", "{out}"], "not a Hub id"),
    "scan-fifo-weights": (["scan", "{root}/fifo_model", "--out", "{out}"], "is a FIFO"),
    "scan-adapter-r-zero": (["scan", "{root}/adapter_r_zero", "--out", "{out}"], "positive"),
    "scan-adapter-r-text": (["scan", "{root}/adapter_r_text", "--out", "{out}"], "'four'"),
    "scan-adapter-wrong-r": (["scan", "{root}/adapter_r_not_the_rank", "--out", "{out}"], "r is"),
    "scan-config-alias-bomb": (
        ["scan", "{root}/good", "--config", "{root}/bomb.yaml", "--out", "{out}"],
        "through its aliases",
    ),
    "scan-config-fifo": (
        ["scan", "{root}/good", "--config", "{root}/fifo.json", "--out", "{out}"],
        "is a FIFO",
    ),
    "scan-config-a-list": (
        ["scan", "{root}/good", "--config", "{root}/list.yaml", "--out", "{out}"],
        "must be a YAML mapping",
    ),
    "scan-layers-lookahead": (
        ["scan", "{root}/good", "--layers", "(?=w)", "--out", "{out}"],
        "invalid regular expression '(?=w)' for RE2",
    ),
    "scan-layers-backreference": (
        ["scan", "{root}/good", "--layers", r"(w)\1", "--out", "{out}"],
        "backreferences",
    ),
    "scan-format-unknown": (["scan", "{root}/good", "--format", "xls", "--out", "{out}"], "xls"),
    "scan-fail-on-unknown": (["scan", "{root}/good", "--fail-on", "x", "--out", "{out}"], "x"),
    "scan-out-is-a-file": (["scan", "{root}/good", "--out", "{root}/bomb.yaml"], "not a folder"),
    "scan-out-holds-other-files": (["scan", "{root}/good", "--out", "{root}"], "did not write"),
    "scan-out-is-dot-dot": (["scan", "{root}/good", "--out", "{root}/x/.."], "a named folder"),
    "describe-fifo-weights": (["describe", "{root}/fifo_model"], "is a FIFO"),
    "describe-adapter-r-text": (["describe", "{root}/adapter_r_text"], "'four'"),
    "describe-hub-id-5000-chars": (["describe", "b" * 5000], "not a Hub id"),
    "compare-adapter-wrong-r": (
        ["compare", "{root}/good", "{root}/adapter_r_not_the_rank", "--out", "{out}"],
        "r is 64",
    ),
    "compare-missing-other": (
        ["compare", "{root}/good", "{root}/nothere", "--out", "{out}"],
        "not a Hub id",
    ),
    "render-nested": (["render", "{root}/nested.json"], "nested too deeply"),
    "render-flags-a-string": (["render", "{root}/flags_a_string.json"], "layers[0].flags"),
    "render-alpha-text": (["render", "{root}/alpha_text.json"], "layers[0].alpha"),
    "render-fifo": (["render", "{root}/fifo.json"], "is a FIFO"),
    "render-missing": (["render", "{root}/nothere.json"], "does not exist"),
    "render-a-folder": (["render", "{root}"], "is a folder"),
    "calibrate-alias-bomb": (["calibrate", "modadd", "--config", "{root}/bomb.yaml"], "alias"),
    "calibrate-missing-config": (["calibrate", "mnist", "--config", "{root}/no.yaml"], "no.yaml"),
    "usage-unknown-command": (["explode"], "invalid choice"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_input_is_exit_2_and_one_line(
    name: str, inputs: Path, tmp_path: Path, cli: Cli
) -> None:
    args, says = BROKEN[name]
    argv = [a.format(root=inputs, out=tmp_path / "out") for a in args]
    code, _, err = cli(*argv, *(["--no-progress"] if argv[0] in ("scan", "compare") else []))
    assert code == 2, f"{name}: exit {code}\n{err}"  # never 1: that means a --fail-on fired
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("llm-audit: error: ") and says in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", [b"root:x:0:0:root:/root:/bin/bash\n" * 9, b"ABCDEFG\x00{}"])
def test_no_message_echoes_the_bytes_of_a_file(text: bytes, tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(text)  # not safetensors: a secret, say
    code, _, err = cli("scan", folder, "--out", tmp_path / "out", "--no-progress")
    (length,) = struct.unpack("<Q", text[:8])
    assert code == 2 and "Traceback" not in err and str(length) not in err, err
    assert "root:" not in err and "ABCDEFG" not in err


def test_a_damaged_journal_is_exit_2(inputs: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    out.mkdir()
    header = {"journal": 3, "fingerprint": {}}
    (out / JOURNAL_NAME).write_text(json.dumps(header) + '\n{"key": "w", "rec\n')
    code, _, err = cli("scan", inputs / "good", "--out", out, "--resume", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "resume journal" in err, err


@pytest.fixture(params=[ZeroDivisionError("division by zero"), KeyError("x"), OSError(5, "I/O")])
def crashing_scan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bug: the scan itself raises an exception nobody anticipated; its class name."""
    error = request.param

    def scan(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(SCAN_MODULE, "scan", scan)
    return type(error).__name__


def test_a_bug_is_exit_3_with_one_line(
    crashing_scan: str, inputs: Path, tmp_path: Path, cli: Cli
) -> None:
    code, _, err = cli("scan", inputs / "good", "--out", tmp_path / "out", "--no-progress")
    assert code == 3
    assert err == (
        f"llm-audit: internal error ({crashing_scan}): this is a bug in llm-audit; rerun with "
        "--debug or LLM_AUDIT_DEBUG=1 for the traceback, and report it\n"
    )


@pytest.mark.parametrize("how", ["--debug", "LLM_AUDIT_DEBUG=1"])
def test_the_traceback_of_a_bug_on_request(
    how: str,
    crashing_scan: str,
    inputs: Path,
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = [how] if how.startswith("--") else []
    if not extra:
        monkeypatch.setenv("LLM_AUDIT_DEBUG", "1")
    code, _, err = cli("scan", inputs / "good", "--out", tmp_path / "out", "--no-progress", *extra)
    assert code == 3
    assert "Traceback" in err and f"\n{crashing_scan}" in err
    assert err.splitlines()[-1].startswith(f"llm-audit: internal error ({crashing_scan})")


def test_each_rank_names_itself(inputs: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = cli("describe", inputs / "nothere")
    assert code == 2 and err.startswith("llm-audit: error (rank 1 of 2): "), err


@pytest.mark.slow
def test_a_closed_stdout_is_141_and_silent(inputs: Path) -> None:
    """`llm-audit describe m | head` whose reader has gone: not exit 1 (a flag), not 3 (a bug)."""
    command = [sys.executable, "-m", "llm_audit", "describe", str(inputs / "good")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the first write, which then fails with EPIPE
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""


@pytest.mark.parametrize("finished", [True, False])
def test_ctrl_c_ends_on_its_own_line_and_says_how_to_resume(
    finished: bool, inputs: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def interrupted(*args: object, journal: Path, **kwargs: object) -> None:
        if finished:  # a layer was journaled before the key press
            journal.parent.mkdir(parents=True, exist_ok=True)
            journal.write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(SCAN_MODULE, "scan", interrupted)
    code, _, err = cli("scan", inputs / "good", "--out", out)  # with the progress bar
    assert code == 130
    assert err.startswith("\nllm-audit: interrupted; ") and err.count("\n") == 2, repr(err)
    if finished:
        assert f"journaled in {out}/; rerun the same command with --resume" in err
    else:
        assert "nothing was written; rerun the same command to start over" in err


def test_fail_on_is_the_only_exit_1(inputs: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    code, _, err = cli(
        "scan", inputs / "good", "--out", out, "--no-progress", "--no-traps", "--fail-on",
        "alpha_lt_2,alpha_gt_6,correlation_trap,alpha_fit_failed,watch,pathological",
    )  # fmt: skip
    assert code == 1 and "--fail-on fired" in err, err


@pytest.mark.slow
def test_a_backtracking_layers_pattern_cannot_hang_the_scan(tmp_path: Path) -> None:
    # `(a+)+$` against a long run of "a" and one other character takes Python's `re` about
    # 2**40 steps; RE2 answers at once. A hang fails this test through the process timeout.
    name = "a" * 40 + "!.weight"
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({name: torch.randn(16, 16)}, str(folder / "model.safetensors"))
    code, _, err = run_cli_process(
        "scan", str(folder), "--layers", "(a+)+$", "--out", str(tmp_path / "o"), "--no-progress",
        timeout=120,
    )  # fmt: skip
    assert code == 2 and "no weight matrices to analyze match --layers" in err, err
    code, _, err = run_cli_process(
        "scan", str(folder), "--layers", "(a+)+!", "--out", str(tmp_path / "o"), "--no-progress",
        "--no-traps", "--format", "json", timeout=120,
    )  # fmt: skip
    assert code == 0, err
    audit = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert [layer["name"] for layer in audit["layers"]] == [name]


@pytest.mark.slow
def test_render_of_deep_json_in_a_fresh_process(inputs: Path) -> None:
    code, _, err = run_cli_process("render", str(inputs / "nested.json"))
    assert code == 2 and err.count("\n") == 1 and "nested too deeply" in err, err


@pytest.mark.slow
def test_a_real_ctrl_c_says_how_to_resume_and_the_resume_works(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    # Large enough that the scan (about 6 s here) is still running when the journal, which
    # fsyncs each line on a thread of its own and may lag, shows two layers (192² layers took
    # 1.1 s in all, 0.7 s after the journal showed them).
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(512, 512, generator=g)
               for i in range(40)}  # fmt: skip
    save_file(tensors, str(folder / "model.safetensors"))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "llm_audit", "scan", str(folder), "--out", str(out)]
    # A shell that starts a job in the background without job control has it ignore SIGINT,
    # and its children inherit that (the scan would finish and exit 0): a Ctrl-C must reach it.
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    journal, deadline = out / JOURNAL_NAME, time.monotonic() + 180
    while not (journal.exists() and journal.read_bytes().count(b"\n") > 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the scan ended first"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ours = [line for line in err.split("\n") if "llm-audit:" in line]
    assert ours == [f"llm-audit: interrupted; the finished layers are journaled in {out}/; rerun "
                    "the same command with --resume to continue from them"], repr(err)  # fmt: skip
    code, _, err = run_cli_process(*args[3:], "--resume", "--no-progress", timeout=300)
    assert code == 0 and (out / "audit.json").exists(), err
