"""summary.md (`--format md`, and beside every comparison) and its copy in $GITHUB_STEP_SUMMARY;
the terminal's signed differences."""

from __future__ import annotations

from pathlib import Path

import pytest

import llm_audit
from llm_audit.cli import main
from llm_audit.report.markdown import scan_markdown
from llm_audit.report.terminal import signed


def test_scan_markdown_has_verdict_findings_counts_and_flagged_layers(
    minilm_scan: llm_audit.AuditResult,
) -> None:
    text = scan_markdown(minilm_scan.to_json())
    assert text.startswith("## llm-audit: `sentence-transformers/all-MiniLM-L6-v2`")
    assert "Verdict: **healthy**" in text
    assert "- alpha > 6 in 4 layers" in text
    assert "- traps on outlier dimensions in 5 layers (6 traps)" in text
    assert "| trap layers (verdict) | 0 (0 traps) |" in text
    flagged = [r for r in minilm_scan.records if r["flags"]]
    assert f"### Flagged layers ({len(flagged)})" in text
    assert all(f"| `{r['name']}` |" in text for r in flagged)
    assert "| `embeddings.position_embeddings.weight` | embed | 1.55 |" in text  # not counted
    assert "[report.html](report.html)" in text


def test_format_md_and_the_ci_job_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "step-summary.md"
    job.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(job))
    out = tmp_path / "out"
    args = ["scan", "--out", str(out), "--format", "md", "--layers", r"layer\.0\.", "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]
    written = (out / "summary.md").read_text()
    assert job.read_text() == "earlier step\n" + written + "\n"  # appended, never replaced
    assert "Report written to" in capsys.readouterr().out


def test_no_ci_summary_without_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = tmp_path / "out"
    assert (
        main(
            [
                "scan",
                "--out",
                str(out),
                "--format",
                "json",
                "--layers",
                r"layer\.0\.attention\.self\.query",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["audit.json"]


def test_signed_never_shows_a_negative_zero() -> None:
    assert signed(-0.001) == "+0.00" and signed(-0.0) == "+0.00"
    assert signed(-0.5) == "-0.50" and signed(0.25) == "+0.25"
    assert signed(float("nan")) == "-"
