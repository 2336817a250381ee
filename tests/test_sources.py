"""Sources: every way of naming a model, streamed reading, and every kind of bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llm_audit.errors import CheckpointFormatError, PickleRefusedError, SourceNotFoundError
from llm_audit.sources import open_source
from llm_audit.sources.safetensors_files import read_header
from tests.conftest import llama_tensors, run_cli_process, write_shards


def test_single_file_folder_and_shards_list_the_same_tensors(tmp_path: Path) -> None:
    tensors = llama_tensors()
    one = write_shards(tmp_path / "one", tensors)
    many = write_shards(tmp_path / "many", tensors, shards=3)
    with open_source(one / "model.safetensors") as a, open_source(one) as b, open_source(many) as c:
        names = {t.name for t in a.tensors()}
        assert names == set(tensors)
        assert {t.name for t in b.tensors()} == names == {t.name for t in c.tensors()}
        assert len(c.info.files) == 3
        for t in c.tensors():
            assert torch.equal(c.read(t), tensors[t.name])


def test_state_dict_and_module_sources_list_tied_weights_once() -> None:
    emb = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = emb.weight  # tied
    model = torch.nn.ModuleDict({"embed": emb, "head": head})
    with open_source(model) as source:
        assert [t.name for t in source.tensors()] == ["embed.weight"]
    with open_source({"a.weight": torch.ones(3, 4), "b": torch.zeros(2)}) as source:
        assert [(t.name, t.shape, t.dtype) for t in source.tensors()] == [
            ("a.weight", (3, 4), "F32"),
            ("b", (2,), "F32"),
        ]


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no such file or folder"):
        open_source(tmp_path / "nope")


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"holds no \*\.safetensors weights"):
        open_source(tmp_path)


def test_pickle_only_folder_needs_opt_in(tmp_path: Path) -> None:
    torch.save({"w.weight": torch.randn(8, 8)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        open_source(tmp_path)
    with open_source(tmp_path, allow_pickle=True) as source:
        (t,) = source.tensors()
        assert source.read(t).shape == (8, 8)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_malicious_pickle_is_refused_even_with_opt_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({"w.weight": torch.randn(8, 8), "x": _Boom()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="weights_only=True"):
        open_source(tmp_path, allow_pickle=True)
    assert "pwned" not in capsys.readouterr().out


def _good_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.randn(16, 8), "b.weight": torch.randn(8, 8)}, str(path))
    return path


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = _good_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointFormatError, match="truncated") as err:
        open_source(path)
    assert str(path) in str(err.value)


def test_header_longer_than_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_header(path)


def test_huge_header_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 200 * 2**20) + b"{}")
    with pytest.raises(CheckpointFormatError, match="limit"):
        read_header(path)


def _with_header(tmp_path: Path, header: bytes, data: bytes = b"") -> Path:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_malformed_json_header(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="not valid JSON"):
        read_header(_with_header(tmp_path, b'{"a": [1, 2'))


def test_offsets_past_the_end(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    with pytest.raises(CheckpointFormatError, match="data ends at byte 64"):
        read_header(_with_header(tmp_path, header, b"\0" * 32))


def test_unknown_dtype_string(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F17", "shape": [2], "data_offsets": [0, 4]}}).encode()
    with pytest.raises(CheckpointFormatError, match="unknown dtype 'F17'"):
        read_header(_with_header(tmp_path, header, b"\0" * 4))


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    ).encode()
    with pytest.raises(CheckpointFormatError, match="overlaps"):
        read_header(_with_header(tmp_path, header, b"\0" * 12))


def test_index_naming_a_missing_shard(tiny_llama: Path) -> None:
    next(tiny_llama.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(SourceNotFoundError, match="that file is missing"):
        open_source(tiny_llama)


def test_index_pointing_outside_the_folder(tiny_llama: Path) -> None:
    index = tiny_llama / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointFormatError, match="outside the model folder"):
        open_source(tiny_llama)


@pytest.mark.slow
def test_uncached_hub_id_offline(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, so this runs the real CLI in a
    # fresh process with an empty cache: one line on stderr, exit code 2, nothing written.
    code, _, err = run_cli_process(
        "scan",
        "acme/does-not-exist",
        "--out",
        str(tmp_path / "out"),
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")},
    )
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "acme/does-not-exist" in err and "not in the Hugging Face cache" in err
    assert not (tmp_path / "out").exists()
