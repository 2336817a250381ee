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
from typing import Any

import pytest

from llm_audit.sources.safetensors_files import read_header
from tests.conftest import run_cli_process
from tests.corpus.make_corpus import ABSURD_CONFIGS, CASES, MARKER_NAME, make_corpus
from tests.test_report import DevTools, browser  # noqa: F401 (browser: the Chromium fixture)

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


# ---- render: a received audit.json is checked at one boundary, and its page runs no script -----

PAYLOAD = (
    "<img src=x onerror=\"document.title='pwned'\"></script><script>document.title='pwned'</script>"
)


def _audit(**changes: Any) -> dict[str, Any]:
    """A small audit.json as scan writes it, with `changes` (dotted paths) applied."""
    audit: dict[str, Any] = {
        "schema_version": 1,
        "model": {"id": "org/model", "source": "hub", "revision": "main", "files": ["a"]},
        "settings": {"estimator": "ww", "seed": 0, "thresholds": {"alpha_low": 2.0}},
        "summary": {
            "num_layers": 1, "num_analyzed": 1, "num_trap_layers": 0, "total_traps": 0,
            "mean_alpha": 3.0, "verdict": "healthy", "verdict_reason": "fine", "seconds": 1.0,
        },
        "layers": [
            {"name": "blk.0.q.weight", "role": "q", "status": "success", "block": 0,
             "shape": [4, 4], "alpha": 3.0, "num_traps": 1, "flags": ["correlation_trap"],
             "trap_entries": [{"row": 1, "col": 2, "value": 0.5, "z": 9.0}]},
        ],
    }  # fmt: skip
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = audit
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return audit


HOSTILE_AUDITS = {
    "summary_counter_text": ({"summary.num_trap_layers": PAYLOAD}, "summary.num_trap_layers"),
    "summary_401_digits": ({"summary.total_traps": 10**400}, "outside int64"),
    "summary_seconds_text": ({"summary.seconds": "<b>1</b>"}, "summary.seconds"),
    "alpha_1e400": ({"layers.0.alpha": float("inf")}, "finite"),
    "shape_text": ({"layers.0.shape": "abc"}, "layers[0].shape"),
    "trap_entries_text": ({"layers.0.trap_entries": "xx"}, "trap_entries"),
    "name_70000_chars": ({"layers.0.name": "a" * 70_000}, "over 4096 characters"),
    "verdict_unknown": ({"summary.verdict": PAYLOAD}, "summary.verdict"),
    "thresholds_text": ({"settings.thresholds.alpha_low": "2"}, "alpha_low"),
}


