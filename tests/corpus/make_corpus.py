"""Write the hostile-checkpoint corpus: one model folder per case, each broken in one way.

    python tests/corpus/make_corpus.py DIR [--committed]

Every case is a folder holding the file(s) named in `CASES` and is scanned as `llm-audit scan
DIR/CASE` (or `DIR/CASE/FILE` where the case names a file to scan). `tests/corpus/README.md` lists
the classes of failure and the cases of each. Tiny cases are committed under `tests/corpus/files/`
(regenerate them with `python tests/corpus/make_corpus.py tests/corpus/files --committed`;
`tests/test_hostile.py` checks they match). The rest are written at test time: the header claiming
100 MiB (a sparse file), the 200 kB nestings, the symbolic links and FIFOs, the oversized config,
the GGUF files, and the pickles (they hold the absolute path of the marker file they would create).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

INDEX = "model.safetensors.index.json"
MARKER_NAME = "PWNED"  # a pickle that runs its code creates this file beside the model folder


@dataclass(frozen=True)
class Case:
    """A broken model folder: how to write it, and what the one-line error must say."""

    write: Callable[[Path], None]  # writes the files into the (existing) case folder
    names: str  # the file the message must name, relative to the case folder
    says: str  # a fragment of the message
    generated: bool = False  # written at test time only: large, a symlink, or path-dependent
    allow_pickle: bool = False
    scan: str = ""  # what to scan, relative to the case folder (default: the folder itself)


def _safetensors(header: bytes | dict[str, object], data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _model(header: bytes | dict[str, object], data: bytes = b"") -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(_safetensors(header, data))

    return write


GOOD = {"w.weight": _tensor("F32", [4, 4], 0, 64)}
GOOD_DATA = bytes(64)


def _indexed(
    weight_map: dict[str, object], *, links: dict[str, str] | None = None
) -> Callable[[Path], None]:
    """A sharded folder whose index names `weight_map`; one good shard, model-1.safetensors."""

    def write(folder: Path) -> None:
        (folder / "model-1.safetensors").write_bytes(_safetensors(GOOD, GOOD_DATA))
        for name, target in (links or {}).items():
            os.symlink(target, folder / name)
        index = {"metadata": {}, "weight_map": {"w.weight": "model-1.safetensors", **weight_map}}
        (folder / INDEX).write_text(json.dumps(index))

    return write


def _huge_header(folder: Path) -> None:
    """A file that claims (and, sparsely, has) a 100 MiB header: refused from its first 8 bytes."""
    length = 100 * 2**20
    path = folder / "model.safetensors"
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", length) + b"{")
        fh.truncate(8 + length)  # sparse: no disk used, but the size check alone cannot refuse it


class _Pwn:
    """Unpickling this calls `open(marker, "w")`, creating the marker file: code execution."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _evil_torch_zip(folder: Path) -> None:
    import torch

    state = {"w.weight": torch.zeros(8, 8), "evil": _Pwn(folder.parent / MARKER_NAME)}
    torch.save(state, folder / "pytorch_model.bin")


def _evil_raw_pickle(folder: Path) -> None:
    (folder / "pytorch_model.bin").write_bytes(
        pickle.dumps({"evil": _Pwn(folder.parent / MARKER_NAME)}, protocol=2)
    )


def _bin_index_outside(folder: Path) -> None:
    index = {"weight_map": {"w.weight": "../../outside.bin"}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def _config(config: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        _model(GOOD, GOOD_DATA)(folder)
        (folder / "config.json").write_text(config)

    return write


def _link(name: str, target: str, *, weights: bool = True) -> Callable[[Path], None]:
    """A good model whose `name` is a symbolic link to `target` (or a FIFO if target is "fifo")."""

    def write(folder: Path) -> None:
        if weights:
            _model(GOOD, GOOD_DATA)(folder)
        if target == "fifo":
            os.mkfifo(folder / name)
        else:
            os.symlink(target, folder / name)

    return write


def _big_config(folder: Path) -> None:
    _model(GOOD, GOOD_DATA)(folder)
    padding = " " * 16_000_001  # over the 16 MB limit of a config
    (folder / "config.json").write_text('{"model_type": "llama"' + padding + "}")


def _adapter(config: dict[str, object], rank: int = 4) -> Callable[[Path], None]:
    """A LoRA adapter folder: one module's lora_A (rank x 8) and lora_B (8 x rank), zeros."""

    def write(folder: Path) -> None:
        size = 8 * rank * 4
        header = {
            "base_model.model.w.lora_A.weight": _tensor("F32", [rank, 8], 0, size),
            "base_model.model.w.lora_B.weight": _tensor("F32", [8, rank], size, 2 * size),
        }
        (folder / "adapter_model.safetensors").write_bytes(_safetensors(header, bytes(2 * size)))
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))

    return write


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _gguf(arch: bytes, tensor_name: bytes = b"w.weight") -> Callable[[Path], None]:
    """A GGUF v3 file (one F32 4x4 tensor) whose architecture and tensor name are raw bytes."""

    def write(folder: Path) -> None:
        string_type, f32_type = 8, 0
        kv = _gguf_string(b"general.architecture") + struct.pack("<I", string_type)
        kv += _gguf_string(arch)
        info = _gguf_string(tensor_name) + struct.pack("<IQQIQ", 2, 4, 4, f32_type, 0)
        head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + kv + info
        head += bytes(-len(head) % 32)  # tensor data starts at the 32-byte alignment
        (folder / "model.gguf").write_bytes(head + bytes(64))

    return write


