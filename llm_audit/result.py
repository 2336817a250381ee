"""What scan and compare return, the provenance both record, and writing them to disk.

`AuditResult` (one model) and `ComparisonResult` (a base and its fine-tunes) carry typed parts:
the models' provenance (`provenance`) and the run's settings (`run_settings`), built here once for
both. A report folder is written whole into a staging folder and swapped in (`report/files.py`), so
a failure (full disk, no permission) leaves no half-written report and a rescan no stale file.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import math
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_audit.architectures import model_family
from llm_audit.config import AuditConfig
from llm_audit.errors import ConfigError
from llm_audit.quant import describe_config
from llm_audit.report.files import replace_folder, table_of, write_csv
from llm_audit.sources import SourceInfo, TensorInfo
from llm_audit.spectral.precision import describe as describe_precision
from llm_audit.vocabulary import FORMATS, SCHEMA_VERSION

if TYPE_CHECKING:  # pandas (0.5-1 s to import) loads when a table is made, not with a scan
    import pandas as pd

COMPARE_FILES = ("compare.json", "compare.csv", "compare.html", "summary.md")
REPORT_FILES = frozenset((*FORMATS.values(), *COMPARE_FILES))  # what a report folder may hold


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
        """The per-layer table (layers.csv, layers.parquet): integer counts stay integers where a
        skipped layer has none, and `counted` says whether the summary and verdict count the row."""
        from llm_audit.summary import is_counted

        frame = table_of(self.records)
        if "flags" in frame:
            frame["flags"] = frame["flags"].map(lambda f: ",".join(f))
        frame["counted"] = [is_counted(r, self.summary) for r in self.records]
        return frame.drop(columns=["trap_entries"], errors="ignore")

    def to_json(self) -> dict[str, Any]:
        """audit.json's content: a copy, so that changing it leaves the result as it was."""
        return copy.deepcopy({
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "settings": self.settings,
            "summary": self.summary,
            "layers": self.records,
        })  # fmt: skip

    def save(self, folder: str | Path, formats: tuple[str, ...] = tuple(FORMATS)) -> Path:
        """Write the report files named by `formats` (keys of FORMATS) into `folder`."""
        check_formats(formats)
        write = functools.partial(self._write, formats=formats)
        return replace_folder(Path(folder), write, REPORT_FILES)

    def _write(self, folder: Path, formats: tuple[str, ...]) -> None:
        audit = self.to_json()  # one copy for every file; nothing below changes it
        if "json" in formats:
            write_json(folder / "audit.json", audit)
        table = self.layers
        if "csv" in formats:
            write_csv(table, folder / "layers.csv")
        if "parquet" in formats:
            table.to_parquet(folder / "layers.parquet", index=False)
        if "npz" in formats:
            arrays = {
                f"{name}/{kind}": v for name, d in self.spectra.items() for kind, v in d.items()
            }
            with (folder / "spectra.npz").open("wb") as fh:
                np.savez_compressed(fh, allow_pickle=False, **arrays)
        if "html" in formats:
            from llm_audit.report import render_html

            html = render_html(_clean(audit), self.spectra)
            (folder / "report.html").write_text(html, encoding="utf-8")
        if "md" in formats:
            from llm_audit.report.markdown import scan_markdown

            (folder / "summary.md").write_text(scan_markdown(_clean(audit)))


@dataclass
class ComparisonResult:
    """What `llm_audit.compare` returns; `records` hold one entry per layer name."""

    base: dict[str, Any]
    others: list[dict[str, Any]]
    settings: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    spectra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """compare.json's content: a copy, so that changing it leaves the result as it was."""
        return copy.deepcopy({
            "schema_version": SCHEMA_VERSION,
            "base": self.base,
            "others": self.others,
            "settings": self.settings,
            "summary": self.summary,
            "layers": self.records,
        })  # fmt: skip

    def save(self, folder: str | Path) -> Path:
        """Write compare.json, compare.csv, the page compare.html and summary.md into `folder`."""
        from llm_audit.report.compare_page import render_compare_html
        from llm_audit.report.markdown import compare_markdown

        def write(staging: Path) -> None:
            result = self.to_json()  # one copy for every file; nothing below changes it
            write_json(staging / "compare.json", result)
            write_csv(table_of(self.table()), staging / "compare.csv")
            page = render_compare_html(result, self.spectra)
            (staging / "compare.html").write_text(page, encoding="utf-8")
            (staging / "summary.md").write_text(compare_markdown(_clean(result)))

        return replace_folder(Path(folder), write, REPORT_FILES)

    def table(self) -> list[dict[str, Any]]:
        """One flat row per (layer, other model), for compare.csv."""
        rows = []
        for r in self.records:
            for other in self.others:
                label = other["label"]
                base, mine = r["models"].get("base", {}), r["models"].get(label, {})
                delta = r["delta"].get(label, {})
                rows.append(
                    {
                        "name": r["name"],
                        "block": r["block"],
                        "stack": r.get("stack"),
                        "role": r["role"],
                        "other": label,
                        "alignment": r["alignment"][label],
                        "base_alpha": base.get("alpha"),
                        "other_alpha": mine.get("alpha"),
                        "delta_alpha": r["delta_alpha"].get(label),
                        "base_num_traps": base.get("num_traps"),
                        "other_num_traps": mine.get("num_traps"),
                        "new_flags": ",".join(r["new_flags"].get(label, [])),
                        "vanished_flags": ",".join(r["vanished_flags"].get(label, [])),
                        **{f"dW_{k}": delta.get(k) for k in DELTA_COLUMNS},
                        "change_score": r["change_score"].get(label),
                    }
                )
        return rows


# Columns of an update ΔW kept in compare.json and compare.csv.
DELTA_COLUMNS = (
    "alpha",
    "D",
    "stable_rank",
    "log_norm",
    "num_traps",
    "rand_num_spikes",
    "status",
    "relative_norm",
    "effective_rank",
)


def provenance(info: SourceInfo, tensors: list[TensorInfo], naming: str | None) -> dict[str, Any]:
    """Where a model's weights came from, as every report records it; `naming` is the family
    file that named the layers, the family only for a bare weights file (no config.json)."""
    dtypes = sorted({t.dtype for t in tensors if len(t.shape) == 2})
    return {
        "id": info.id,
        "source": info.kind,
        "revision": info.revision,
        "files": info.files,
        "family": model_family(info.config, naming),
        "num_parameters": sum(t.numel for t in tensors),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "quantization": describe_config(info.config),  # method, bits, group size; or None
    }


def run_settings(
    cfg: AuditConfig, *, device: str, started: dt.datetime, layers: str | None
) -> dict[str, Any]:
    """The settings and environment a run's numbers depend on, as every report records them."""
    return {
        **cfg.as_dict(),
        "device": device,
        "layers": layers,
        "eigensolver": describe_precision(cfg.precision, device),
        "dtype_policy": (
            "F64/F32/F16/BF16 upcast to float64 chunk by chunk; GGUF, FP8, MXFP4, GPTQ, AWQ and "
            "bitsandbytes dequantized row block by row block; other dtypes skipped"
        ),
        "started": started.isoformat(timespec="seconds"),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """The tool's and its numerical libraries' versions, recorded in every report."""
    out = {"python": platform.python_version()}
    for package in ("llm-audit", "torch", "numpy", "safetensors", "huggingface_hub", "pandas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def check_formats(formats: tuple[str, ...]) -> None:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        name = repr(unknown[0]) if unknown else "(empty)"
        raise ConfigError(f"--format: unknown format {name}; use any of {', '.join(FORMATS)}")


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
