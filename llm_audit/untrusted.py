"""Reading files a stranger may control: the one strict loader for every JSON and YAML we read.

A model's `config.json`, its index, an adapter's config, a resume journal, an `audit.json` given
to `render` and a `--config` YAML all come through here, under the same rules:

- *regular files only*: a FIFO named `config.json` would hang the scan forever and a link to
  `/dev/zero` would grow until memory runs out, so the file is opened without blocking and
  refused unless `fstat` says it is a regular file;
- *a byte limit*, checked while reading (a file may grow after `stat`);
- *a nesting limit*, checked on the raw bytes before the parser recurses;
- JSON objects with a key twice, and text with lone surrogates, are errors, not data (`json.loads`
  alone keeps the last of two equal keys);
- YAML aliases may expand to at most `MAX_YAML_NODES` nodes (a 455-byte alias bomb otherwise
  expands to gigabytes once printed or merged), and the YAML is the safe subset;
- `expect` checks a value's type with the expected/got/fix message.

`check_model_file` holds the symbolic-link rule for the files of a model folder. Every error is a
one-line `LlmAuditError` (the caller picks the class) that names the file and never echoes its
bytes beyond a short, escaped excerpt of a value that failed a check.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from llm_audit.errors import CheckpointFormatError, ConfigError, LlmAuditError

ErrorClass = Callable[..., LlmAuditError]

MAX_JSON_BYTES = 100_000_000  # an index of 100 000 tensors is about 10 MB
MAX_CONFIG_BYTES = 16_000_000  # config.json, adapter_config.json, a --config YAML
MAX_DEPTH = 64  # the deepest real config (a quantization_config) nests about 5 levels
MAX_YAML_NODES = 10_000  # nodes after alias expansion; the shipped default.yaml has about 40
MAX_NAME_CHARS = 4096  # a tensor name; real ones are under 200, a zip member name is at most 65535

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_CHUNK = 1 << 20


def read_bounded(
    path: str | os.PathLike[str],
    *,
    limit: int,
    what: str,
    fix: str,
    error: ErrorClass = ConfigError,
    missing: ErrorClass | None = None,
) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them.

    Raises `missing` (default `error`) when there is no such file, and `error` for a folder, a
    FIFO, a device or socket, an unreadable file, or one over `limit` bytes.
    """
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise (missing or error)(f"{what} does not exist; {fix}", path=where) from None
    except OSError as exc:
        raise error(f"cannot read {what} ({exc.strerror}); {fix}", path=where) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{what} is {_kind(mode)}, not a regular file; {fix}", path=where)
    with os.fdopen(fd, "rb") as fh:
        try:
            data = _read_at_most(fh, limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} ({exc.strerror}); {fix}", path=where) from None
    if len(data) > limit:
        raise error(f"{what} is over the {limit} byte limit; {fix}", path=where)
    return data


