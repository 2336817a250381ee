"""An audit's result: the layer table, the summary, the spectra, and writing them to disk.

Files are written into a fresh temporary folder beside the target and moved into place only when all
of them are complete, so a failure (full disk, no permission) leaves no half-written report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_audit.errors import OutputError

SCHEMA_VERSION = 1
FILES = ("audit.json", "layers.csv", "layers.parquet", "spectra.npz")


@dataclass
class AuditResult:
    """What `llm_audit.scan` returns. `layers` is one row per layer, in model order."""

    model: dict[str, Any]
    settings: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    spectra: dict[str, dict[str, np.ndarray]]

    @property
    def layers(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.records)
        if "flags" in frame:
            frame["flags"] = frame["flags"].map(lambda f: ",".join(f))
        return frame.drop(columns=["trap_entries"], errors="ignore")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "settings": self.settings,
            "summary": self.summary,
            "layers": self.records,
        }

    def save(self, folder: str | Path) -> Path:
        """Write audit.json, layers.csv, layers.parquet and spectra.npz into `folder`."""
        return write_all_or_nothing(Path(folder), self._write_all)

    def _write_all(self, folder: Path) -> None:
        write_json(folder / "audit.json", self.to_json())
        table = self.layers
        table.to_csv(folder / "layers.csv", index=False)
        table.to_parquet(folder / "layers.parquet", index=False)
        arrays = {
            f"{layer}/{kind}": v for layer, d in self.spectra.items() for kind, v in d.items()
        }
        with (folder / "spectra.npz").open("wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **arrays)


def write_all_or_nothing(folder: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` into a fresh staging folder beside `folder`, then move its files into `folder`.

    A failure (disk full, no permission) raises `OutputError` and leaves `folder` as it was.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise OutputError(f"cannot create the folder ({exc.strerror})", path=str(folder)) from None
    try:
        write(staging)
        folder.mkdir(exist_ok=True)
        for name in os.listdir(staging):
            os.replace(staging / name, folder / name)
    except OSError as exc:
        raise OutputError(f"cannot write the report ({exc.strerror})", path=str(folder)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=1) + "\n")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and Inf become null (JSON has no NaN), numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
