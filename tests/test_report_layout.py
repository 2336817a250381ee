"""Pages that fit a desk and a phone, measured in headless Chromium at 1400 and 390 CSS pixels:
every number of a summary card (and of the verdict boxes) lies inside its card and on one line,
nothing but a table's own scroll box is wider than the screen, no chart label is drawn under 7 px,
and the verdict comes before the folded setup. Measured on the boxes the browser lays out, not on
screenshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import llm_audit
from llm_audit.report import render_html
from llm_audit.sources import bundled_model_path
from tests import chromium
from tests.chromium import DevTools
from tests.test_real_weights import gemma3  # noqa: F401  (a fixture)

browser = chromium.browser  # the fixture
REPORTS = Path(__file__).resolve().parents[1] / "reports"
WIDTHS = (1400, 390)

# Per number (a run of digits) in a card: its box against the card's, and its lines. A number in
# a table's scroll box is checked through that box instead (the table scrolls inside the card).
MEASURE = """(() => {
  const bad = [];
  const inside = (r, b) => r.left >= b.left - 0.5 && r.right <= b.right + 0.5 &&
                           r.top >= b.top - 0.5 && r.bottom <= b.bottom + 0.5;
  for (const card of document.querySelectorAll('.card, .verdict')) {
    const box = card.getBoundingClientRect();
    const walker = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
    for (let node; (node = walker.nextNode());) {
      for (const m of node.data.matchAll(/\\d+(?:[.,]\\d+)*/g)) {
        const range = document.createRange();
        range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
        const rects = [...range.getClientRects()].filter(r => r.width > 0);
        if (!rects.length) continue;  // not shown (a folded part)
        const scroller = node.parentElement.closest('.scroll, .table-wrap');
        const own = scroller && card.contains(scroller) ? scroller.getBoundingClientRect() : null;
        const where = (card.querySelector('h3') || card).textContent.slice(0, 40);
        if (!inside(own || range.getBoundingClientRect(), box))
          bad.push(`${where}: ${m[0]} outside its card`);
        if (new Set(rects.map(r => Math.round(r.top))).size > 1)
          bad.push(`${where}: ${m[0]} split across lines`);
      }
    }
  }
  return bad;
})()"""

WIDE = """[...document.querySelectorAll('body *')]
  .filter(e => !e.closest('.scroll, .table-wrap') && e.getBoundingClientRect().right >
               document.documentElement.clientWidth + 0.5)
  .map(e => e.tagName + ' ' + (e.textContent || '').slice(0, 40))"""


# Chart labels as drawn: font size times the scale (a 560-760 wide chart shrinks on a phone).
SMALL_TEXT = """[...document.querySelectorAll('svg text')]
  .filter(t => t.getBoundingClientRect().height > 0)
  .map(t => [t.textContent, parseFloat(getComputedStyle(t).fontSize) *
                            Math.hypot(t.getScreenCTM().a, t.getScreenCTM().b)])
  .filter(([, px]) => px < 7).map(([text, px]) => `${text}: ${px.toFixed(1)} px`)"""


def assert_fits(browser: DevTools, page: Path) -> None:
    for width in WIDTHS:
        browser.open(page, width)
        where = f"{page.name} at {width} px"
        assert browser.js(MEASURE) == [], where
        assert browser.js(WIDE) == [], where
        assert browser.js(SMALL_TEXT) == [], f"{where}: chart labels under 7 px"
        assert browser.js("document.documentElement.scrollWidth") <= width, where
        folded = browser.js("[...document.querySelectorAll('details.setup')].map(d => d.open)")
        assert folded == [False], where  # setup and versions folded, on every page
        first = browser.js(
            "(() => { const s = document.querySelector('#setup').getBoundingClientRect().top;"
            " const v = document.querySelector('#verdict, #verdicts, header p');"
            " return v && v.getBoundingClientRect().top < s; })()"
        )
        assert first, f"{where}: the verdict does not come before the setup"


@pytest.mark.slow
def test_minilm_report_fits(
    browser: DevTools, minilm_scan: llm_audit.AuditResult, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(minilm_scan.to_json(), minilm_scan.spectra))
    assert_fits(browser, page)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mnist-long", "mnist-long64", "modadd"])
def test_calibration_pages_fit(browser: DevTools, task: str) -> None:
    assert_fits(browser, REPORTS / "calibration" / task / "calibration.html")


@pytest.mark.slow
def test_compare_page_fits_and_marks_the_layer_that_gained_a_trap(
    browser: DevTools, tmp_path: Path
) -> None:
    """MiniLM against itself with six planted entries in one query matrix."""
    state = load_file(str(bundled_model_path() / "model.safetensors"))
    name = "encoder.layer.3.attention.self.query.weight"
    w = state[name]
    g = torch.Generator().manual_seed(0)
    w.view(-1)[torch.randperm(w.numel(), generator=g)[:6]] = 30 * w.std()
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    save_file({n: t.contiguous() for n, t in state.items()}, str(tuned / "model.safetensors"))
    (tuned / "config.json").write_text((bundled_model_path() / "config.json").read_text())
    result = llm_audit.compare(bundled_model_path(), tuned, seed=0, device="cpu")
    out = result.save(tmp_path / "cmp")
    summary: dict[str, Any] = result.summary
    assert summary["models"]["base"]["verdict"] == "healthy"
    assert summary["models"]["tuned"]["verdict"] in ("watch", "pathological")
    assert summary["others"]["tuned"]["changes"][0].startswith("verdict healthy → ")
    html = (out / "compare.html").read_text()
    assert html.index('id="verdicts"') < html.index('id="setup"') < html.index('id="summary"')
    assert f"{name} · tuned: alpha" in html and "mkr sr1 flagged trap" in html
    assert_fits(browser, out / "compare.html")


@pytest.mark.slow
@pytest.mark.real_weights
def test_gemma3_gguf_report_fits_and_says_it_is_quantized(
    browser: DevTools,
    gemma3: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    result = llm_audit.scan(gemma3, traps=False, seed=0, device="cpu")
    html = render_html(result.to_json(), result.spectra)
    assert 'class="note warn quant"' in html  # the caveat for dequantized weights
    page = tmp_path / "report.html"
    page.write_text(html)
    assert_fits(browser, page)