def _read_at_most(fh: BinaryIO, count: int) -> bytes:
    """Up to `count` bytes, in chunks: `read(count)` would allocate `count` bytes for any file."""
    parts, left = [], count
    while left > 0:
        part = fh.read(min(_CHUNK, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "a device")


def read_json(
    path: str | os.PathLike[str],
    *,
    what: str,
    fix: str,
    limit: int = MAX_CONFIG_BYTES,
    error: ErrorClass = ConfigError,
    missing: ErrorClass | None = None,
) -> Any:
    """Parse the JSON file `path` under the rules of this module (see `read_bounded`)."""
    data = read_bounded(path, limit=limit, what=what, fix=fix, error=error, missing=missing)
    return parse_json(data, what=what, path=path, error=error)


def parse_json(
    data: bytes | str,
    *,
    what: str,
    path: str | os.PathLike[str],
    error: ErrorClass = CheckpointFormatError,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse untrusted JSON strictly: UTF-8 only, nesting at most `max_depth`, no key twice, no
    lone surrogates, no integer of thousands of digits. Raises `error` naming `path`."""
    where = str(path)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _nesting(raw) > max_depth:
        raise error(f"{what} is nested too deeply (over {max_depth} levels)", path=where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8 (byte {exc.start})", path=where) from None
    try:
        return json.loads(text, object_pairs_hook=_strict_object)
    except _JsonProblem as exc:
        raise error(f"{what} {exc}", path=where) from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} is not valid JSON ({exc.msg} at char {exc.pos}); the file is corrupt",
            path=where,
        ) from None
    except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
        raise error(
            f"{what} holds a number with too many digits; the file is corrupt", path=where
        ) from None
    except RecursionError:  # only below max_depth on a tiny stack; kept for safety
        raise error(f"{what} is nested too deeply", path=where) from None


def _nesting(raw: bytes) -> int:
    """The deepest bracket nesting of JSON bytes, outside strings; linear time, bounded memory."""
    bare = _JSON_STRING.sub(b'""', raw)
    deepest = depth = 0
    for start in range(0, len(bare), _CHUNK):
        size = min(_CHUNK, len(bare) - start)
        chunk = np.frombuffer(bare, dtype=np.uint8, count=size, offset=start)
        steps = np.isin(chunk, (0x5B, 0x7B)).astype(np.int64) - np.isin(chunk, (0x5D, 0x7D))
        levels = depth + np.cumsum(steps)
        if len(levels):
            deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


class _JsonProblem(ValueError):
    """Raised from inside `json.loads`; turned into the caller's error class by `parse_json`."""


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _JsonProblem(f"names {show(key)} twice; the file is corrupt or was altered")
        texts = (key, value) if isinstance(value, str) else (key,)
        for text in texts:
            if not _is_unicode(text):
                raise _JsonProblem(f"holds text that is not valid Unicode: {show(text)}")
        obj[key] = value
    return obj


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")  # fails on a lone surrogate such as "\ud800"
    except UnicodeEncodeError:
        return False
    return True


def read_yaml(
    path: str | os.PathLike[str],
    *,
    what: str,
    fix: str,
    limit: int = MAX_CONFIG_BYTES,
    error: ErrorClass = ConfigError,
    missing: ErrorClass | None = None,
) -> Any:
    """Parse the YAML file `path` (safe subset) with bounded size, nesting and alias expansion."""
    data = read_bounded(path, limit=limit, what=what, fix=fix, error=error, missing=missing)
    where = str(path)
    loader = yaml.SafeLoader(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, 0, {}) > MAX_YAML_NODES:
            raise error(
                f"{what} expands to over {MAX_YAML_NODES} values through its aliases (&, *); "
                f"write the values out. {fix}",
                path=where,
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(
            f"{what} is not valid YAML ({type(exc).__name__}{at}); {fix}", path=where
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:  # a date such as 2001-02-30
        raise error(f"{what} holds a value YAML cannot build ({exc}); {fix}", path=where) from None
    except RecursionError:
        raise error(f"{what} is nested too deeply; {fix}", path=where) from None
    except _TooDeep:
        raise error(
            f"{what} is nested too deeply (over {MAX_DEPTH} levels); {fix}", path=where
        ) from None
    finally:
        loader.dispose()


class _TooDeep(Exception):
    """A YAML node tree deeper than `MAX_DEPTH`, or a cycle of aliases."""


def _expanded_size(node: yaml.Node, depth: int, sizes: dict[int, int]) -> int:
    """How many nodes `node` becomes once every alias is expanded (memoized: linear time)."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    if id(node) in sizes:
        if sizes[id(node)] < 0:  # still being counted: the node contains itself
            raise _TooDeep
        return sizes[id(node)]
    sizes[id(node)] = -1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, depth + 1, sizes)
        if total > MAX_YAML_NODES:
            break
    sizes[id(node)] = total
    return total


def expect(
    value: Any,
    kind: type | tuple[type, ...],
    *,
    name: str,
    fix: str,
    path: str | os.PathLike[str] | None = None,
    error: ErrorClass = ConfigError,
) -> Any:
    """`value` if it is of `kind` (a bool is never a number); else `error`: expected, got, fix."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    is_bool = isinstance(value, bool) and bool not in kinds
    if not isinstance(value, kinds) or is_bool:
        wanted = " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds)
        got = _TYPE_WORDS.get(type(value), type(value).__name__)
        raise error(
            f"{name}: expected {wanted}, got {show(value)} ({got}); {fix}",
            path=None if path is None else str(path),
        )
    return value


_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    str: "text",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def show(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut short: a hostile file can hold a list of a million items."""
    if isinstance(value, (list, dict)) and len(value) > limit:  # no repr of a huge container
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_no_follow(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """A descriptor of `path` opened without following a link (a link raises `OSError` ELOOP),
    checked with `fstat` to be a regular file with no other name (a hard link planted there
    would be written through too); `OSError` (EEXIST, ELOOP, EMLINK) otherwise. For every file
    llm-audit writes beside or inside `--out`."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        why = "is not a regular file" if not stat.S_ISREG(st.st_mode) else "has another name"
        raise OSError(errno.EMLINK, f"{why}, so it is not written", str(path))
    return fd


def visible(text: str) -> str:
    """`text` with every character that is not printable (newlines, escapes such as ANSI's ESC,
    bidi overrides such as U+202E, other format characters) written as its Python escape, so
    that a name from a file can neither forge lines nor reorder what is shown around it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quote(text: str) -> str:
    """A name for a terminal: as it is when every character prints, else in double quotes with
    backslash, quote and every unprintable character escaped (`"a\\nb"`), as git and ls do."""
    if text.isprintable():
        return text
    marked = {"\\": "\\\\", '"': '\\"'}
    return '"' + "".join(marked.get(c) or visible(c) for c in text) + '"'


def check_model_file(path: Path, folder: Path) -> None:
    """Refuse a file of the model folder `folder` that is not a regular file, or that is a
    symbolic link resolving outside `folder` (and outside the Hub cache's blob store, where a
    snapshot's links point). Checked before the file is opened; raises `CheckpointFormatError`.
    """
    try:
        real, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError):  # a loop of links
        raise CheckpointFormatError(
            "is a looping symbolic link; replace it with the checkpoint file", path=str(path)
        ) from None
    roots = [root]
    if root.parent.name == "snapshots":  # <cache>/models--org--name/snapshots/<commit>/
        roots.append(root.parent.parent / "blobs")
    if not any(real.is_relative_to(r) for r in roots):
        raise CheckpointFormatError(
            "is a symbolic link to a file outside the model folder, which is not read; "
            "copy the file into the folder if you trust it",
            path=str(path),
        )
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise CheckpointFormatError(f"cannot read it ({exc.strerror})", path=str(path)) from None
    if not stat.S_ISREG(mode):
        raise CheckpointFormatError(
            f"is {_kind(mode)}, not a regular file; replace it with the checkpoint file",
            path=str(path),
        )
