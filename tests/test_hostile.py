"""Hostile and broken checkpoints (tests/corpus): one line naming the file, exit 2, nothing written.

Each case of `tests/corpus/make_corpus.py` is scanned by the real CLI (in-process, for speed; two
cases again in a fresh process). The run must end with exit code 2 and exactly one line on stderr
that names the file and the problem, no traceback, no report folder, nothing written anywhere else,
and no code from a pickle run (the marker file a pickle would create stays absent).
"""

from __future__ import annotations

import filecmp
import json
import os
import pickle
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from llm_audit.sources.safetensors_files import read_header
from tests.conftest import run_cli_process
from tests.corpus.make_corpus import ABSURD_CONFIGS, CASES, MARKER_NAME, make_corpus

COMMITTED = Path(__file__).parent / "corpus" / "files"
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    make_corpus(root / "models")
    return root


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root` (links not followed): path -> (size, mtime_ns)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(Path(folder) / name)
            found[os.path.relpath(Path(folder) / name, root)] = (st.st_size, st.st_mtime_ns)
    return found


def _assert_one_clean_line(code: int, err: str, *, names: Path, says: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("llm-audit: error: ")
    assert str(names) in err and says in err, err


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_one_line_and_writes_nothing(
    name: str, corpus: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    case, folder = CASES[name], corpus / "models" / name
    out = corpus / "reports" / name
    monkeypatch.chdir(corpus)  # a stray relative write would land in the watched tree
    before = _tree(corpus)
    args = ["scan", folder / case.scan, "--out", out, "--no-progress", "--no-traps"]
    code, _, err = cli(*args, *(["--allow-pickle"] if case.allow_pickle else []))
    _assert_one_clean_line(code, err, names=folder / case.names, says=case.says)
    assert _tree(corpus) == before  # no report, no staging folder, no marker, nothing else
    assert not (corpus / "models" / MARKER_NAME).exists()


@pytest.mark.parametrize("name", list(ABSURD_CONFIGS))
def test_absurd_config_is_not_trusted(name: str, corpus: Path, cli: Cli) -> None:
    # Sizes come from the tensor headers alone; config.json only names the family (and ties).
    out = corpus / "reports" / name
    code, _, err = cli(
        "scan", corpus / "models" / name, "--out", out, "--no-progress", "--format", "json"
    )
    assert code == 0, err
    audit = json.loads((out / "audit.json").read_text())
    assert audit["model"]["num_parameters"] == 16
    assert [r["shape"] for r in audit["layers"]] == [[4, 4]]


def test_huge_header_is_refused_before_it_is_read(corpus: Path, cli: Cli) -> None:
    path = corpus / "models" / "huge_header_claim" / "model.safetensors"
    assert path.stat().st_size > 100 * 2**20  # the claim fits the file: only the limit refuses it
    tracemalloc.start()
    try:
        code, _, err = cli("scan", path.parent, "--out", corpus / "reports" / "huge")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2 and "byte limit" in err
    assert peak < 2 * 2**20, f"{peak} bytes allocated while refusing a 100 MiB header"
    with pytest.raises(Exception, match="limit"):
        read_header(path)


@pytest.mark.parametrize(
    ("name", "extra"), [("huge_header_claim", []), ("pickle_torch_zip", ["--allow-pickle"])]
)
@pytest.mark.slow
def test_hostile_file_in_a_fresh_process(name: str, extra: list[str], corpus: Path) -> None:
    case, folder = CASES[name], corpus / "models" / name
    out = corpus / "reports" / f"{name}-process"
    code, _, err = run_cli_process("scan", str(folder), "--out", str(out), *extra)
    _assert_one_clean_line(code, err, names=folder / case.names, says=case.says)
    assert not out.exists() and not (corpus / "models" / MARKER_NAME).exists()


def test_the_pickles_would_run_code_if_unpickled_unsafely(tmp_path: Path) -> None:
    """The control: without weights_only, unpickling these files does create the marker."""
    import torch

    folders = make_corpus(tmp_path)
    marker = tmp_path / MARKER_NAME
    unsafe_loads = {  # what llm-audit never does
        "pickle_torch_zip": lambda path: torch.load(path, weights_only=False),
        "pickle_raw_protocol_2": lambda path: pickle.loads(path.read_bytes()),
    }
    for name, load in unsafe_loads.items():
        assert not marker.exists()
        load(folders[name] / "pytorch_model.bin")
        assert marker.exists(), name
        marker.unlink()


def test_committed_corpus_matches_the_script(tmp_path: Path) -> None:
    make_corpus(tmp_path, committed_only=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in COMMITTED.iterdir())
    for name in names:
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        _, mismatch, errors = filecmp.cmpfiles(
            tmp_path / name, COMMITTED / name, files, shallow=False
        )
        assert (mismatch, errors) == ([], []), f"{name}: rerun make_corpus.py --committed"
