"""The comparison page: a small Llama-like base, one copy with noise everywhere and four large
entries planted in one layer, one with more noise; the page as a parser and a browser see it."""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tests.test_report as report_tests
from llm_audit.compare import ComparisonResult, compare
from llm_audit.errors import ConfigError
from llm_audit.report.compare_page import (
    DELTA_COLUMNS,
    MAX_FLAGGED_OVERLAYS,
    TOP_OVERLAYS,
    overlay_view,
    render_compare_html,
)

MAX_BYTES = 5 * 1024 * 1024
PLANTED = "model.layers.2.mlp.up_proj.weight"
EVIL = "model.layers.1.<script>alert(1)</script>.weight"
LABELS = ["model1", "model2"]  # what compare calls two in-memory state dicts
browser = report_tests.browser  # the headless-Chromium fixture of the scan report's tests


def state_dicts() -> tuple[dict[str, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(0)
    base = {}
    for i in range(4):
        base[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(64, 32, generator=g)
        base[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(128, 64, generator=g)
    base[EVIL] = torch.randn(64, 32, generator=g)
    small = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    for r, c in [(3, 7), (50, 10), (101, 11), (120, 40)]:
        small[PLANTED][r, c] += 40 * base[PLANTED].std()
    larger = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return base, small, larger


@pytest.fixture(scope="module")
def result() -> ComparisonResult:
    return compare(*state_dicts(), traps=True)


@pytest.fixture(scope="module")
def saved(result: ComparisonResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return result.save(tmp_path_factory.mktemp("compare") / "out")


@pytest.fixture(scope="module")
def html(saved: Path) -> str:
    return (saved / "compare.html").read_text(encoding="utf-8")


class ComparePage(HTMLParser):
    """What the tests look at: every tag, the delta table's rows (cells by column), each model's
    changed-most table, the markers per series in each depth panel, and the overlay cards."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.delta_rows: list[dict[str, str]] = []
        self.top: dict[str, list[list[str]]] = {}
        self.panels: dict[str, Counter[str]] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self._table = self._label = self._panel = self._card = self._cell = None
        self._row: Any = None
        self._text: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        cls = a.get("class", "").split()
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id") or ("top" if "top-changed" in cls else None)
        elif tag == "div" and "other-card" in cls:
            self._label = ""
        elif tag == "tr" and self._table == "delta-table" and "data-other" in a:
            self._row = {}
        elif tag == "tr" and self._table == "top" and self._label:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = next((c[2:] for c in cls if c.startswith("c-")), None)
            self._text = ""
        elif tag == "h3" and (self._label == "" or self._card):
            self._text = ""
        elif tag == "svg" and "depth" in cls:
            self._panel = a["aria-label"].rsplit(", ", 1)[-1]
            self.panels[self._panel] = Counter()
        elif self._panel and "mkr" in cls:
            self.panels[self._panel][next(c for c in cls if c.startswith("sr"))] += 1
        elif tag == "article" and "layer-card" in cls:
            self._card = a["id"]
            self.cards[self._card] = {"title": "", "paths": []}
        elif self._card and tag == "path":
            self.cards[self._card]["paths"].append(a.get("class", ""))

    def handle_endtag(self, tag: str) -> None:
        text = (self._text or "").strip()
        if tag == "td" and self._row is not None and self._text is not None:
            if isinstance(self._row, dict):
                self._row[self._cell or ""] = text
            else:
                self._row.append(text)
            self._text = None
        elif tag == "tr" and self._row is not None:
            if isinstance(self._row, dict):
                self.delta_rows.append(self._row)
            elif self._label and self._row:  # not the header row
                self.top.setdefault(self._label, []).append(self._row)
            self._row = None
        elif tag == "h3" and self._text is not None:
            if self._card:
                self.cards[self._card]["title"] = text
            else:
                self._label = text
            self._text = None
        elif tag == "table":
            self._table = None
        elif tag == "svg":
            self._panel = None
        elif tag == "article":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text += data


# ---- content: known answers from the planted layer ------------------------------------------


def test_planted_layer_tops_the_changes_with_its_new_flag(
    result: ComparisonResult, html: str
) -> None:
    page = ComparePage(html)
    assert set(page.top) == set(LABELS)
    first = page.top["model1"][0]
    assert first[0] == PLANTED and "correlation_trap" in first[4]
    record = next(r for r in result.records if r["name"] == PLANTED)
    delta = record["delta"]["model1"]
    assert first[1] == f"{record['delta_alpha']['model1']:.2f}"
    assert first[2] == f"{delta['relative_norm']:.4g}"
    assert first[3] == f"{delta['effective_rank']:.4g}"
    assert "correlation_trap" not in " ".join(row[4] for row in page.top["model2"])
    new_flags = html.split('id="summary"', 1)[1].split("</section>", 1)[0]
    assert "correlation_trap</span> × 1" in new_flags


def test_every_model_is_a_series_in_every_depth_panel(result: ComparisonResult, html: str) -> None:
    page = ComparePage(html)
    assert set(page.panels) == {"q", "up", "other"}
    for role, markers in page.panels.items():
        layers = [r for r in result.records if r["role"] == role]
        expected = {f"sr{k}": len(layers) for k in range(1 + len(LABELS))}
        assert dict(markers) == expected, role
    legend = html.split('<p class="legend">', 1)[1].split("</p>", 1)[0]
    assert all(f"</svg>{s}</span>" in legend for s in ["base", *LABELS])


def test_delta_table_has_one_row_per_layer_and_other(result: ComparisonResult, html: str) -> None:
    page = ComparePage(html)
    assert [k for t, a in page.tags if t == "th" and (k := a.get("data-key"))] == [
        c[0] for c in DELTA_COLUMNS
    ]
    pairs = [(row["name"], row["other"]) for row in page.delta_rows]
    assert pairs == [(r["name"], label) for r in result.records for label in LABELS]
    row = next(r for r in page.delta_rows if (r["name"], r["other"]) == (PLANTED, "model1"))
    record = next(r for r in result.records if r["name"] == PLANTED)
    assert row["base_alpha"] == f"{record['models']['base']['alpha']:.2f}"
    assert row["dw_num_traps"] == str(record["delta"]["model1"]["num_traps"]) != "0"
    assert row["new_flags"] == "correlation_trap" and row["alignment"] == "aligned"


def test_overlays_for_the_layers_that_changed_most(result: ComparisonResult, html: str) -> None:
    page = ComparePage(html)
    titles = [c["title"] for c in page.cards.values()]
    assert titles[0].startswith(f"{PLANTED} model1") and titles[0].endswith("correlation_trap")
    assert len(titles) == len(LABELS) * TOP_OVERLAYS  # 9 layers, none beyond the top 8 flagged
    planted = next(iter(page.cards.values()))
    assert planted["paths"] == [
        "esd-bar",
        "series-line sr1",
        "series-line ov-dw",
    ]  # base, other, ΔW
    assert "application/json" not in html  # binned: no eigenvalue list in the page


def test_overlay_view_counts_every_eigenvalue() -> None:
    view = overlay_view([np.logspace(-2, 2, 100), np.zeros(5), np.array([0.0, 1e-3, 10.0])])
    assert view is not None
    assert [sum(c) for c in view["counts"]] == [100, 0, 2]
    assert view["n"] == [100, 5, 3] and view["below"] == [0, 5, 1]
    assert view["lo"] == pytest.approx(-3) and view["hi"] == pytest.approx(2)
    assert overlay_view([np.zeros(4), None]) is None


# ---- safety and size -------------------------------------------------------------------------


def test_names_are_escaped(html: str) -> None:
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = ComparePage(html)
    assert [t for t, _ in page.tags].count("script") == 1  # the page's own code
    assert EVIL in {row["name"] for row in page.delta_rows}


def test_no_external_references(html: str) -> None:
    for tag, attrs in ComparePage(html).tags:
        assert tag not in ("link", "img", "iframe", "object", "embed"), tag
        for key in ("src", "href", "xlink:href", "action", "data", "poster"):
            value = attrs.get(key, "").strip().lower()
            assert not re.match(r"(https?:)?//", value), (tag, key, value)
            assert key not in attrs or key != "href" or value.startswith("#"), value
    assert "://" not in html and "@import" not in html
    assert "default-src 'none'" in html


def test_save_writes_the_page_beside_json_and_csv(result: ComparisonResult, saved: Path) -> None:
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["compare.csv", "compare.html", "compare.json", "summary.md"]
    data = json.loads((saved / "compare.json").read_text())
    assert (saved / "compare.html").read_text() == render_compare_html(data, result.spectra)


def test_rejects_what_is_not_a_comparison(result: ComparisonResult) -> None:
    with pytest.raises(ConfigError, match="not an llm-audit comparison"):
        render_compare_html({"layers": []}, {})
    with pytest.raises(ConfigError, match="schema_version"):
        render_compare_html({**result.to_json(), "schema_version": 9}, {})


def test_size_limit(html: str, result: ComparisonResult) -> None:
    assert len(html.encode()) < MAX_BYTES
    data, spectra = llama_like(result, blocks=33)
    big = render_compare_html(data, spectra)
    size = len(big.encode())
    assert size < MAX_BYTES, f"{size / 1e6:.1f} MB"
    overlays = 3 * (TOP_OVERLAYS + MAX_FLAGGED_OVERLAYS)  # every layer gained a flag: the cap
    assert len(ComparePage(big).cards) == overlays


def llama_like(result: ComparisonResult, blocks: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """231 layers (7 roles × 33 blocks) × 3 other models, every layer with a new flag, made by
    replicating the small comparison (a third model copies the second)."""
    data = copy.deepcopy(result.to_json())
    data["others"].append({**data["others"][1], "label": "model3"})
    source = {r["role"]: r for r in data["layers"]}
    layers, spectra = [], {}
    rng = np.random.default_rng(0)
    for b in range(blocks):
        for role in ("q", "k", "v", "o", "gate", "up", "down"):
            src = source["q" if role in ("q", "k", "v", "o") else "up"]
            name = f"model.layers.{b}.{role}_proj.weight"
            record = copy.deepcopy(src)
            record.update(name=name, role=role, block=b)
            for key in ("alignment", "models", "delta_alpha", "delta", "change_score"):
                record[key]["model3"] = copy.deepcopy(record[key]["model2"])
            record["new_flags"] = {s: ["alpha_gt_6"] for s in [*LABELS, "model3"]}
            record["vanished_flags"]["model3"] = []
            record["models"]["base"]["alpha"] = float(rng.uniform(1.5, 7))
            layers.append(record)
            for label in ("base", *LABELS, "model3"):
                was = "model2" if label == "model3" else label
                spectra[f"{label}|{name}"] = result.spectra[f"{was}|{src['name']}"]
                if label != "base":
                    spectra[f"{label}|dW|{name}"] = result.spectra[f"{was}|dW|{src['name']}"]
    data["layers"] = layers
    return data, spectra


# ---- the page in a real browser --------------------------------------------------------------


def test_compare_page_in_headless_chromium(
    browser: report_tests.DevTools, result: ComparisonResult, saved: Path
) -> None:
    browser.call("Page.navigate", url=(saved / "compare.html").as_uri())
    browser.wait_for("Page.loadEventFired")
    rows = "[...document.querySelectorAll('#delta-table tbody tr')]"
    first = f"{rows}[0].querySelector('.c-{{}}').textContent"
    scores = [s for r in result.records for s in r["change_score"].values()]
    assert browser.js(f"{rows}.length") == len(result.records) * len(LABELS)

    # sort by change score: ascending on the first click, descending on the second
    browser.js("document.querySelector('th[data-key=change_score]').click()")
    assert browser.js(first.format("change_score")) == f"{min(scores):.4g}"
    browser.js("document.querySelector('th[data-key=change_score]').click()")
    assert browser.js(first.format("name")) == PLANTED
    assert browser.js(first.format("other")) == "model1"
    assert browser.js("document.querySelector('th.sort-desc').dataset.key") == "change_score"
    # a text column sorts as text; a numeric one as numbers (10 after 9), empty cells last
    browser.js("document.querySelector('th[data-key=name]').click()")
    assert browser.js(first.format("name")) == sorted(r["name"].lower() for r in result.records)[0]
    browser.js("document.querySelector('th[data-key=block]').click()")
    blocks = browser.js(f"{rows}.map(r => r.querySelector('.c-block').dataset.v)")
    assert blocks == sorted(blocks, key=lambda v: math.inf if v == "" else float(v))

    # the model filter
    browser.js(
        "{ const s = document.getElementById('d-other'); s.value = 'model2'; "
        "s.dispatchEvent(new Event('change')) }"
    )
    assert browser.js(f"{rows}.filter(r => !r.hidden).length") == len(result.records)
    browser.js(
        "{ const s = document.getElementById('d-other'); s.value = ''; "
        "s.dispatchEvent(new Event('change')) }"
    )

    report_tests.ARTIFACTS.mkdir(exist_ok=True)
    browser.call("Runtime.evaluate", expression="window.scrollTo(0, 0)")
    browser.screenshot(report_tests.ARTIFACTS / "compare.png")
    browser.call(
        "Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}]
    )
    browser.screenshot(report_tests.ARTIFACTS / "compare-dark.png")
    assert (report_tests.ARTIFACTS / "compare-dark.png").stat().st_size > 10_000

    browser.assert_no_errors_and_only_local_requests()
