"""The resume journal: one JSON line per finished job, flushed and fsync'ed as it is computed.

A run killed by SIGKILL, a crash or a preemption loses at most the jobs in flight; a resumed run
reads the journal back and recomputes nothing it holds. The first line is a header with a settings
fingerprint (every model's files with sizes and mtimes or its Hub revision, the settings that
change the numbers, the layer filter); a journal written under other settings is refused, never
mixed in. A last line cut off mid-write has no newline: it is ignored and truncated before
appending.

Each rank of a sharded run appends to its own file (`.journal.rank1.jsonl`) and, on resume, reads
every journal of the run, whatever the number of ranks that wrote them. After the gather, rank 0
appends the other ranks' outcomes to its own file before they delete theirs, so the run's work
survives in one file until the report is written.

Each job line is `{"key": ..., "record": {...}, "spectra": {"evals": "<base64 float64>", ...},
"sha256": ...}`; JSON floats round-trip exactly (Python writes the shortest repr), and NaN/Inf are
written as JSON's extensions. `sha256` is the digest of the line's other fields written with sorted
keys, so a resumed run recomputes it from what it parsed: a line damaged on disk or edited by hand
(an alpha or a trap count changed) fails it. Each line is also checked against the schema (the
types of the key, the identity columns and the numbers flags are drawn from, the spectra) and read
through the strict loader (`untrusted.py`, with a byte limit per line); a line that fails refuses
the whole journal with one line: nothing from it is trusted. The checksum guards against damage
and edits, not against someone who recomputes it: the journal is as trusted as `--out` itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from llm_audit.analysis import Outcome
from llm_audit.config import AuditConfig
from llm_audit.errors import ConfigError, OutputError
from llm_audit.sources import SourceInfo
from llm_audit.untrusted import MAX_NAME_CHARS, open_no_follow, parse_json

JOURNAL_NAME = ".journal.jsonl"
JOURNAL_VERSION = 3
# A line holds a layer's record and spectra: 2 x 8 bytes x M eigenvalues in base64, about 22 bytes
# per eigenvalue: 1.4 MB for M = 65 536, far above any real weight's smaller side.
MAX_LINE_BYTES = 64_000_000
# Record columns that flags, the verdict and the summary are computed from: numbers or null.
_NUMBER_COLUMNS = (
    "alpha", "alpha_weighted", "D", "xmin", "xmax", "lambda_max", "log_norm",
    "log_spectral_norm", "stable_rank", "entropy", "num_evals", "num_pl_spikes",
    "rand_num_spikes", "num_traps", "N", "M", "Q",
)  # fmt: skip
_ENTRY_KEYS = {"key", "record", "spectra", "sha256"}


def fingerprint(
    models: Sequence[SourceInfo], cfg: AuditConfig, *, layers: str | None, command: str
) -> dict[str, Any]:
    """What a run's outcomes depend on; a journal is reused only when this is unchanged."""
    return {
        "command": command,
        "models": [_model_files(info) for info in models],
        "estimator": cfg.estimator,
        "seed": cfg.seed,
        "traps": cfg.traps,
        "min_evals": cfg.min_evals,
        "split_qkv": cfg.split_qkv,
        "device": cfg.device,
        "precision": cfg.precision,
        "layers": layers,
    }


def _model_files(info: SourceInfo) -> dict[str, Any]:
    files: list[list[Any]] = []
    for name in info.files:
        if not os.path.exists(name):  # a streamed Hub shard: the commit in `revision` pins it
            files.append([name])
            continue
        stat = os.stat(name)
        files.append([str(Path(name).resolve()), stat.st_size, stat.st_mtime_ns])
    return {"id": info.id, "revision": info.revision, "files": files}


def rank_path(path: str | os.PathLike[str], rank: int | None) -> Path:
    """The file rank `rank` of a sharded run appends to; a single process keeps the plain name."""
    path = Path(path)
    if rank is None:
        return path
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def run_journals(path: str | os.PathLike[str]) -> list[Path]:
    """Every journal file of the run journaled at `path` (the plain one and every rank's)."""
    path = Path(path)
    ranked = sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))
    return [p for p in (path, *ranked) if p.is_file()]


def is_journal_name(name: str) -> bool:
    """Whether `name` is the file name of a run's journal or of one of its ranks'."""
    stem, suffix = Path(JOURNAL_NAME).stem, Path(JOURNAL_NAME).suffix
    rank = name.removeprefix(stem + ".rank").removesuffix(suffix)
    return name == JOURNAL_NAME or (
        name.startswith(stem + ".rank") and rank.isdigit() and name.endswith(suffix)
    )


