"""`render_file`: audit.json (and the spectra.npz beside it) to report.html, written atomically."""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from llm_audit.errors import ConfigError, OutputError, SourceNotFoundError
from llm_audit.report.html import check_audit, render_html


def render_file(audit_json: str | Path, out: str | Path | None = None) -> Path:
    """Render `audit_json` (plus `spectra.npz` in the same folder) to `out`, by default
    `report.html` beside the JSON (an existing folder as `out`: `report.html` in it); returns the
    path written.

    Without spectra.npz the page has no ESD plots and says so. Raises `SourceNotFoundError` if the
    JSON is missing, `ConfigError` if it is not an audit.json of the supported schema_version (or
    spectra.npz is unreadable), `OutputError` if the page cannot be written.
    """
    audit_json = Path(audit_json)
    out = Path(out) if out is not None else audit_json.with_name("report.html")
    if out.is_dir():
        out = out / "report.html"
    audit = _read_audit(audit_json)
    spectra = _read_spectra(audit_json.with_name("spectra.npz"))
    page = render_html(audit, spectra)
    _write_atomic(out, page)
    return out


def _read_audit(path: Path) -> dict[str, Any]:
    fix = "pass the audit.json written by `llm-audit scan`"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceNotFoundError(
            f"no such file; run `llm-audit scan` first or {fix}", path=str(path)
        ) from None
    except IsADirectoryError:
        raise SourceNotFoundError(f"is a folder; {fix} inside it", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it ({exc}); {fix}", path=str(path)) from None
    try:
        audit = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not JSON ({exc.msg} at line {exc.lineno}); {fix}", path=str(path)
        ) from None
    try:
        check_audit(audit)
    except ConfigError as exc:  # the same message, naming the file
        raise ConfigError(str(exc), path=str(path)) from None
    return audit


def _read_spectra(path: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """{layer name: {"evals": ..., "rand_evals": ...}} from spectra.npz, None if there is none."""
    if not path.is_file():
        return None
    spectra: dict[str, dict[str, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                name, _, kind = key.rpartition("/")
                spectra.setdefault(name, {})[kind] = npz[key]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"cannot read the spectra ({exc}); delete it to render without ESD plots, "
            "or scan again",
            path=str(path),
        ) from None
    return spectra


def _write_atomic(out: Path, text: str) -> None:
    # A fresh name opened with "x" (not mkstemp) so the page gets the usual umask permissions.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the report ({exc.strerror})", path=str(out)) from None