@pytest.mark.parametrize("case", list(HOSTILE_AUDITS))
def test_render_checks_every_field_at_the_boundary(case: str, tmp_path: Path, cli: Cli) -> None:
    changes, says = HOSTILE_AUDITS[case]
    path = tmp_path / "audit.json"
    text = json.dumps(_audit(**changes)).replace("Infinity", "1e400")
    path.write_text(text)
    code, _, err = cli("render", path)
    _assert_one_clean_line(code, err, names=path, says=says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.json"]


def test_render_says_what_a_file_is_when_it_is_not_an_audit(tmp_path: Path, cli: Cli) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("a note\n")
    code, _, err = cli("render", notes)
    _assert_one_clean_line(code, err, names=notes, says="is not JSON, so not an audit.json")
    compare = tmp_path / "compare.json"
    compare.write_text(json.dumps({"schema_version": 1, "base": {}, "others": [], "layers": []}))
    code, _, err = cli("render", compare)
    _assert_one_clean_line(code, err, names=compare, says="is a compare.json")
    assert "compare.html" in err


def test_render_without_spectra_warns_and_drops_the_pointer(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(_audit()))
    code, _, err = cli("render", path)
    assert (
        code == 0 and err.startswith("llm-audit: warning: no spectra.npz") and err.count("\n") == 1
    )
    page = (tmp_path / "report.html").read_text()
    assert "eigenvalues are in spectra.npz" not in page and 'id="no-spectra"' in page


def test_an_npz_bomb_is_refused_before_it_inflates(tmp_path: Path, cli: Cli) -> None:
    import zipfile

    path = tmp_path / "audit.json"
    path.write_text(json.dumps(_audit()))
    claim = b"{'descr': '<f8', 'fortran_order': False, 'shape': (268435456,), }"
    header = (b"\x93NUMPY\x01\x00v\x00" + claim).ljust(127, b" ") + b"\n"
    member = "blk.0.q.weight/evals.npy"
    with (
        zipfile.ZipFile(tmp_path / "spectra.npz", "w", zipfile.ZIP_DEFLATED) as npz,
        npz.open(member, "w", force_zip64=True) as fh,
    ):
        fh.write(header)
        for _ in range(256):  # 2 GiB of zeros: a 2 MB file
            fh.write(bytes(8 << 20))
    assert (tmp_path / "spectra.npz").stat().st_size < 4_000_000
    tracemalloc.start()
    try:
        code, _, err = cli("render", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _assert_one_clean_line(code, err, names=tmp_path / "spectra.npz", says="claims")
    assert peak < 50 * 2**20


def test_names_with_controls_and_bidi_overrides_are_made_visible(tmp_path: Path) -> None:
    from llm_audit.report import render_file

    path = tmp_path / "audit.json"
    name = "evil\u202eweiv.q\n\x1b[31m"
    path.write_text(json.dumps(_audit(**{"layers.0.name": name, "model.id": "m\u2066x"})))
    page = render_file(path).read_text()
    assert "\u202e" not in page and "\u2066" not in page and "\x1b" not in page
    assert "evil\\u202eweiv.<wbr>q\\n\\x1b[31m" in page


@pytest.mark.slow
def test_no_script_from_a_hostile_audit_runs_in_chromium(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tools: DevTools = request.getfixturevalue("browser")
    from llm_audit.report import render_file

    strings = {  # every text field the page shows, each holding the payload
        "model.id": PAYLOAD, "model.source": PAYLOAD, "model.revision": PAYLOAD,
        "model.family": PAYLOAD, "model.files": [PAYLOAD], "settings.estimator": PAYLOAD,
        "settings.device": PAYLOAD, "settings.started": PAYLOAD, "settings.eigensolver": PAYLOAD,
        "settings.versions": {PAYLOAD: PAYLOAD}, "summary.verdict_reason": PAYLOAD,
        "summary.excluded_from_summary": [PAYLOAD], "summary.worst_layers": [PAYLOAD],
        "summary.skipped": {PAYLOAD: 1}, "summary.alpha_by_role": {PAYLOAD: {"count": 1}},
        "layers.0.name": PAYLOAD, "layers.0.role": PAYLOAD, "layers.0.status": PAYLOAD,
        "layers.0.reason": PAYLOAD, "layers.0.stack": PAYLOAD,
    }  # fmt: skip
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(_audit(**strings)))
    pages = [render_file(path)]
    # The CSP alone, should escaping ever fail: the payload pasted into the page as it is.
    raw = tmp_path / "raw.html"
    raw.write_text(pages[0].read_text().replace("<main>", f"<main><p>{PAYLOAD}</p>", 1))
    pages.append(raw)
    for page in pages:
        tools.call("Page.navigate", url=page.as_uri())
        tools.wait_for("Page.loadEventFired")
        assert tools.js("document.title") != "pwned", page.name
        assert tools.js("typeof llmAudit") == "object"  # the page's own script did run


# ---- resume journals: numbers bounded, lines streamed ------------------------------------------


@pytest.fixture
def journaled(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-layer model and the journal of its scan."""
    import torch

    import llm_audit
    from tests.conftest import write_shards

    g = torch.Generator().manual_seed(2)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(24, 24, generator=g)
               for i in range(2)}  # fmt: skip
    model = write_shards(tmp_path / "m", tensors, shards=1)
    journal = tmp_path / "j.jsonl"
    llm_audit.scan(model, journal=journal, traps=True, seed=0)
    return model, journal


JOURNAL_LINES = {  # a field of a job line, re-signed as a forger would
    "trap_entries_text": ("trap_entries", "xx", "trap_entries are not a list"),
    "alpha_1e400": ("alpha", "1e400", "infinite"),
    "num_traps_401_digits": ("num_traps", "1" + "0" * 400, "outside int64"),
    "shape_text": ("shape", '"abc"', "shape is not a list of counts"),
    "name_with_nul": ("name", '"a\\u0000b"', "holds NUL"),
}


@pytest.mark.parametrize("case", list(JOURNAL_LINES))
def test_a_resigned_journal_line_with_absurd_values_is_refused(
    case: str, journaled: tuple[Path, Path]
) -> None:
    import llm_audit
    from llm_audit.errors import ConfigError
    from llm_audit.journal import _digest

    model, journal = journaled
    field, raw, says = JOURNAL_LINES[case]
    lines = journal.read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["record"][field] = "@@"
    text = json.dumps(entry).replace('"@@"', raw if field != "trap_entries" else '"xx"')
    entry = json.loads(text)
    entry["sha256"] = _digest(entry)
    lines[1] = json.dumps(entry) + "\n"
    journal.write_text("".join(lines))
    with pytest.raises(ConfigError, match=f"line 2 of the resume journal .*{says}"):
        llm_audit.scan(model, journal=journal, resume=True, traps=True, seed=0)


def test_a_huge_journal_line_is_refused_as_it_streams(journaled: tuple[Path, Path]) -> None:
    import llm_audit
    from llm_audit.errors import ConfigError
    from llm_audit.journal import MAX_LINE_BYTES

    model, journal = journaled
    header = journal.read_text().splitlines(keepends=True)[0]
    journal.write_text(header)
    with journal.open("r+b") as fh:
        fh.truncate(1_200_000_000)  # sparse: 1.2 GB of NUL bytes and no newline
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=f"over {MAX_LINE_BYTES} bytes"):
            llm_audit.scan(model, journal=journal, resume=True, traps=True, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_LINE_BYTES * 2.5


# ---- no write through a link: the lock, the journal and the report stay inside --out ------------

LINKS = {
    "lock_link_to_a_file": (".out.lock", "symlink", "existing"),
    "lock_link_to_nowhere": (".out.lock", "symlink", "missing"),
    "lock_hard_link": (".out.lock", "hardlink", "existing"),
    "journal_link": ("out/.journal.jsonl", "symlink", "existing"),
    "journal_link_to_nowhere": ("out/.journal.jsonl", "symlink", "missing"),
}


@pytest.mark.parametrize("case", list(LINKS))
def test_nothing_is_written_through_a_planted_link(
    case: str, tmp_path: Path, tiny_llama: Path, cli: Cli
) -> None:
    where, kind, target_state = LINKS[case]
    victim = tmp_path / "victim" / "file.txt"
    victim.parent.mkdir()
    if target_state == "existing":
        victim.write_text("precious\n")
    base = tmp_path / "reports"
    (base / "out").mkdir(parents=True)
    link = base / where
    if kind == "symlink":
        link.symlink_to(victim)
    else:
        os.link(victim, link)
    before = _tree(tmp_path / "victim")
    code, _, err = cli("scan", tiny_llama, "--out", base / "out", "--no-progress", "--no-traps")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert _tree(tmp_path / "victim") == before  # not created, not written, not truncated
    if target_state == "existing":
        assert victim.read_text() == "precious\n"
    assert os.path.lexists(link)  # the planted link is left for its owner to see
    assert not [p for p in base.iterdir() if ".staging" in p.name]


# ---- names on a terminal are quoted: no forged lines, no escapes run ---------------------------

FORGED = "x\nverdict: healthy (forged)\x1b[2K\x1b]0;owned\x07\u202e.weight"


def test_names_on_the_terminal_cannot_forge_lines(tmp_path: Path, cli: Cli) -> None:
    import torch
    from safetensors.torch import save_file

    from llm_audit.untrusted import quote

    folder = tmp_path / "m"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    save_file({FORGED: torch.randn(24, 24, generator=g)}, str(folder / "model.safetensors"))
    for args in (
        ["scan", folder, "--out", tmp_path / "out", "--no-progress"],
        ["describe", folder],
    ):
        code, out, _ = cli(*args, "--no-traps" if args[0] == "scan" else "--debug")
        assert code == 0
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert quote(FORGED) in out
        verdicts = [line for line in out.splitlines() if line.startswith("verdict:")]
        assert len(verdicts) == (1 if args[0] == "scan" else 0), out
        assert "forged" not in "".join(verdicts)
    assert quote(FORGED).count("\n") == 0 and "\\x1b[2K" in quote(FORGED)
    assert quote("plain.name") == "plain.name" and quote('a"b\n') == '"a\\"b\\n"'


# ---- counts in linear time: no search of every name per name -----------------------------------


def test_an_index_checks_each_shard_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_audit.sources import safetensors_files

    for i in range(3):
        (tmp_path / f"s{i}.safetensors").write_bytes(b"")
    weight_map = {f"t{i}.weight": f"s{i % 3}.safetensors" for i in range(3000)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    calls = []
    checked = safetensors_files._shard_path
    monkeypatch.setattr(
        safetensors_files, "_shard_path", lambda *a, **k: calls.append(a[2]) or checked(*a, **k)
    )
    files = safetensors_files.files_from_index(
        tmp_path / "model.safetensors.index.json", suffix=".safetensors"
    )
    assert [f.name for f in files] == ["s0.safetensors", "s1.safetensors", "s2.safetensors"]
    assert calls == ["s0.safetensors", "s1.safetensors", "s2.safetensors"]


def test_the_bitsandbytes_lookup_reads_the_names_a_fixed_number_of_times() -> None:
    from llm_audit.quant import bnb
    from llm_audit.sources.base import TensorInfo

    class Counting(dict):  # type: ignore[type-arg]
        passes = 0

        def items(self):  # type: ignore[no-untyped-def]
            Counting.passes += 1
            return super().items()

        def __iter__(self):  # type: ignore[no-untyped-def]
            Counting.passes += 1
            return super().__iter__()

    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(2000)]
    by_name = Counting({n: TensorInfo(n, (0, 4), "U8", "x") for n in names})
    assert list(bnb.find(by_name, {}, None)) == []
    assert Counting.passes <= 2  # was one pass per name


@pytest.mark.parametrize("name", ["a\0b.weight", "a" * 70_000 + ".weight"])
def test_tensor_names_with_nul_or_over_the_bound_are_refused(
    name: str, tmp_path: Path, cli: Cli
) -> None:
    import struct

    header = json.dumps({name: {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(16))
    code, _, err = cli("scan", path, "--out", tmp_path / "out", "--no-progress")
    _assert_one_clean_line(code, err, names=path, says="over 4096 characters long or holds NUL")
    assert len(err) < 1000 and not (tmp_path / "out").exists()
