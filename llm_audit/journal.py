"""The resume journal: one JSON line per finished layer, flushed and fsync'ed as it is computed.

A scan killed by SIGKILL, a crash or a preemption loses at most the layers in flight; `--resume`
reads the journal back and recomputes nothing it holds. The first line is a header with a settings
fingerprint (model files with sizes and mtimes or the Hub revision, estimator, seed, traps,
min_evals, device, layer filter); a journal written under other settings is refused, never mixed in.
A last line cut off mid-write has no newline: it is ignored and truncated before appending.

Each layer line is `{"record": {...}, "spectra": {"evals": "<base64 float64>", ...}}`; JSON floats
round-trip exactly (Python writes the shortest repr), and NaN/Inf are written as JSON's extensions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from llm_audit.config import AuditConfig
from llm_audit.engine import LayerOutcome
from llm_audit.errors import ConfigError, OutputError
from llm_audit.sources import SourceInfo

JOURNAL_NAME = ".journal.jsonl"
JOURNAL_VERSION = 1


def fingerprint(info: SourceInfo, cfg: AuditConfig, layers: str | None) -> dict[str, Any]:
    """What a layer's results depend on; a journal is reused only when this is unchanged."""
    files: list[list[Any]] = []
    for name in info.files:
        if not os.path.exists(name):  # a streamed Hub shard: the commit in `revision` pins it
            files.append([name])
            continue
        stat = os.stat(name)
        files.append([str(Path(name).resolve()), stat.st_size, stat.st_mtime_ns])
    return {
        "model": info.id,
        "revision": info.revision,
        "files": files,
        "estimator": cfg.estimator,
        "seed": cfg.seed,
        "traps": cfg.traps,
        "min_evals": cfg.min_evals,
        "split_qkv": cfg.split_qkv,
        "device": cfg.device,
        "layers": layers,
    }


class Journal:
    """Append-only record of finished layers; `done` holds those read back on resume."""

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], *, resume: bool) -> None:
        self.path = Path(path)
        self.done: dict[str, LayerOutcome] = {}
        self._header = {"journal": JOURNAL_VERSION, "fingerprint": fingerprint}
        self._fh: IO[bytes] | None = None
        if resume and self.path.exists():
            self.done, good = _read(self.path, fingerprint)
            self._fh = self.path.open("r+b")
            self._fh.truncate(good)  # drop a half-written last line
            self._fh.seek(good)

    def append(self, outcome: LayerOutcome) -> None:
        """Journal one finished layer (its record before flags, and its spectra)."""
        spectra = {k: _encode(v) for k, v in outcome.spectra.items()}
        self._write({"record": outcome.record, "spectra": spectra})

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
            if self._fh is None:  # created with the first finished layer: a failed scan leaves none
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


def _read(path: Path, expected: dict[str, Any]) -> tuple[dict[str, LayerOutcome], int]:
    """Finished layers by name, and the byte length of the journal's complete lines."""
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
    done: dict[str, LayerOutcome] = {}
    for line in lines[1:]:
        entry = json.loads(line)
        spectra = {k: _decode(v) for k, v in entry["spectra"].items()}
        done[entry["record"]["name"]] = LayerOutcome(entry["record"], spectra)
    return done, sum(len(line) + 1 for line in lines)


def _parse(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
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
