"""The HTML audit page: one self-contained file (inline CSS, JS and SVG) that opens offline.

`render_html(audit, spectra)` builds the page from `AuditResult.to_json()` (or a loaded
audit.json) and the eigenvalues; `render_file(audit_json, out)` does the same from the files a scan
wrote. Plots are drawn from histograms of log10 λ, so the page stays small for any model size.

Every page (audit, compare_page, calibration.page) is built from one kit: `svg` (axes, ticks,
bars, lines), `histogram` (binned spectra), `plots` (ESD, overlay, depth panels), `page` (the
skeleton, stylesheet and sortable tables of assets/), `view` (formatting, the settings' thresholds).
"""

import importlib
from typing import Any

_PUBLIC = {"render_file": "llm_audit.report.files", "render_html": "llm_audit.report.html"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """The page builders load on first use: the terminal summary and `describe`, which import
    `report.terminal`, need none of them (nor the numerics they import)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'llm_audit.report' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