def discard(path: str | os.PathLike[str]) -> None:
    """Remove every journal file of the run (once its report holds all it recorded)."""
    for file in run_journals(path):
        file.unlink(missing_ok=True)


class Journal:
    """Append-only record of finished jobs; `done` holds those read back on resume."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: dict[str, Any],
        *,
        resume: bool,
        rank: int | None = None,
    ) -> None:
        self.path = rank_path(path, rank)
        self.done: dict[str, Outcome] = {}
        self.held: set[str] = set()  # keys in this process's own file
        self._header = {"journal": JOURNAL_VERSION, "fingerprint": fingerprint}
        self._fh: IO[bytes] | None = None
        if not resume:
            return
        for file in run_journals(path):
            done, good = _read(file, fingerprint)
            self.done.update(done)
            if file == self.path:
                self.held = set(done)
                self._fh = self._open(os.O_RDWR)
                self._fh.truncate(good)  # drop a half-written last line
                self._fh.seek(good)

    def append(self, key: str, outcome: Outcome) -> None:
        """Journal one finished job (its record before flags, and its spectra)."""
        spectra = {k: _encode(v) for k, v in outcome.spectra.items()}
        entry = {"key": key, "record": outcome.record, "spectra": spectra}
        self._write({**entry, "sha256": _digest(entry)})
        self.held.add(key)

    def remove(self) -> None:
        """Close and delete this process's own file (its outcomes are held elsewhere now)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):  # a full disk was already reported by _write
                fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, flags: int) -> IO[bytes]:
        """The journal file, never through a link (see `untrusted.open_no_follow`)."""
        try:
            return os.fdopen(open_no_follow(self.path, flags), "r+b" if flags & os.O_RDWR else "wb")
        except OSError as exc:
            raise OutputError(
                f"cannot open the resume journal ({exc.strerror or exc})", path=str(self.path)
            ) from None

    def _write(self, entry: dict[str, Any]) -> None:
        created = self._fh is None
        parents = (self.path.parent, *self.path.parent.parents) if created else ()
        made = [p for p in parents if not p.exists()]
        if self._fh is None:  # created with the first finished job: a failed run leaves none
            with contextlib.suppress(OSError):  # an error to come names the real problem
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self._open(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        lines = [self._header, entry] if created else [entry]
        try:
            for line in lines:
                self._fh.write((json.dumps(line, default=_plain) + "\n").encode())
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            if created:  # nothing of use in it: leave no empty journal (nor its folders) behind
                self.remove()
                for folder in made:  # deepest first
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise OutputError(
                f"cannot write the resume journal ({exc.strerror or exc})", path=str(self.path)
            ) from None


def _read(path: Path, expected: dict[str, Any]) -> tuple[dict[str, Outcome], int]:
    """Finished jobs by key, and the byte length of the journal's complete lines."""
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise ConfigError("the resume journal has no header; drop --resume", path=str(path))
    header = _parse(first, 1, path)
    if header.get("journal") != JOURNAL_VERSION or header.get("fingerprint") != expected:
        changed = _first_change(header.get("fingerprint") or {}, expected)
        raise ConfigError(
            f"the resume journal was written with other settings ({changed} changed); "
            "drop --resume to start over",
            path=str(path),
        )
    done: dict[str, Outcome] = {}
    good = len(first) + 1
    for number, line in enumerate(lines, start=2):
        entry = _parse(line, number, path)
        problem = _schema_problem(entry) or (
            "fails its checksum" if entry["sha256"] != _digest(entry) else None
        )
        if problem:
            raise ConfigError(
                f"line {number} of the resume journal is not a finished job: it {problem} "
                "(the file was edited or damaged), so none of it is trusted; drop --resume to "
                "start over",
                path=str(path),
            )
        spectra = {k: _decode(v) for k, v in entry["spectra"].items()}
        done[entry["key"]] = Outcome(dict(entry["record"]), spectra)
        good += len(line) + 1
    return done, good


def _lines(path: Path) -> Iterator[bytes]:
    """The journal's complete lines, streamed (a last one without its newline is left out); a
    line over `MAX_LINE_BYTES` is refused when that many bytes are read, before any more are."""
    try:
        fh = os.fdopen(open_no_follow(path, os.O_RDONLY), "rb")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the resume journal ({exc.strerror or exc}); drop --resume",
            path=str(path),
        ) from None
    with fh:
        while line := fh.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise ConfigError(
                    f"a line of the resume journal is over {MAX_LINE_BYTES} bytes; drop --resume",
                    path=str(path),
                )
            if line.endswith(b"\n"):
                yield line[:-1]


def _parse(line: bytes, number: int, path: Path) -> dict[str, Any]:
    what = f"line {number} of the resume journal"
    value = parse_json(line, what=what, path=path, error=_Damaged)
    return value if isinstance(value, dict) else {}


