"""The HTML audit page: one self-contained file (inline CSS, JS and SVG) that opens offline.

`render_html(audit, spectra)` builds the page from `AuditResult.to_json()` (or a loaded
audit.json) and the eigenvalues; `render_file(audit_json, out)` does the same from the files a scan
wrote. Plots are drawn from histograms of log10 λ, so the page stays small for any model size.

Every page (audit, compare_page, calibration.page) is built from one kit: `svg` (axes, ticks,
bars, lines), `histogram` (binned spectra), `plots` (ESD, overlay, depth panels), `page` (the
skeleton, stylesheet and sortable tables of assets/), `view` (formatting, the settings' thresholds).
"""

from llm_audit.report.files import render_file
from llm_audit.report.html import render_html

__all__ = ["render_file", "render_html"]
