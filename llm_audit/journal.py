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

Each job line is `{"key": ..., "record": {...}, "spectra": {"evals": "<base64 float64>", ...}}`;
JSON floats round-trip exactly (Python writes the shortest repr), and NaN/Inf are written as JSON's
extensions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from llm_audit.analysis import Outcome
from llm_audit.config import AuditConfig
from llm_audit.errors import ConfigError, OutputError
from llm_audit.sources import SourceInfo

JOURNAL_NAME = ".journal.jsonl"
JOURNAL_VERSION = 2


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
                self._fh = self.path.open("r+b")
                self._fh.truncate(good)  # drop a half-written last line
                self._fh.seek(good)

    def append(self, key: str, outcome: Outcome) -> None:
        """Journal one finished job (its record before flags, and its spectra)."""
        spectra = {k: _encode(v) for k, v in outcome.spectra.items()}
        self._write({"key": key, "record": outcome.record, "spectra": spectra})
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

    def _write(self, entry: dict[str, Any]) -> None:
        try:
            if self._fh is None:  # created with the first finished job: a failed run leaves none
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("wb")
                self._write(self._header)
            self._fh.write((json.dumps(entry, default=_plain) + "\n").encode())
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OutputError(
                f"cannot write the resume journal ({exc.strerror or exc})", path=str(self.path)
            ) from None


def _read(path: Path, expected: dict[str, Any]) -> tuple[dict[str, Outcome], int]:
    """Finished jobs by key, and the byte length of the journal's complete lines."""
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the part after the last newline is incomplete or empty
    if not lines:
        raise ConfigError("the resume journal has no header; drop --resume", path=str(path))
    header = _parse(lines[0])
    if header.get("journal") != JOURNAL_VERSION or header.get("fingerprint") != expected:
        changed = _first_change(header.get("fingerprint") or {}, expected)
        raise ConfigError(
            f"the resume journal was written with other settings ({changed} changed); "
            "drop --resume to start over",
            path=str(path),
        )
    done: dict[str, Outcome] = {}
    for number, line in enumerate(lines[1:], start=2):
        entry = _parse(line)
        try:
            spectra = {k: _decode(v) for k, v in entry["spectra"].items()}
            done[str(entry["key"])] = Outcome(dict(entry["record"]), spectra)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"line {number} of the resume journal is not a finished job (the file was "
                "edited or damaged); drop --resume to start over",
                path=str(path),
            ) from None
    return done, sum(len(line) + 1 for line in lines)


def _parse(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


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
