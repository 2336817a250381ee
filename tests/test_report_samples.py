"""The committed samples under reports/ are what today's code renders (`python -m
llm_audit.report.samples` writes them again): a change to a page fails here until they are."""

from __future__ import annotations

from pathlib import Path

import llm_audit
from llm_audit.report.samples import calibration_files, minilm_files, portable

REPORTS = Path(__file__).resolve().parents[1] / "reports"
FIX = "regenerate them with `python -m llm_audit.report.samples`"


def test_calibration_pages_are_rendered_from_their_json() -> None:
    files = calibration_files(REPORTS)
    assert len(files) == 3  # mnist-long, mnist-long64, modadd
    for rel, text in files.items():
        assert (REPORTS / rel).read_text(encoding="utf-8") == text, f"{rel} is stale: {FIX}"


def test_minilm_sample_is_todays_scan() -> None:
    """A scan of its own, as the samples script makes (not the shared session scan, which a test
    that reads it could have touched)."""
    result = llm_audit.scan(traps=True, seed=0, device="cpu")
    for rel, text in minilm_files(result).items():
        committed = (REPORTS / rel).read_text(encoding="utf-8")
        assert committed == text, f"{rel} is stale: {FIX}"
        assert "/work/" not in committed and "site-packages" not in committed


def test_portable_leaves_out_what_differs_between_machines(
    minilm_scan: llm_audit.AuditResult,
) -> None:
    audit = portable(minilm_scan.to_json())
    assert audit["model"]["files"] == ["model.safetensors"]
    assert audit["settings"]["started"] is None and audit["summary"]["seconds"] is None
    assert list(audit["settings"]["versions"]) == ["llm-audit"]
    assert minilm_scan.summary["seconds"] is not None  # the result itself is untouched
