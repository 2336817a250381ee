"""Fuzzing the safetensors header and index parsers: only our documented errors ever come out.

hypothesis runs a bounded number of examples (a few seconds in all); when atheris is installed, a
coverage-guided run of `tests/corpus/atheris_fuzz.py` follows, bounded in time too.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from llm_audit.errors import LlmAuditError
from llm_audit.sources.safetensors_files import DTYPE_SIZES, files_from_index, read_header

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


counts = st.one_of(
    st.integers(0, 64), st.integers(-(2**65), 2**65), st.sampled_from([2**63 - 1, 2**63, 2**64])
)
json_leaf = st.one_of(
    st.none(), st.booleans(), counts, st.floats(allow_nan=False), st.text(max_size=8)
)
json_any = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
entries = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(sorted(DTYPE_SIZES)), st.text(max_size=6), json_any),
        "shape": st.one_of(st.lists(counts, max_size=4), json_any),
        "data_offsets": st.one_of(st.lists(counts, min_size=2, max_size=2), json_any),
    },
    optional={"extra": json_any},
)


@st.composite
def plausible_headers(draw: st.DrawFn) -> dict[str, object]:
    """Headers close to valid ones: real dtypes, small shapes, offsets mostly laid end to end."""
    header: dict[str, object] = {}
    cursor = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = DTYPE_SIZES[dtype]
        for d in shape:
            size *= d
        begin = cursor + draw(st.sampled_from([0, 0, 0, -1, 1]))
        end = begin + size + draw(st.sampled_from([0, 0, 0, -1, 1]))
        cursor = end
        header[draw(st.sampled_from([f"t{i}", "t0", "\ud800", "a\nb"]))] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [begin, end],
        }
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), json_leaf, max_size=2))
    return header


def _safetensors(header: bytes, data_size: int, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + bytes(data_size)


def _only_our_errors(path: Path) -> list[object] | None:
    """read_header's tensors, or None if it raised one of our errors; anything else fails."""
    try:
        return list(read_header(path))
    except LlmAuditError as exc:
        assert "\n" not in str(exc)
        return None


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_bytes(scratch: Path, data: bytes) -> None:
    _only_our_errors(_write(scratch, "random.safetensors", data))


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=8), st.one_of(entries, json_any), max_size=4),
    data_size=st.integers(0, 128),
    length_delta=st.sampled_from([0, 0, 0, -1, 1, 2**40, 2**64 - 1]),
)
def test_json_ish_headers(
    scratch: Path, header: dict[str, object], data_size: int, length_delta: int
) -> None:
    raw = json.dumps(header).encode("utf-8", "surrogatepass")
    length = min(max(len(raw) + length_delta, 0), 2**64 - 1)
    _only_our_errors(_write(scratch, "json.safetensors", _safetensors(raw, data_size, length)))


@FUZZ
@given(header=plausible_headers(), data_size=st.integers(0, 160))
def test_what_we_accept_safetensors_reads(
    scratch: Path, header: dict[str, object], data_size: int
) -> None:
    raw = json.dumps(header).encode("utf-8", "surrogatepass")
    path = _write(scratch, "plausible.safetensors", _safetensors(raw, data_size))
    tensors = _only_our_errors(path)
    if tensors is None:
        return
    with safe_open(str(path), framework="pt") as handle:  # must not raise: we checked the same
        for t in tensors:
            assert tuple(handle.get_tensor(t.name).shape) == t.shape  # type: ignore[attr-defined]


shard_names = st.one_of(
    st.sampled_from(
        ["a.safetensors", "../a.safetensors", "/a.safetensors", "sub/../a.safetensors", ".", ""]
    ),
    st.text(max_size=12),
    json_any,
)


@FUZZ
@given(
    index=st.one_of(
        json_any,
        st.fixed_dictionaries(
            {"weight_map": st.dictionaries(st.text(max_size=6), shard_names, max_size=4)}
        ),
    )
)
def test_index_parsing(scratch: Path, index: object) -> None:
    folder = scratch / "model"
    folder.mkdir(exist_ok=True)
    (folder / "a.safetensors").touch()
    path = _write(folder, "index.json", json.dumps(index).encode("utf-8", "surrogatepass"))
    try:
        files = files_from_index(path, suffix=".safetensors")
    except LlmAuditError as exc:
        assert "\n" not in str(exc)
        return
    for f in files:  # whatever was accepted lies inside the model folder
        assert os.path.commonpath([f.resolve(), folder.resolve()]) == str(folder.resolve())


@FUZZ
@given(data=st.binary(max_size=128))
def test_index_random_bytes(scratch: Path, data: bytes) -> None:
    with contextlib.suppress(LlmAuditError):
        files_from_index(_write(scratch, "random.index.json", data), suffix=".safetensors")


@pytest.mark.slow
def test_atheris_for_a_few_seconds() -> None:
    pytest.importorskip("atheris")
    harness = Path(__file__).parent / "corpus" / "atheris_fuzz.py"
    proc = subprocess.run(
        [sys.executable, str(harness), "-max_total_time=5", "-rss_limit_mb=4096"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
