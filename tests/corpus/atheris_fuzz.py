"""Coverage-guided fuzzing of `read_header` and `files_from_index` with atheris.

    python tests/corpus/atheris_fuzz.py -max_total_time=60

The committed corpus cases (tests/corpus/files) seed it. Any exception other than an
`LlmAuditError` is a crash that atheris reports, with the input that caused it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris
import safetensors  # noqa: F401 - imported first so that only llm-audit's own code is instrumented
import torch  # noqa: F401

with atheris.instrument_imports(include=["llm_audit"]):
    from llm_audit.errors import LlmAuditError
    from llm_audit.sources.safetensors_files import files_from_index, read_header

SCRATCH = Path(tempfile.mkdtemp(prefix="llm-audit-atheris-"))
SEEDS = Path(__file__).parent / "files"


def one_input(data: bytes) -> None:
    """First byte chooses the parser; the rest is the file."""
    if not data:
        return
    if data[0] % 2:
        path = SCRATCH / "model.safetensors.index.json"
        path.write_bytes(data[1:])
        parse = lambda: files_from_index(path, suffix=".safetensors")  # noqa: E731
    else:
        path = SCRATCH / "model.safetensors"
        path.write_bytes(data[1:])
        parse = lambda: read_header(path)  # noqa: E731
    try:
        parse()
    except LlmAuditError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"message of more than one line: {exc!r}") from None


def _seed_folder() -> str:
    """Seeds: every committed case file, prefixed with the byte that picks its parser."""
    folder = Path(tempfile.mkdtemp(prefix="llm-audit-atheris-seeds-"))
    for i, path in enumerate(sorted(SEEDS.rglob("*"))):
        if path.is_file():
            prefix = b"\x01" if path.name.endswith(".json") else b"\x00"
            (folder / f"seed-{i}").write_bytes(prefix + path.read_bytes())
    return str(folder)


if __name__ == "__main__":
    atheris.Setup([*sys.argv, _seed_folder()], one_input)
    atheris.Fuzz()