class _Damaged(ConfigError):
    """A journal line that is not strict JSON, reported with the fix."""

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None):
        super().__init__(
            f"{message}; the file was edited or damaged: drop --resume to start over", path=path
        )


def _schema_problem(entry: dict[str, Any]) -> str | None:
    """What is wrong with a job line's fields, or None: checked before anything is used."""
    if set(entry) != _ENTRY_KEYS:
        return f"does not hold exactly the fields {', '.join(sorted(_ENTRY_KEYS))}"
    record, spectra = entry["record"], entry["spectra"]
    if not isinstance(entry["key"], str) or not isinstance(entry["sha256"], str):
        return "has a key or checksum that is not text"
    if not isinstance(record, dict) or not isinstance(spectra, dict):
        return "has a record or spectra that is not a mapping"
    for column in ("name", "status", "role"):
        if not isinstance(record.get(column), str):
            return f"has a record whose {column} is not text"
    for column in _NUMBER_COLUMNS:
        value = record.get(column)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"has a record whose {column} is not a number"
    problem = _record_problem(record)
    if problem:
        return f"has a record whose {problem}"
    for kind, text in spectra.items():
        if not isinstance(text, str) or _decoded_size(text) % 8:
            return f"has spectra {kind!r} that are not base64 float64 values"
    return None


def _record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with the shapes and sizes of a record's fields, or None: names bounded,
    every integer within int64 and every float finite or NaN (JSON allows 1e400 and a 401-digit
    integer), `shape` a list of counts, `trap_entries` a list of entries at (row, col)."""
    if len(record["name"]) > MAX_NAME_CHARS or "\0" in record["name"]:
        return f"name is over {MAX_NAME_CHARS} characters or holds NUL"
    for column, value in record.items():
        if not _sane_numbers(value):
            return f"{column} holds a number outside int64 or an infinite one"
    shape = record.get("shape")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        return "shape is not a list of counts"
    entries = record.get("trap_entries", [])
    if not isinstance(entries, list) or not all(_is_entry(e) for e in entries):
        return "trap_entries are not a list of {row, col, value, z} entries"
    if not all(record.get(k) is None or _is_count(record[k]) for k in ("block", "expert")):
        return "block or expert is not a count"
    return None


def _sane_numbers(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return not math.isinf(value)  # NaN: a failed fit
    if isinstance(value, list):
        return all(_sane_numbers(v) for v in value)
    if isinstance(value, dict):
        return all(_sane_numbers(v) for v in value.values())
    return False


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_entry(entry: Any) -> bool:
    numbers = isinstance(entry, dict) and all(
        isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool)
        for k in ("value", "z")
    )
    return numbers and _is_count(entry.get("row")) and _is_count(entry.get("col"))


def _decoded_size(text: str) -> int:
    try:
        return len(base64.b64decode(text, validate=True))
    except ValueError:
        return -1


def _digest(entry: dict[str, Any]) -> str:
    """The checksum of a job line: sha256 of its key, record and spectra with sorted keys."""
    fields = {k: entry[k] for k in ("key", "record", "spectra")}
    body = json.dumps(fields, sort_keys=True, default=_plain)
    return hashlib.sha256(body.encode()).hexdigest()


def _first_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    return next((k for k in new if old.get(k) != new[k]), "journal version")


def _encode(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode()


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").copy()


def _plain(value: Any) -> Any:
    """JSON for the numpy scalars and arrays a record may hold."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot journal {type(value).__name__}")


@contextlib.contextmanager
def background_writer(
    log: Journal | None,
) -> Iterator[Callable[[str, Outcome], None] | None]:
    """`append(key, outcome)` that journals on a thread of its own, in order, so the reading
    thread never waits for an fsync. Every outcome handed over is written when the block ends
    (also when it ends by an error); a failed write (a full disk) is raised at the next append
    or at the end, as the journal raised it."""
    if log is None:
        yield None
        return
    todo: queue.SimpleQueue[tuple[str, Outcome] | None] = queue.SimpleQueue()
    failed: list[BaseException] = []

    def write() -> None:
        while (item := todo.get()) is not None:
            if not failed:
                try:
                    log.append(*item)
                except BaseException as exc:  # raised on the caller's thread
                    failed.append(exc)

    def append(key: str, outcome: Outcome) -> None:
        if failed:
            raise failed[0]
        todo.put((key, outcome))

    writer = threading.Thread(target=write, name="llm-audit-journal", daemon=True)
    writer.start()
    try:
        yield append
    finally:
        todo.put(None)
        writer.join()
    if failed:
        raise failed[0]
