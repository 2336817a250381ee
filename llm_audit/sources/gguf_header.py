"""The header of a GGUF file (llama.cpp), read by a bounded parser: metadata and tensor table.

The `gguf` package's reader turns every field into numpy arrays up front (Gemma-3-270M's
262k-token vocabulary: ~700 MB of Python objects and 10 s before the first tensor), and it
allocates whatever a count declares: a 53-byte file declaring an array of 2^40 items grows past
2 GB. Here nothing is allocated from a declared size before the size is checked against the bytes
left in the file; arrays are stepped over, not decoded (only their element type and count are
kept), and a metadata value is decoded when asked for. Every tensor's offset, size and alignment
are then checked with Python integers (an offset of 2^64 - 1 does not wrap), and no two tensors
may overlap. Anything wrong is a `CheckpointFormatError` naming the file: one line, exit 2.

The layout (GGUF v2 and v3, little-endian): magic `GGUF`, version u32, tensor count u64,
metadata count u64; each metadata entry a key string, a value type u32 and the value; each tensor
a name string, n_dims u32, n_dims u64 dimensions (innermost first), a ggml type u32 and an offset
u64 relative to the data section, which starts at the next multiple of `general.alignment`
(default 32) after the table. Strings are a u64 byte length and UTF-8 bytes.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from llm_audit.errors import CheckpointFormatError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEY_BYTES = 65_535  # the GGUF specification's bound on a metadata key
MAX_NAME_BYTES = 256  # llama.cpp refuses tensor names of 64 bytes or more (GGML_MAX_NAME)
MAX_NESTING = 4  # arrays of arrays of ...: deeper than any writer produces

# Metadata value types: id -> (name, struct code or None for a string or array).
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "B"), 1: ("INT8", "b"), 2: ("UINT16", "H"), 3: ("INT16", "h"),
    4: ("UINT32", "I"), 5: ("INT32", "i"), 6: ("FLOAT32", "f"), 7: ("BOOL", "?"),
    8: ("STRING", None), 9: ("ARRAY", None), 10: ("UINT64", "Q"), 11: ("INT64", "q"),
    12: ("FLOAT64", "d"),
}  # fmt: skip
STRING, ARRAY = 8, 9

# ggml tensor types: id -> (name, values per block, bytes per block); ggml.h's table, the same
# as the `gguf` package's GGML_QUANT_SIZES (tests/test_gguf_header.py compares them).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array, stepped over: its element type and length, not its values."""

    item_type: str
    count: int


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the table, checked: `offset` is absolute, [offset, offset + nbytes) lies
    within the file, and `dims` are ggml's, innermost first."""

    name: str
    dims: tuple[int, ...]
    type_name: str
    offset: int
    nbytes: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one innermost row (every quantization block lies within one row)."""
        _, block, size = _TYPES_BY_NAME[self.type_name]
        return (self.dims[0] // block) * size if self.dims else size


@dataclass(frozen=True)
class GGUFHeader:
    """What `read_header` found: version, metadata (scalars decoded, arrays as `GGUFArray`),
    the alignment and the tensors in file order."""

    version: int
    metadata: dict[str, Any]
    alignment: int
    tensors: tuple[GGUFTensor, ...]


def _show(text: str) -> str:
    """A key or name as a message shows it: as it is when printable, else quoted with escapes."""
    text = text[:200]
    return text if text.isprintable() and text.strip() == text and text else repr(text)


_U64 = struct.Struct("<Q")
_TYPES_BY_NAME = {name: (tid, block, size) for tid, (name, block, size) in GGML_TYPES.items()}


def read_header(path: Path) -> GGUFHeader:
    """Parse and check the header of the GGUF file at `path`, reading no tensor data.

    Raises CheckpointFormatError (one line, naming the file) for anything malformed, truncated,
    oversized or overlapping.
    """
    with path.open("rb") as fh:
        return parse_header(fh, str(path))


def parse_header(fh: BinaryIO, path: str) -> GGUFHeader:
    """`read_header` of an open file (`path` names it in messages)."""
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        raise CheckpointFormatError("is empty, not a GGUF file", path=path)
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _Parser(buf, size, path).header()


class _Parser:
    """A cursor over the mapped file: every read first checks that the bytes are there."""

    def __init__(self, buf: mmap.mmap, size: int, path: str):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, message: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"cannot be read as GGUF: {message}", path=self.path)

    def need(self, nbytes: int, what: str) -> None:
        """Refuse `what` when it claims more bytes than the file has left, before allocating."""
        if nbytes > self.size - self.pos:
            raise self.fail(
                f"{what} declares {nbytes:,} bytes at offset {self.pos:,} but the file has "
                f"{self.size - self.pos:,} left; it is truncated or corrupt"
            )

    def unpack(self, code: str, what: str) -> Any:
        width = struct.calcsize("<" + code)
        self.need(width, what)
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += width
        return value

    def string(self, what: str, limit: int | None = None) -> str:
        length = self.unpack("Q", what)
        if limit is not None and length > limit:
            raise self.fail(f"{what} is {length:,} bytes long, over the limit of {limit:,}")
        self.need(length, what)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8; the file is corrupt") from None

    def header(self) -> GGUFHeader:
        if self.size < 4 or self.buf[:4] != MAGIC:
            raise self.fail("does not start with the GGUF magic bytes; not a GGUF file")
        self.pos = 4
        version = self.unpack("I", "the version")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = (
                "big-endian GGUF is not supported; convert it with gguf-convert-endian"
                if swapped in VERSIONS
                else "only GGUF versions 2 and 3 are read"
            )
            raise self.fail(f"GGUF version {version}: {hint}")
        n_tensors = self.unpack("Q", "the tensor count")
        n_fields = self.unpack("Q", "the metadata count")
        # Each entry takes at least 12 bytes (a key or name length and a type): a count the file
        # cannot hold is refused before a single entry is read.
        self.need(12 * n_fields + 24 * n_tensors, f"{n_fields:,} metadata, {n_tensors:,} tensors")
        metadata = self.metadata(n_fields)
        table = [self.tensor_info() for _ in range(n_tensors)]
        alignment = self.alignment(metadata)
        start = -(-self.pos // alignment) * alignment
        tensors = self.place(table, start, alignment)
        return GGUFHeader(version, metadata, alignment, tensors)

    def metadata(self, count: int) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for _ in range(count):
            key = self.string("a metadata key", MAX_KEY_BYTES)
            if key in fields:
                raise self.fail(f"metadata key {_show(key)} appears twice; the file is corrupt")
            fields[key] = self.value(self.unpack("I", f"the type of {_show(key)}"), key, 0)
        return fields

    def value(self, vtype: int, key: str, depth: int) -> Any:
        """A scalar or string decoded; an array stepped over and described."""
        if vtype not in VALUE_TYPES:
            raise self.fail(f"metadata {_show(key)} has unknown value type {vtype}")
        code = VALUE_TYPES[vtype][1]
        if code is not None:
            return self.unpack(code, f"metadata {_show(key)}")
        if vtype == STRING:
            return self.string(f"metadata {_show(key)}")
        if depth >= MAX_NESTING:
            raise self.fail(f"metadata {_show(key)} nests arrays deeper than {MAX_NESTING}")
        item = self.unpack("I", f"the element type of {_show(key)}")
        count = self.unpack("Q", f"the length of {_show(key)}")
        if item not in VALUE_TYPES:
            raise self.fail(f"metadata {_show(key)} has unknown element type {item}")
        item_name, item_code = VALUE_TYPES[item]
        what = f"array {_show(key)} of {count:,} {item_name}"
        if item_code is not None:
            self.need(count * struct.calcsize("<" + item_code), what)
            self.pos += count * struct.calcsize("<" + item_code)
        else:
            self.need(count * (8 if item == STRING else 12), what)  # smallest element size
            if item == STRING:
                self.skip_strings(count, what)
            else:
                for _ in range(count):
                    self.value(ARRAY, key, depth + 1)
        return GGUFArray(item_name, count)

    def skip_strings(self, count: int, what: str) -> None:
        """Step over `count` strings (a 262k-token vocabulary: the header's hot loop)."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            length = unpack(buf, pos)[0] if pos + 8 <= size else 0
            if pos + 8 > size or length > size - pos - 8:
                self.pos = pos
                self.need(8 + length, what)  # raises, naming the string that does not fit
            pos += 8 + length
        self.pos = pos

    def tensor_info(self) -> tuple[str, tuple[int, ...], str, int]:
        name = self.string("a tensor name", MAX_NAME_BYTES)
        if "\x00" in name:
            raise self.fail(f"tensor name {_show(name)} holds a NUL byte; the file is corrupt")
        n_dims = self.unpack("I", f"the rank of {_show(name)}")
        if n_dims > MAX_DIMS:
            raise self.fail(f"tensor {_show(name)} has {n_dims} dimensions; ggml allows {MAX_DIMS}")
        dims = tuple(self.unpack("Q", f"the shape of {_show(name)}") for _ in range(n_dims))
        type_id = self.unpack("I", f"the type of {_show(name)}")
        if type_id not in GGML_TYPES:
            raise self.fail(f"tensor {_show(name)} has unknown ggml type {type_id}")
        offset = self.unpack("Q", f"the offset of {_show(name)}")
        return name, dims, GGML_TYPES[type_id][0], offset

    def alignment(self, metadata: dict[str, Any]) -> int:
        value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail("general.alignment is not an integer; the file is corrupt")
        if value <= 0 or value & (value - 1) or value > 2**20:
            raise self.fail(f"general.alignment {value} is not a power of two up to 1 MiB")
        return value

    def place(
        self, table: list[tuple[str, tuple[int, ...], str, int]], start: int, alignment: int
    ) -> tuple[GGUFTensor, ...]:
        """Each tensor's bytes: aligned, within the file, no two overlapping (Python ints: no
        arithmetic here can wrap)."""
        tensors: list[GGUFTensor] = []
        names: set[str] = set()
        for name, dims, type_name, relative in table:
            if name in names:
                raise self.fail(
                    f"tensor {_show(name)} appears twice in the table; the file is corrupt"
                )
            names.add(name)
            _, block, size = _TYPES_BY_NAME[type_name]
            if dims and dims[0] % block:
                raise self.fail(
                    f"tensor {_show(name)}: rows of {dims[0]} values do not hold whole "
                    f"{type_name} blocks of {block}"
                )
            numel = 1
            for d in dims:
                numel *= d
            nbytes = numel // block * size
            if relative % alignment:
                raise self.fail(
                    f"tensor {_show(name)} at offset {relative:,} is not aligned to "
                    f"{alignment} bytes"
                )
            offset = start + relative
            if offset + nbytes > self.size:
                raise self.fail(
                    f"tensor {_show(name)} ends at byte {offset + nbytes:,} but the file has "
                    f"{self.size:,}; it is truncated or corrupt"
                )
            tensors.append(GGUFTensor(name, dims, type_name, offset, nbytes))
        by_start = sorted((t for t in tensors if t.nbytes), key=lambda t: t.offset)
        for before, after in itertools.pairwise(by_start):
            if after.offset < before.offset + before.nbytes:
                raise self.fail(
                    f"tensors {_show(before.name)} and {_show(after.name)} overlap; "
                    "the file is corrupt"
                )
        return tuple(tensors)
