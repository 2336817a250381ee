"""The sample reports committed under reports/, made by today's code: `python -m
llm_audit.report.samples` writes them, `--check` says which differ (tests/test_report_samples.py
fails on any).

- reports/all-MiniLM-L6-v2/: report.html and summary.md of the bundled MiniLM (traps on, seed 0,
  CPU), with what changes from machine to machine left out: the weight file's folder, the date,
  the time taken, the libraries' versions.
- reports/calibration/<task>/calibration.html: each calibration run's page, drawn again from its
  committed calibration.json (so a new run needs only its json committed, then this script).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MINILM = Path("all-MiniLM-L6-v2")
CALIBRATION = Path("calibration")


def portable(audit: Mapping[str, Any]) -> dict[str, Any]:
    """The audit without what differs between two machines that scan the same weights alike:
    file folders, start date, time taken, library versions (the tool's version stays)."""
    out = copy.deepcopy(dict(audit))
    model, settings, summary = out["model"], out["settings"], out["summary"]
    model["files"] = [Path(str(f)).name for f in model.get("files") or []]
    settings["started"] = None
    settings["versions"] = {"llm-audit": (settings.get("versions") or {}).get("llm-audit")}
    summary["seconds"] = None
    return out


def minilm_files(result: Any) -> dict[Path, str]:
    """The MiniLM sample's files from `llm_audit.scan(traps=True, seed=0, device="cpu")`."""
    from llm_audit.report import render_html
    from llm_audit.report.markdown import scan_markdown
    from llm_audit.result import _clean

    audit = portable(_clean(result.to_json()))
    return {
        MINILM / "report.html": render_html(audit, result.spectra),
        MINILM / "summary.md": scan_markdown(audit),
    }


def calibration_files(root: Path) -> dict[Path, str]:
    """Each committed calibration run's page, from its calibration.json under `root`."""
    from llm_audit.calibration.page import render_page

    out = {}
    for path in sorted((root / CALIBRATION).glob("*/calibration.json")):
        page = render_page(json.loads(path.read_text()))
        out[path.relative_to(root).with_name("calibration.html")] = page
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=Path("reports"), help="default reports/")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on a diff")
    parser.add_argument("--no-scan", action="store_true", help="only the calibration pages")
    args = parser.parse_args(argv)
    files = calibration_files(args.root)
    if not args.no_scan:
        import llm_audit

        files |= minilm_files(llm_audit.scan(traps=True, seed=0, device="cpu"))
    stale = []
    for rel, text in files.items():
        path = args.root / rel
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(str(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "differ" if args.check else "written"
    print(f"{len(stale)} of {len(files)} samples {verb}" + "".join(f"\n  {p}" for p in stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