NESTED = b"[" * 100_000 + b"]" * 100_000
CASES: dict[str, Case] = {
    # --- safetensors headers -------------------------------------------------------------
    "too_short": Case(lambda f: (f / "model.safetensors").write_bytes(b"\x01\x02"),
                      "model.safetensors", "too short"),
    "header_longer_than_file": Case(
        lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b"{}"),
        "model.safetensors", "it is truncated"),
    "huge_header_claim": Case(_huge_header, "model.safetensors", "over the 100000000 byte limit",
                              generated=True),
    "data_truncated": Case(_model(GOOD, bytes(32)), "model.safetensors", "data ends at byte 64"),
    "negative_offset": Case(_model({"w.weight": _tensor("F32", [4, 4], -64, 0)}, GOOD_DATA),
                            "model.safetensors", "invalid offsets [-64, 0]"),
    "reversed_offsets": Case(_model({"w.weight": _tensor("F32", [0], 8, 0)}, bytes(8)),
                             "model.safetensors", "end before they begin"),
    "overlapping_offsets": Case(
        _model({"a.weight": _tensor("F32", [2, 2], 0, 16),
                "b.weight": _tensor("F32", [2, 2], 8, 24)}, bytes(24)),
        "model.safetensors", "overlaps tensor 'a.weight'"),
    "gap_between_tensors": Case(
        _model({"a.weight": _tensor("F32", [2, 2], 0, 16),
                "b.weight": _tensor("F32", [2, 2], 24, 40)}, bytes(40)),
        "model.safetensors", "data bytes 16 to 24 belong to no tensor"),
    "trailing_bytes": Case(_model(GOOD, GOOD_DATA + bytes(16)), "model.safetensors",
                           "16 data bytes after the last tensor"),
    "unknown_dtype": Case(_model({"w.weight": _tensor("F128", [4, 4], 0, 64)}, GOOD_DATA),
                          "model.safetensors", "unknown dtype 'F128'"),
    "dtype_not_a_string": Case(_model({"w.weight": _tensor(["F32"], [4, 4], 0, 64)}, GOOD_DATA),  # type: ignore[arg-type]
                               "model.safetensors", "unknown dtype ['F32']"),
    "shape_product_overflows": Case(
        _model({"w.weight": _tensor("F32", [2**40, 2**40], 0, 64)}, GOOD_DATA),
        "model.safetensors", "more elements than an int64 can count"),
    "shape_dim_over_int64_times_zero": Case(
        _model({"w.weight": _tensor("F32", [2**64, 0], 0, 0)}),
        "model.safetensors", "more elements than an int64 can count"),
    "shape_not_counts": Case(_model({"w.weight": _tensor("F32", [4.0, -4], 0, 64)}, GOOD_DATA),  # type: ignore[list-item]
                             "model.safetensors", "invalid shape [4.0, -4]"),
    "size_mismatch": Case(_model({"w.weight": _tensor("F32", [4, 4], 0, 32)}, bytes(32)),
                          "model.safetensors", "offsets span 32 bytes but shape [4, 4] of F32"),
    "duplicate_tensor_names": Case(
        _model(b'{"w.weight":' + json.dumps(_tensor("F32", [2, 2], 0, 16)).encode()
               + b',"w.weight":' + json.dumps(_tensor("F32", [2, 2], 16, 32)).encode() + b"}",
               bytes(32)),
        "model.safetensors", "header names 'w.weight' twice"),
    "non_utf8_name": Case(
        _model(b'{"w\xff\xfe.weight":' + json.dumps(_tensor("F32", [4, 4], 0, 64)).encode() + b"}",
               GOOD_DATA),
        "model.safetensors", "header is not valid UTF-8 (byte 3)"),
    "utf16_header": Case(_model(json.dumps(GOOD).encode("utf-16"), GOOD_DATA),
                         "model.safetensors", "header is not valid UTF-8"),
    "lone_surrogate_name": Case(
        _model(b'{"w\\ud800.weight":' + json.dumps(_tensor("F32", [4, 4], 0, 64)).encode() + b"}",
               GOOD_DATA),
        "model.safetensors", "not valid Unicode: 'w\\ud800.weight'"),
    "newline_in_name_and_bad_dtype": Case(
        _model({"w\n.weight\r\x00": _tensor("X", [4, 4], 0, 64)}, GOOD_DATA),
        "model.safetensors", "w\\n.weight\\r\\x00: a tensor name is over 4096 characters long or holds NUL"),  # noqa: E501
    "header_is_a_list": Case(_model(b"[1, 2, 3]"), "model.safetensors", "not a JSON object"),
    "header_not_json": Case(_model(b'{"a": [1, 2'), "model.safetensors", "not valid JSON"),
    "header_nested_deeply": Case(_model(NESTED), "model.safetensors", "nested too deeply",
                                 generated=True),
    "header_number_too_long": Case(
        _model(b'{"w.weight": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], '
               b'"data_offsets": [0, 4]}}', bytes(4)),
        "model.safetensors", "a number with too many digits"),
    "metadata_not_strings": Case(
        _model({"__metadata__": {"format": ["pt"]}, **GOOD}, GOOD_DATA),
        "model.safetensors", "__metadata__ must map strings to strings"),
    "entry_extra_key": Case(
        _model({"w.weight": {**_tensor("F32", [4, 4], 0, 64), "exec": "rm -rf /"}}, GOOD_DATA),
        "model.safetensors", "malformed header entry"),
    # --- index.json ----------------------------------------------------------------------
    "index_parent_dir": Case(_indexed({"x.weight": "../outside.safetensors"}),
                             INDEX, "lies outside the model folder"),
    "index_parent_dir_hidden": Case(_indexed({"x.weight": "sub/../../../etc.safetensors"}),
                                    INDEX, "lies outside the model folder"),
    "index_absolute_path": Case(_indexed({"x.weight": "/etc/passwd.safetensors"}),
                                INDEX, "lies outside the model folder"),
    "index_missing_shard": Case(_indexed({"x.weight": "model-2.safetensors"}),
                                INDEX, "that file is missing"),
    "index_names_itself": Case(_indexed({"x.weight": "model.safetensors.index.json"}),
                               INDEX, "not a .safetensors file name"),
    "index_symlink_loop": Case(
        _indexed({"x.weight": "loop-a.safetensors"},
                 links={"loop-a.safetensors": "loop-b.safetensors",
                        "loop-b.safetensors": "loop-a.safetensors"}),
        INDEX, "broken or looping symbolic link", generated=True),
    "index_shard_not_a_string": Case(_indexed({"x.weight": 7}),
                                     INDEX, "not a .safetensors file name"),
    "index_weight_map_a_list": Case(
        lambda f: (f / INDEX).write_text('{"weight_map": []}'),
        INDEX, "expected a JSON object with a 'weight_map' mapping"),
    "index_duplicate_tensor": Case(
        lambda f: (_indexed({})(f), (f / INDEX).write_text(
            '{"weight_map": {"w.weight": "model-1.safetensors", "w.weight": "model-1.safetensors"}}'
        )),
        INDEX, "index names 'w.weight' twice"),
    "index_nested_deeply": Case(
        lambda f: (f / INDEX).write_bytes(NESTED),
        INDEX, "nested too deeply", generated=True),
    # --- config.json (read only for model_type and tie_word_embeddings) -------------------
    "config_not_json": Case(_config("{hidden_size: 1e12"), "config.json", "not valid JSON"),
    "config_is_a_list": Case(_config("[1, 2, 3]"), "config.json", "not a JSON object"),
    "config_nested_65_deep": Case(_config('{"a": ' * 65 + "1" + "}" * 65), "config.json",
                                  "nested too deeply (over 64 levels)"),
    "config_duplicate_key": Case(_config('{"model_type": "llama", "model_type": "gpt2"}'),
                                 "config.json", "names 'model_type' twice"),
    "config_over_16_mb": Case(_big_config, "config.json", "over the 16000000 byte limit",
                              generated=True),
    # --- not a regular file, or a link out of the model folder (read before anything else) --
    "config_fifo": Case(_link("config.json", "fifo"), "config.json", "is a FIFO, not a regular",
                        generated=True),
    "weights_fifo": Case(_link("model.safetensors", "fifo", weights=False), "model.safetensors",
                         "is a FIFO, not a regular", generated=True),
    "config_link_to_dev_zero": Case(_link("config.json", "/dev/zero"), "config.json",
                                    "symbolic link to a file outside the model folder",
                                    generated=True),
    "weights_link_to_etc_passwd": Case(
        _link("model.safetensors", "/etc/passwd", weights=False), "model.safetensors",
        "symbolic link to a file outside the model folder", generated=True),
    "index_link_outside": Case(
        _link(INDEX, "../index_parent_dir/" + INDEX), INDEX,
        "symbolic link to a file outside the model folder", generated=True),
    # --- LoRA adapters (adapter_config.json checked against the adapter's tensors) ---------
    "adapter_r_zero": Case(_adapter({"r": 0, "lora_alpha": 8}), "adapter_config.json",
                           "r must be a positive integer, got 0"),
    "adapter_r_text": Case(_adapter({"r": "four", "lora_alpha": 8}), "adapter_config.json",
                           "r: expected an integer, got 'four'"),
    "adapter_r_not_the_rank": Case(_adapter({"r": 64, "lora_alpha": 8}), "adapter_config.json",
                                   "r is 64 but the lora_A and lora_B of w have rank 4"),
    "adapter_alpha_text": Case(_adapter({"r": 4, "lora_alpha": "16"}), "adapter_config.json",
                               "lora_alpha: expected an integer or a number, got '16'"),
    "adapter_rank_pattern_wrong": Case(_adapter({"r": 4, "rank_pattern": {"w": 8}}),
                                       "adapter_config.json", "r is 8 but"),
    "adapter_rslora_text": Case(_adapter({"r": 4, "use_rslora": "yes"}), "adapter_config.json",
                                "use_rslora: expected true or false, got 'yes'"),
    # --- GGUF (scanned as a file; needs the gguf package) -----------------------------------
    "gguf_architecture_not_utf8": Case(_gguf(b"lla\xffma"), "model.gguf",
                                       "general.architecture is not valid UTF-8",
                                       generated=True, scan="model.gguf"),
    "gguf_tensor_name_not_utf8": Case(_gguf(b"llama", b"w\xfe.weight"), "model.gguf",
                                      "cannot be read as GGUF", generated=True,
                                      scan="model.gguf"),
    # --- pickles ---------------------------------------------------------------------------
    # (written at test time: the marker's absolute path is inside the pickle)
    "pickle_without_opt_in": Case(_evil_torch_zip, "", "pass --allow-pickle", generated=True),
    "pickle_torch_zip": Case(_evil_torch_zip, "pytorch_model.bin",
                             "refused by torch.load(weights_only=True): it calls io.open",
                             allow_pickle=True,
                             generated=True),
    "pickle_raw_protocol_2": Case(_evil_raw_pickle, "pytorch_model.bin", "it calls io.open",
                                  allow_pickle=True, generated=True),
    "pickle_garbage": Case(lambda f: (f / "pytorch_model.bin").write_bytes(b"PK\x03\x04garbage"),
                           "pytorch_model.bin", "not a readable torch checkpoint",
                           allow_pickle=True),
    "bin_index_outside": Case(_bin_index_outside, "pytorch_model.bin.index.json",
                              "lies outside the model folder", allow_pickle=True),
}  # fmt: skip

# Configs with absurd values: the scan must ignore them (sizes come from the tensor headers).
ABSURD_CONFIGS = {
    "config_absurd_sizes": json.dumps(
        {
            "model_type": "llama",
            "hidden_size": 10**12,
            "num_hidden_layers": -3,
            "intermediate_size": 1e300,
            "vocab_size": 2**70,
            "num_attention_heads": 0,
            "torch_dtype": "float1024",
            "tie_word_embeddings": "yes please",
        }
    ),
    "config_wrong_types": json.dumps({"model_type": ["llama", {"x": 1}], "architectures": 5}),
}


def make_corpus(folder: Path, *, committed_only: bool = False) -> dict[str, Path]:
    """Write every case into `folder/CASE` (only the committed ones if asked); their folders."""
    made = {}
    for name, case in CASES.items():
        if case.generated and committed_only:
            continue
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        case.write(target)
        made[name] = target
    for name, config in ABSURD_CONFIGS.items():
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        _config(config)(target)
        made[name] = target
    return made


if __name__ == "__main__":
    make_corpus(Path(sys.argv[1]), committed_only="--committed" in sys.argv)
