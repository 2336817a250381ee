"""The HTML report: content of every flagged layer, escaping, offline-ness, size, files, browser.

The browser test drives headless Chromium over the DevTools protocol with a small stdlib websocket
client (no extra dependency); it is skipped only when Chromium is not installed.
"""

from __future__ import annotations

import copy
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import llm_audit
from llm_audit.errors import ConfigError, SourceNotFoundError
from llm_audit.report import render_file, render_html
from llm_audit.report.view import esd_view
from llm_audit.vocabulary import SCHEMA_VERSION
from tests import chromium
from tests.chromium import DevTools

MAX_BYTES = 5 * 1024 * 1024
browser = chromium.browser  # the fixture
EVIL = "blocks.<script>alert(1)</script>.weight"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


# ---- fixtures: the bundled MiniLM and a synthetic model with planted traps --------------------


@pytest.fixture(scope="module")
def minilm_result(minilm_scan: llm_audit.AuditResult) -> llm_audit.AuditResult:
    return minilm_scan


@pytest.fixture(scope="module")
def minilm_html(minilm_result: llm_audit.AuditResult) -> str:
    return render_html(minilm_result.to_json(), minilm_result.spectra)


def planted_state_dict() -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """Gaussian matrices; fc1 has 5 entries set to 40 standard deviations (correlation traps)."""
    g = torch.Generator().manual_seed(0)
    fc1 = torch.randn(512, 128, generator=g)
    spots = torch.randperm(fc1.numel(), generator=g)[:5]
    fc1.view(-1)[spots] = 40 * fc1.std()
    tensors = {
        "blocks.0.attn.W_Q.weight": torch.randn(256, 128, generator=g),
        "blocks.0.attn.W_K.weight": torch.randn(256, 128, generator=g),
        "blocks.1.mlp.fc1.weight": fc1,
        "blocks.1.mlp.fc2.weight": torch.randn(128, 512, generator=g),
        EVIL: torch.randn(200, 100, generator=g),
    }
    return tensors, sorted((int(i) // 128, int(i) % 128) for i in spots)


@pytest.fixture(scope="module")
def planted() -> tuple[llm_audit.AuditResult, list[tuple[int, int]]]:
    tensors, spots = planted_state_dict()
    return llm_audit.scan(tensors), spots


@pytest.fixture(scope="module")
def planted_html(planted: tuple[llm_audit.AuditResult, list[tuple[int, int]]]) -> str:
    return render_html(planted[0].to_json(), planted[0].spectra)


# ---- a small HTML reader: table cells, detail cards, trap tables, links -----------------------


class Page(HTMLParser):
    """Collects what the tests look at: each table row's cells by column, each layer card's
    dt/dd pairs and trap-table rows, every tag's attributes, and the embedded JSON."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: dict[int, dict[str, str]] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.headers: list[str] = []
        self.data_json = ""
        self._row: int | None = None
        self._cell: str | None = None
        self._card: str | None = None
        self._dt: str | None = None
        self._in: str | None = None  # "dt", "dd", "td", "h3", "json"
        self._text = ""
        self._trap_row: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        cls = a.get("class", "").split()
        if tag == "th" and "data-key" in a:
            self.headers.append(a["data-key"])
        elif tag == "tr" and "data-i" in a:
            self._row = int(a["data-i"])
            self.rows[self._row] = {}
        elif tag == "td" and self._row is not None:
            self._cell = next(c[2:] for c in cls if c.startswith("c-"))
            self._in, self._text = "td", ""
        elif tag == "article" and "layer-card" in cls:
            self._card = a["id"]
            self.cards[self._card] = {"metrics": {}, "traps": [], "title": ""}
        elif self._card and tag in ("dt", "dd", "h3"):
            self._in, self._text = tag, ""
        elif self._card and tag == "tr":
            self._trap_row = []
        elif self._card and tag == "td" and self._trap_row is not None:
            self._in, self._text = "trap", ""
        elif tag == "script" and a.get("type") == "application/json":
            self._in, self._text = "json", ""

    def handle_endtag(self, tag: str) -> None:
        if self._in == "td" and tag == "td":
            self.rows[self._row or 0][self._cell or ""] = self._text.strip()
            self._in = None
        elif tag == "tr":
            self._row = None
            if self._trap_row and self._card:
                self.cards[self._card]["traps"].append(self._trap_row)
            self._trap_row = None
        elif self._in == "trap" and tag == "td" and self._trap_row is not None:
            self._trap_row.append(self._text.strip())
            self._in = None
        elif self._in == "dt" and tag == "dt":
            self._dt, self._in = self._text.strip(), None
        elif self._in == "dd" and tag == "dd" and self._card:
            self.cards[self._card]["metrics"][self._dt] = self._text.strip()
            self._in = None
        elif self._in == "h3" and tag == "h3" and self._card:
            self.cards[self._card]["title"] = self._text.strip()
            self._in = None
        elif tag == "article":
            self._card = None
        elif self._in == "json" and tag == "script":
            self.data_json, self._in = self._text, None

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data


def static(html: str) -> str:
    """The page before its scripts: what Python rendered (the script also holds SVG snippets)."""
    return html.split("<script", 1)[0]


def check_flagged_layers(html: str, records: list[dict[str, Any]]) -> None:
    page = Page(html)
    flagged = [(i, r) for i, r in enumerate(records) if r["flags"]]
    assert flagged, "the fixture should flag some layers"
    for i, r in flagged:
        row, card = page.rows[i], page.cards[f"L{i}"]
        assert row["name"] == r["name"]
        assert card["title"].startswith(r["name"])
        assert row["flags"].split() == r["flags"]
        alpha = "—" if not math.isfinite(r.get("alpha", math.nan)) else f"{r['alpha']:.2f}"
        assert row["alpha"] == alpha and card["metrics"]["alpha"] == alpha
        assert row["num_traps"] == str(r["num_traps"]) == card["metrics"]["num_traps"]
        if "correlation_trap" in r["flags"]:
            first = r["trap_entries"][0]
            assert card["traps"][0][:2] == [str(first["row"]), str(first["col"])]
    # every layer is in the table, and every metric has a column
    assert len(page.rows) == len(records)
    keys = {k for r in records for k in r} - {"trap_entries"}
    assert keys <= set(page.headers)


# ---- content ---------------------------------------------------------------------------------


def test_minilm_flagged_layers_in_table_and_details(
    minilm_result: llm_audit.AuditResult, minilm_html: str
) -> None:
    check_flagged_layers(minilm_html, minilm_result.to_json()["layers"])
    assert "sentence-transformers/all-MiniLM-L6-v2" in minilm_html
    # one ESD per flagged layer, each with its fit line, xmin, MP edge and shuffled ESD
    n_flagged = sum(bool(r["flags"]) for r in minilm_result.records)
    assert static(minilm_html).count('<svg class="esd"') == n_flagged
    for cls in ("esd-fit", "mark-xmin", "mark-bulk", "esd-rand"):
        assert static(minilm_html).count(f'class="{cls}"') >= n_flagged - 1, cls


def test_planted_traps_shown_with_their_entries(
    planted: tuple[llm_audit.AuditResult, list[tuple[int, int]]], planted_html: str
) -> None:
    result, spots = planted
    records = result.to_json()["layers"]
    check_flagged_layers(planted_html, records)
    i = next(i for i, r in enumerate(records) if r["name"] == "blocks.1.mlp.fc1.weight")
    assert "correlation_trap" in records[i]["flags"] and records[i]["num_traps"] >= 1
    traps = Page(planted_html).cards[f"L{i}"]["traps"]
    assert sorted((int(r), int(c)) for r, c, _, _ in traps[:5]) == spots
    assert all(float(z) > 30 for _, _, _, z in traps[:5])
    assert "▼" in planted_html  # the shuffled spikes are marked on the ESD


def test_summary_sections_and_provenance(
    minilm_result: llm_audit.AuditResult, minilm_html: str
) -> None:
    s = minilm_result.summary
    for text in (
        f'<span class="verdict-name">{s["verdict"]}</span>',
        s["verdict_reason"],
        f"{s['mean_alpha']:.2f}",
        f"{s['median_alpha']:.2f}",
        "too_small",  # the skipped layer and why
        "22.7 M",
        "llm-audit 0.1.0",
        'id="depth"',
        'id="flags"',
        "rand_num_spikes",
        "aspect ratio",
    ):
        assert text in minilm_html, text
    # the depth chart: a panel per block role with the two threshold lines
    roles = {r["role"] for r in minilm_result.records if r["block"] is not None}
    assert static(minilm_html).count('<svg class="depth"') == len(roles)
    assert static(minilm_html).count('class="threshold"') == 2 * len(roles)
    # ringed: layers with a flag the verdict counts; MiniLM's (alpha > 6, traps on outlier
    # dimensions) are all findings, so none; with alpha > 6 counted, its 3 in the blocks
    assert static(minilm_html).count('class="mkr sr0 flagged') == 0
    audit = minilm_result.to_json()
    audit["settings"]["verdict"]["count_alpha_gt_6"] = True
    counting = static(render_html(audit, minilm_result.spectra))
    flagged_in_blocks = sum(
        "alpha_gt_6" in r["flags"] for r in minilm_result.records if r["block"] is not None
    )
    assert counting.count('class="mkr sr0 flagged') == flagged_in_blocks == 3
    # the outlier-dimension panel: MiniLM's four dimensions, 267 among them
    assert 'id="outliers"' in minilm_html and "<td>267</td>" in minilm_html


def test_names_are_escaped_and_data_is_safe(
    planted: tuple[llm_audit.AuditResult, list[tuple[int, int]]], planted_html: str
) -> None:
    assert "<script>alert(1)</script>" not in planted_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in planted_html
    page = Page(planted_html)
    assert [t for t, _ in page.tags].count("script") == 2  # the JSON data and the page's code
    data = json.loads(page.data_json)
    assert EVIL in [v["name"] for v in data["layers"]]


def test_no_external_references(minilm_html: str, planted_html: str) -> None:
    for html in (minilm_html, planted_html):
        for tag, attrs in Page(html).tags:
            assert tag not in ("link", "img", "iframe", "object", "embed"), tag
            for key in ("src", "href", "xlink:href", "action", "data", "poster"):
                value = attrs.get(key, "").strip().lower()
                assert not re.match(r"(https?:)?//", value), (tag, key, value)
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)
        assert "@import" not in html
        assert "://" not in html  # no address of any kind
        assert "default-src 'none'" in html  # and the browser is told to refuse any request


def test_without_spectra_the_page_says_so(minilm_result: llm_audit.AuditResult) -> None:
    html = render_html(minilm_result.to_json(), None)
    assert 'id="no-spectra"' in html and "spectra.npz" in html
    assert '<svg class="esd"' not in static(html)
    check_flagged_layers(html, minilm_result.to_json()["layers"])


def test_size_limit_minilm_and_32_blocks(
    minilm_result: llm_audit.AuditResult, minilm_html: str
) -> None:
    assert len(minilm_html.encode()) < MAX_BYTES
    audit, spectra = llama_like(minilm_result, blocks=32)
    assert len(audit["layers"]) == 2 + 32 * 7
    html = render_html(audit, spectra)
    size = len(html.encode())
    assert size < MAX_BYTES, f"{size / 1e6:.1f} MB"
    assert static(html).count('<svg class="esd"') == len(
        audit["layers"]
    )  # all flagged: the worst case


def llama_like(result: llm_audit.AuditResult, blocks: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A 32-block Llama-shaped audit made by replicating MiniLM layers, every layer flagged, each
    with 4096 eigenvalues and ten trap entries (the largest page such a model could give)."""
    audit = result.to_json()
    by_role = {r["role"]: r for r in result.records if r["status"] == "success"}
    trap_layer = next(r for r in result.records if r.get("trap_entries"))
    rng = np.random.default_rng(0)
    names: list[tuple[str, str, int | None]] = [("model.embed_tokens.weight", "embed", None)]
    for b in range(blocks):
        for proj, role in (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"),
                           ("self_attn.v_proj", "v"), ("self_attn.o_proj", "o"),
                           ("mlp.gate_proj", "gate"), ("mlp.up_proj", "up"),
                           ("mlp.down_proj", "down")):  # fmt: skip
            names.append((f"model.layers.{b}.{proj}.weight", role, b))
    names.append(("lm_head.weight", "lm_head", None))
    layers, spectra = [], {}
    for name, role, block in names:
        source = by_role.get(role, by_role["up"])
        record = copy.deepcopy(source)
        record.update(name=name, role=role, block=block, shape=[4096, 4096], N=4096, M=4096,
                      trap_entries=trap_layer["trap_entries"], num_traps=3,
                      flags=["alpha_lt_2", "correlation_trap"])  # fmt: skip
        record["alpha"] = float(rng.uniform(1.5, 7))
        layers.append(record)
        evals = result.spectra[source["name"]]["evals"]
        spectra[name] = {
            "evals": rng.choice(evals, 4096) * rng.uniform(0.9, 1.1, 4096),
            "rand_evals": rng.choice(result.spectra[source["name"]]["rand_evals"], 4096),
        }
    audit["layers"] = layers
    return audit, spectra


# ---- binning: known answers --------------------------------------------------------


def test_esd_view_counts_every_eigenvalue() -> None:
    evals = np.concatenate([np.zeros(3), np.logspace(-2, 2, 97)])
    rand = np.linspace(0.5, 5, 100)
    record = {"rand_bulk_max": 4.0, "alpha": 3.0, "xmin": 1.0, "xmax": 100.0, "num_pl_spikes": 49}
    v = esd_view(record, {"evals": evals, "rand_evals": rand})
    assert v is not None
    assert sum(v["e"]) == 97 and v["below"] == 3 and v["ne"] == 100
    assert sum(v["r"]) == 100
    assert v["lo"] <= -2 and v["hi"] >= 2 and v["hi"] - v["lo"] < 4.01
    expected = sorted((float(s) for s in rand[rand > 4.0]), reverse=True)[:20]
    assert v["spikes"] == pytest.approx(expected, rel=1e-3)  # 4 significant digits
    # bins are equal in log10 λ: logspace values fall ~evenly
    counts = np.array(v["e"])
    assert counts.max() - counts.min() <= 2


# ---- render_file ----------------------------------------------------------------------------


@pytest.fixture
def saved(minilm_result: llm_audit.AuditResult, tmp_path: Path) -> Path:
    return minilm_result.save(tmp_path / "minilm") / "audit.json"


def test_render_file_writes_report_beside_the_json(saved: Path) -> None:
    out = render_file(saved)
    assert out == saved.with_name("report.html")
    html = out.read_text()
    assert '<svg class="esd"' in static(html) and 'id="no-spectra"' not in html
    assert sorted(p.name for p in saved.parent.iterdir() if p.name.startswith(".")) == []
    other = render_file(saved, saved.parent / "sub" / "x.html")
    assert other.read_text() == html
    assert render_file(saved, saved.parent / "sub") == saved.parent / "sub" / "report.html"


def test_render_file_without_spectra(saved: Path) -> None:
    saved.with_name("spectra.npz").unlink()
    html = render_file(saved).read_text()
    assert 'id="no-spectra"' in html and '<svg class="esd"' not in static(html)


def test_render_file_errors(saved: Path, tmp_path: Path) -> None:
    saved.with_name("report.html").unlink(missing_ok=True)  # written by the scan's save()
    with pytest.raises(SourceNotFoundError, match=r"nothere\.json"):
        render_file(tmp_path / "nothere.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not json {")
    with pytest.raises(ConfigError, match=r"bad\.json: is not JSON, so not an audit\.json"):
        render_file(bad)
    audit = json.loads(saved.read_text())
    audit["schema_version"] = SCHEMA_VERSION + 1
    saved.write_text(json.dumps(audit))
    with pytest.raises(ConfigError, match=r"audit\.json.*schema_version"):
        render_file(saved)
    saved.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not an llm-audit audit"):
        render_file(saved)
    assert not saved.with_name("report.html").exists()


# ---- the page in a real browser --------------------------------------------------------------

NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)")


def static_esd(html: str, i: int) -> str:
    card = html[html.index(f'id="L{i}"') :]
    return card[card.index('<svg class="esd"') : card.index("</svg>") + 6]


def assert_same_svg(a: str, b: str) -> None:
    """Equal up to number formatting (303 vs 303.0, 4.601 vs 4.60145)."""
    ta, tb = NUMBER.split(a), NUMBER.split(b)
    assert len(ta) == len(tb), (a, b)
    for x, y in zip(ta, tb, strict=True):
        if NUMBER.fullmatch(x) and NUMBER.fullmatch(y):
            assert float(x) == pytest.approx(float(y), abs=0.06, rel=1e-3), (x, y)
        else:
            assert x == y


@pytest.mark.slow
def test_report_in_headless_chromium(
    browser: DevTools, minilm_result: llm_audit.AuditResult, minilm_html: str, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(minilm_html)
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")

    # sort by alpha: ascending on the first click, descending on the second; empty cells last
    alphas = [r["alpha"] for r in minilm_result.records if math.isfinite(r.get("alpha", math.nan))]
    first_alpha = (
        "document.querySelector('#layer-table tbody tr').querySelector('.c-alpha').textContent"
    )
    browser.js("document.querySelector('th[data-key=alpha]').click()")
    assert browser.js(first_alpha) == f"{min(alphas):.2f}"
    browser.js("document.querySelector('th[data-key=alpha]').click()")
    assert browser.js(first_alpha) == f"{max(alphas):.2f}"
    last = browser.js("[...document.querySelectorAll('#layer-table tbody tr')].pop().dataset.i")
    assert minilm_result.records[int(last)]["status"] == "too_small"

    # filter by role and by flag
    def choose(select: str, value: str) -> None:
        browser.js(
            f"{{ const s = document.getElementById('{select}'); s.value = '{value}'; "
            "s.dispatchEvent(new Event('change')) }"
        )

    visible = (
        "[...document.querySelectorAll('#layer-table tbody tr')].filter(r => !r.hidden).length"
    )
    choose("f-role", "q")
    assert browser.js(visible) == sum(r["role"] == "q" for r in minilm_result.records)
    choose("f-flag", "outlier_dimension")  # MiniLM's traps all lie on its outlier dimensions
    assert browser.js(visible) == 0  # no q layer has traps in MiniLM
    choose("f-role", "")
    assert (
        browser.js(visible)
        == 6
        == sum("outlier_dimension" in r["flags"] for r in minilm_result.records)
    )
    choose("f-flag", "")
    assert browser.js(visible) == len(minilm_result.records)

    # click an unflagged row: its ESD is drawn by the page's script
    records = minilm_result.records
    i = next(i for i, r in enumerate(records) if r["status"] == "success" and not r["flags"])
    browser.js(f"document.querySelector('#layer-table tr[data-i=\"{i}\"] td.c-D').click()")
    assert browser.js("document.getElementById('picked').hidden") is False
    picked = browser.js("document.getElementById('picked').textContent")
    assert minilm_result.records[i]["name"] in picked
    assert browser.js("document.querySelectorAll('#picked svg.esd path.esd-bar').length") == 1
    assert browser.js("document.querySelectorAll('#picked svg.esd .esd-fit').length") == 1

    # the script draws a layer's ESD exactly as Python drew it (same numbers, same elements)
    for i, r in enumerate(records):
        if r["flags"]:
            drawn = browser.js(
                "llmAudit.esdSvg(JSON.parse(document.getElementById('page-data').textContent)"
                f".layers[{i}].esd, 'ESD of ' + {json.dumps(r['name'])})"
            )
            assert_same_svg(drawn, static_esd(minilm_html, i))

    ARTIFACTS.mkdir(exist_ok=True)
    browser.call("Runtime.evaluate", expression="window.scrollTo(0, 0)")
    browser.screenshot(ARTIFACTS / "report-light.png")
    browser.call(
        "Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}]
    )
    browser.screenshot(ARTIFACTS / "report-dark.png")
    assert (ARTIFACTS / "report-dark.png").stat().st_size > 10_000

    browser.assert_no_errors_and_only_local_requests()
