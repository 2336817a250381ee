"""The strict loader (`llm_audit/untrusted.py`): regular files only, byte, nesting and alias limits,
typed checks, and the symbolic-link rule of a model folder. Each rule with at least two inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_audit.config import load_config
from llm_audit.errors import CheckpointFormatError, ConfigError
from llm_audit.untrusted import (
    MAX_DEPTH,
    check_model_file,
    expect,
    parse_json,
    read_bounded,
    read_json,
    read_yaml,
)

FIX = {"what": "config.json", "fix": "fix it"}

# 9 x 9 x ... : 9**8 = 43 million strings once expanded, from a few hundred bytes.
ALIAS_BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


# ---- regular files only -----------------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file; fix it"):
        read_json(fifo, **FIX)


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_a_link_to_a_device_is_refused_before_reading(tmp_path: Path, target: str) -> None:
    link = tmp_path / "config.json"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="is a device, not a regular file"):
        read_bounded(link, limit=10**12, **FIX)


def test_a_folder_and_a_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, not a regular file"):
        read_json(tmp_path, **FIX)
    with pytest.raises(CheckpointFormatError, match=r"nothere\.json: config\.json does not exist"):
        read_json(tmp_path / "nothere.json", **FIX, missing=CheckpointFormatError)


# ---- byte limit -------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "refused"), [(100, False), (101, True), (10_000, True)])
def test_the_byte_limit(tmp_path: Path, size: int, refused: bool) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"[" + b" " * (size - 2) + b"]")
    if refused:
        with pytest.raises(ConfigError, match="is over the 100 byte limit"):
            read_json(path, limit=100, **FIX)
    else:
        assert read_json(path, limit=100, **FIX) == []


# ---- nesting limit ----------------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_nesting_over_the_limit_is_refused(opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    ok = opening * MAX_DEPTH + "1" + closing * MAX_DEPTH
    assert parse_json(ok, what="x", path="p") is not None
    deep = opening * (MAX_DEPTH + 1) + "1" + closing * (MAX_DEPTH + 1)
    with pytest.raises(CheckpointFormatError, match="nested too deeply"):
        parse_json(deep, what="x", path="p")


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = '{"a": "' + "[" * 1000 + '", "b\\"[[[": 2}'
    assert parse_json(text, what="x", path="p") == {"a": "[" * 1000, 'b"[[[': 2}


def test_a_million_brackets_are_refused_before_the_parser_recurses() -> None:
    with pytest.raises(ConfigError, match=r"nested too deeply \(over 64 levels\)"):
        parse_json(b"[" * 10**6 + b"]" * 10**6, what="x", path="p", error=ConfigError)


# ---- strict JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"r": 4, "r": 8}', "names 'r' twice"),
        ('{"a": "\\ud800"}', "not valid Unicode"),
        (b'{"a": "\xff"}', "is not valid UTF-8"),
        ("[1, 2", "is not valid JSON"),
    ],
)
def test_strict_json_problems(text: str | bytes, says: str) -> None:
    with pytest.raises(CheckpointFormatError, match=says):
        parse_json(text, what="x", path="p")


# ---- YAML -------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert bomb.stat().st_size < 600
    with pytest.raises(ConfigError, match="expands to over 10000 values through its aliases"):
        read_yaml(bomb, **FIX)
    with pytest.raises(ConfigError, match=r"bomb\.yaml: config file expands to over"):
        load_config(bomb)  # the --config path


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: &a [1, *a]", "nested too deeply"),  # an alias inside its own anchor: a cycle
        ("a: " + "[" * 200 + "]" * 200, "nested too deeply"),
        ("a: [1, 2\n", "is not valid YAML"),
        ("a: !!python/object:os.system {}", "is not valid YAML"),  # the safe subset only
        ("a: 2001-02-30", "holds a value YAML cannot build .day is out of range for month"),
    ],
)
def test_yaml_problems(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=says):
        read_yaml(path, **FIX)


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {alpha_low: 2.0}\nthresholds: *b\n")
    assert read_yaml(path, **FIX) == {"base": {"alpha_low": 2.0}, "thresholds": {"alpha_low": 2.0}}


# ---- typed checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "says"),
    [
        ("four", int, "r: expected an integer, got 'four' (text); fix it"),
        (True, int, "r: expected an integer, got True (true or false); fix it"),
        (
            [1] * 1000,
            (int, float),
            "r: expected an integer or a number, got <list of 1000 items> (a list); fix it",
        ),
    ],
)
def test_expect_says_expected_got_and_fix(value: object, kind: type, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        expect(value, kind, name="r", fix="fix it", path="adapter_config.json")
    assert str(caught.value) == f"adapter_config.json: {says}"
    assert expect(3, int, name="r", fix="") == 3


# ---- the symbolic-link rule -------------------------------------------------------------------


def test_links_inside_the_folder_or_to_the_hub_blob_store_are_read(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--name"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "sha").write_text("{}")
    (snapshot / "config.json").symlink_to("../../blobs/sha")
    (snapshot / "real.json").write_text("{}")
    (snapshot / "alias.json").symlink_to("real.json")
    for name in ("config.json", "real.json", "alias.json"):
        check_model_file(snapshot / name, snapshot)


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.safetensors"])
def test_links_out_of_the_folder_are_refused_without_echoing_bytes(
    tmp_path: Path, target: str
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"SECRET!!" * 4)
    (folder / "model.safetensors").symlink_to(target)
    with pytest.raises(CheckpointFormatError) as caught:
        check_model_file(folder / "model.safetensors", folder)
    message = str(caught.value)
    assert "symbolic link to a file outside the model folder" in message
    assert "root:" not in message and "SECRET" not in message


def test_a_loop_of_links_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").symlink_to("b.safetensors")
    (tmp_path / "b.safetensors").symlink_to("a.safetensors")
    with pytest.raises(CheckpointFormatError, match="looping symbolic link"):
        check_model_file(tmp_path / "a.safetensors", tmp_path)


# ---- fuzzing: only our one-line errors ever come out ------------------------------------------

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.binary(max_size=200) | st.text(alphabet='[]{}",:\\0123 aeu', max_size=200))
def test_any_json_bytes_parse_or_raise_our_error(data: bytes | str) -> None:
    try:
        parse_json(data, what="x", path="p", error=ConfigError)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.text(alphabet="&*ab: -[]{},\n!'\"0123.e+", max_size=120))
def test_any_yaml_text_loads_or_raises_our_error(tmp_path_factory: pytest.TempPathFactory,
                                                 text: str) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(text)
    try:
        read_yaml(path, **FIX)
    except ConfigError as exc:
        assert "\n" not in str(exc)
