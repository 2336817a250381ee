"""The comparison page: a base model against one or more others (fine-tunes, merges, later
checkpoints), as one self-contained HTML file that opens offline.

`render_compare_html(result_json, spectra)` takes `ComparisonResult.to_json()` and the result's
spectra ("base|<name>", "<label>|<name>", "<label>|dW|<name>"). It reuses the scan report's page
skeleton, stylesheet and escaping; the spectra are binned (counts of log10 λ), never embedded raw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from llm_audit.errors import ConfigError
from llm_audit.report import plots
from llm_audit.report.html import CSP, _asset, _dl, _name, _section, _thresholds
from llm_audit.report.view import BINS, FLOOR_DECADES, _clean, fmt, num, role_order, rounded

Spectra = Mapping[str, Mapping[str, np.ndarray]]
Record = Mapping[str, Any]

TOP_CHANGED = 10  # rows of the "changed most" table per other model
TOP_OVERLAYS = 8  # ESD overlays per other model for the layers that changed most ...
MAX_FLAGGED_OVERLAYS = 16  # ... plus at most this many more that gained a flag
MAX_NOT_ALIGNED = 30  # not-aligned names listed per other model
SERIES_CLASSES = 6  # marker shapes and colours, reused cyclically beyond that

# The delta table: (key, header, data type for sorting, header tooltip).
DELTA_COLUMNS = (
    ("name", "name", "text", "tensor name"),
    ("other", "other", "text", "the model compared with the base"),
    ("role", "role", "text", "what the matrix does (q, k, v, o, up, gate, down, ...)"),
    ("block", "block", "num", "transformer block (depth)"),
    ("alignment", "alignment", "text", "aligned, missing, extra or shape_changed"),
    ("base_alpha", "base alpha", "num", "alpha of the base layer"),
    ("other_alpha", "other alpha", "num", "alpha of the other model's layer"),
    ("delta_alpha", "Δalpha", "num", "other alpha − base alpha"),
    ("relative_norm", "ΔW rel. norm", "num", "‖ΔW‖_F / ‖W_base‖_F: size of the update"),
    ("effective_rank", "ΔW eff. rank", "num", "how many directions the update uses"),
    ("dw_alpha", "ΔW alpha", "num", "power-law exponent of the update's own ESD"),
    ("dw_num_traps", "ΔW traps", "num", "correlation traps in the update"),
    ("new_flags", "new flags", "text", "flags the other layer has and the base layer has not"),
    ("vanished_flags", "vanished flags", "text", "flags the base layer had and lost"),
    ("change_score", "change score", "num", "100·new trap + 10·new flags + |Δalpha| + rel. norm"),
)


def render_compare_html(result_json: Mapping[str, Any], spectra: Spectra) -> str:
    """The comparison as one self-contained HTML page (inline CSS, JS and SVG; no network access).

    `result_json` is `ComparisonResult.to_json()` (or a loaded compare.json); `spectra` maps
    "base|<name>", "<label>|<name>" and "<label>|dW|<name>" to {"evals": ...} eigenvalues of WᵀW
    (may be empty: the page then has no ESD overlays). Raises `ConfigError` if `result_json` is
    not a comparison of schema_version 1.
    """
    check_comparison(result_json)
    records = [r for r in result_json["layers"] if isinstance(r, Mapping)]
    labels = [str(o.get("label")) for o in result_json["others"]]
    overlays = _pick_overlays(records, labels)
    anchors = {key: f"O{i}" for i, key in enumerate(k for ks in overlays.values() for k in ks)}
    base_id = str((result_json.get("base") or {}).get("id", "base"))
    body = [
        _header(result_json, labels),
        _summary(result_json, records, labels, anchors),
        _depth(result_json, records, labels, anchors),
        _delta_table(records, labels, anchors),
        _overlays(records, labels, overlays, anchors, spectra or {}),
        _how_to_read(result_json),
    ]
    return "".join(
        [
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="color-scheme" content="light dark">',
            f"<title>{escape(f'llm-audit compare: {base_id}')}</title>",
            f"<style>{_asset('report.css')}{COMPARE_CSS}</style></head><body><main>",
            *body,
            f"</main><script>{COMPARE_JS}</script></body></html>\n",
        ]
    )


def check_comparison(result_json: Any) -> None:
    """Raise `ConfigError` unless `result_json` is a comparison of schema_version 1."""
    if not (
        isinstance(result_json, Mapping)
        and isinstance(result_json.get("layers"), list)
        and isinstance(result_json.get("others"), list)
    ):
        raise ConfigError(
            "not an llm-audit comparison (no 'layers' and 'others' lists); pass the compare.json "
            "written by `llm-audit compare` or ComparisonResult.to_json()"
        )
    if result_json.get("schema_version") != 1:
        raise ConfigError(
            f"schema_version {result_json.get('schema_version')!r} is not supported (this "
            "llm-audit reads 1); run the comparison again"
        )


def _flags(flags: Any) -> str:
    return "".join(f'<span class="flag f-{escape(str(f))}">{escape(str(f))}</span>' for f in flags)


def _fmt(value: Any, key: str = "") -> str:
    """`fmt`, without the minus of a difference that rounds to zero ("-0.00")."""
    text = fmt(value, key)
    return text[1:] if text.startswith("-0") and not text.strip("-0.") else text


def _series(k: int) -> str:
    return f"sr{k % SERIES_CLASSES}"


def _marker(k: int, x: float, y: float, extra: str = "") -> str:
    """A marker of series `k`: circle, square, triangle, diamond, triangle down, cross."""
    cls = f'class="mkr {_series(k)}{extra}"'
    shape = k % SERIES_CLASSES
    if shape == 0:
        return f'<circle {cls} cx="{x:.1f}" cy="{y:.1f}" r="3.4"/>'
    if shape == 1:
        return f'<rect {cls} x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6"/>'
    paths = {
        2: f"M{x - 3.8:.1f},{y + 3:.1f}L{x:.1f},{y - 3.8:.1f}L{x + 3.8:.1f},{y + 3:.1f}Z",
        3: f"M{x:.1f},{y - 4.2:.1f}L{x + 4.2:.1f},{y:.1f}L{x:.1f},{y + 4.2:.1f}L{x - 4.2:.1f},"
        f"{y:.1f}Z",
        4: f"M{x - 3.8:.1f},{y - 3:.1f}L{x:.1f},{y + 3.8:.1f}L{x + 3.8:.1f},{y - 3:.1f}Z",
        5: f"M{x - 1.3:.1f},{y - 4:.1f}h2.6v2.7h2.7v2.6h-2.7v2.7h-2.6v-2.7h-2.7v-2.6h2.7Z",
    }
    return f'<path {cls} d="{paths[shape]}"/>'


def _key(k: int) -> str:
    """The legend's sample of series `k`."""
    return f'<svg class="mk" viewBox="-6 -6 12 12" aria-hidden="true">{_marker(k, 0, 0)}</svg>'


def _models(result_json: Mapping[str, Any], labels: list[str]) -> list[tuple[str, Mapping]]:
    """(label, description) of the base and each other model, in series order."""
    others = [o if isinstance(o, Mapping) else {} for o in result_json["others"]]
    return [("base", result_json.get("base") or {}), *zip(labels, others, strict=True)]


# (1) provenance and settings --------------------------------------------------------------------


def _header(result_json: Mapping[str, Any], labels: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{_key(k)}{'base' if k == 0 else 'other'}</td><td>{escape(label)}</td>"
        f"<td><code>{escape(str(m.get('id', '—')))}</code></td>"
        f"<td>{escape(str(m.get('source') or '—'))}</td>"
        f"<td>{escape(str(m.get('revision') or '—'))}</td>"
        f"<td>{len(m.get('files') or [])}</td><td>{fmt(m.get('adapter_scale'))}</td></tr>"
        for k, (label, m) in enumerate(_models(result_json, labels))
    )
    settings = result_json.get("settings") or {}
    items = [(escape(str(k)), escape(_setting(v))) for k, v in settings.items()]
    base_id = str((result_json.get("base") or {}).get("id", "base"))
    return (
        f'<header id="top"><h1>Comparison with the base <code>{escape(base_id)}</code></h1>'
        '<nav><a href="#summary">what changed most</a><a href="#depth">alpha by depth</a>'
        '<a href="#changes">layer changes</a><a href="#spectra">spectra</a>'
        '<a href="#howto">how to read this</a></nav><div class="provenance">'
        "<table class='mini models'><thead><tr><th>series</th><th>label</th><th>id</th>"
        "<th>source</th><th>revision</th><th>files</th><th>adapter scale</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{_dl(items, 'pairs')}</div></header>"
    )


def _setting(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_setting(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "on" if value else "off"
    return fmt(value) if value is not None else "—"


# (2) what changed most --------------------------------------------------------------------------


def _summary(
    result_json: Mapping[str, Any],
    records: list[Record],
    labels: list[str],
    anchors: dict[tuple[str, str], str],
) -> str:
    per_other = (result_json.get("summary") or {}).get("others") or {}
    by_name = {str(r.get("name")): r for r in records}
    cards = []
    for k, label in enumerate(labels, start=1):
        s = per_other.get(label) or {}
        counts = s.get("alignment") or {}
        aligned = " · ".join(f"{fmt(n)} {escape(str(a))}" for a, n in counts.items())
        not_aligned = list((s.get("not_aligned") or {}).items())
        missing = "".join(
            f"<li><code>{_name(str(n))}</code>: {escape(str(st))}</li>"
            for n, st in not_aligned[:MAX_NOT_ALIGNED]
        )
        more = len(not_aligned) - MAX_NOT_ALIGNED
        missing += f"<li class='muted'>and {more} more (see the table)</li>" if more > 0 else ""
        new = s.get("new_flags") or {}
        new_text = " ".join(f"{_flags([f])} × {fmt(n)}" for f, n in new.items()) or "none"
        traps = ", ".join(
            f"<code>{_name(str(n))}</code>" for n in s.get("layers_with_new_traps") or []
        )
        top = [by_name[n] for n in s.get("most_changed") or [] if n in by_name][:TOP_CHANGED]
        cards.append(
            f'<div class="card other-card"><h3>{_key(k)}{escape(label)}</h3>'
            + _dl(
                [
                    ("alignment", aligned or "—"),
                    ("new flags", new_text),
                    ("new correlation traps in", traps or "none"),
                ]
            )
            + (f"<p>Not aligned (not compared):</p><ul>{missing}</ul>" if missing else "")
            + _top_changed(top, label, anchors)
            + "</div>"
        )
    return _section(
        "summary",
        "What changed most",
        "<p class='muted'>Per model compared with the base: how its layers align by name and "
        "shape, which flags appeared, and the layers with the highest change score.</p>",
        "".join(cards),
    )


def _top_changed(top: list[Record], label: str, anchors: dict[tuple[str, str], str]) -> str:
    if not top:
        return "<p class='muted'>No layer changed.</p>"
    rows = []
    for r in top:
        name = str(r.get("name"))
        delta = (r.get("delta") or {}).get(label) or {}
        anchor = anchors.get((name, label))
        shown = f"<code>{_name(name)}</code>"
        if anchor:
            shown = f'<a href="#{anchor}">{shown}</a>'
        rows.append(
            f"<tr><td class='c-name'>{shown}</td>"
            f"<td>{_fmt((r.get('delta_alpha') or {}).get(label), 'alpha')}</td>"
            f"<td>{fmt(delta.get('relative_norm'))}</td><td>{fmt(delta.get('effective_rank'))}</td>"
            f"<td>{_flags((r.get('new_flags') or {}).get(label) or [])}</td>"
            f"<td>{fmt((r.get('change_score') or {}).get(label))}</td></tr>"
        )
    return (
        "<table class='mini top-changed'><thead><tr><th>layer</th><th>Δalpha</th>"
        "<th>ΔW rel. norm</th><th>ΔW eff. rank</th><th>new flags</th><th>change score</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


# (3) alpha by depth, every model on one chart per role ------------------------------------------

PW, PH = 400, 210
PL, PR, PT, PB = 34, 10, 22, 26


def _depth(
    result_json: Mapping[str, Any],
    records: list[Record],
    labels: list[str],
    anchors: dict[tuple[str, str], str],
) -> str:
    t = _thresholds(result_json)
    series = ["base", *labels]
    points: dict[str, list[list[tuple[int, float, str, str | None]]]] = {}
    loose = []
    for r in records:
        block, name = r.get("block"), str(r.get("name"))
        models = r.get("models") or {}
        alphas = [num((models.get(s) or {}).get("alpha")) for s in series]
        if all(a is None for a in alphas):
            continue
        if not isinstance(block, int) or isinstance(block, bool):
            loose.append((name, alphas))
            continue
        panel = points.setdefault(str(r.get("role")), [[] for _ in series])
        for k, (s, a) in enumerate(zip(series, alphas, strict=True)):
            if a is not None:
                link = anchors.get((name, s)) if k else None
                panel[k].append((block, a, f"{name} · {s}: alpha {fmt(a, 'alpha')}", link))
    legend = " ".join(f'<span class="li">{_key(k)}{escape(s)}</span>' for k, s in enumerate(series))
    if points:
        every = [p for panel in points.values() for ps in panel for p in ps]
        blocks = 1 + max(p[0] for p in every)
        ymax = float(min(12, max(8, math.ceil(max(p[1] for p in every)))))
        bounds = (t["alpha_low"], t["alpha_high"])
        panels = "".join(
            _depth_panel(role, points[role], blocks, ymax, bounds) for role in role_order(points)
        )
    else:
        panels = "<p class='muted'>No layer has a block index, so there is no depth to plot.</p>"
    outside = "".join(
        f"<li><code>{_name(n)}</code>: "
        + ", ".join(f"{escape(s)} {fmt(a, 'alpha')}" for s, a in zip(series, alphas, strict=True))
        + "</li>"
        for n, alphas in loose
    )
    return _section(
        "depth",
        "Alpha by depth",
        f"<p class='muted'>One panel per role, one series per model (a line through each model's "
        f"per-block median). Shaded: alpha below {t['alpha_low']:g} or above {t['alpha_high']:g}. "
        "Hollow markers at the top: alpha above the axis. Click a marker of a compared model to "
        "see its spectra, where they are shown.</p>",
        f'<p class="legend">{legend}</p><div class="panels">{panels}</div>',
        f"<p>Layers outside the blocks:</p><ul>{outside}</ul>" if outside else "",
    )


def _depth_panel(
    role: str,
    series: list[list[tuple[int, float, str, str | None]]],
    blocks: int,
    ymax: float,
    thresholds: tuple[float, float],
) -> str:
    low, high = thresholds
    pw, ph = PW - PL - PR, PH - PT - PB
    slot = pw / max(blocks, 1)
    shift = min(3.0, slot / (len(series) + 1))  # side by side within a block, not on top

    def x(b: float, k: int = 0) -> float:
        return PL + (b + 0.5) * slot + (k - (len(series) - 1) / 2) * shift

    def y(a: float) -> float:
        return PT + (ymax - min(a, ymax)) / ymax * ph

    parts = [
        f'<svg class="depth" viewBox="0 0 {PW} {PH}" role="img" '
        f'aria-label="alpha by block, {escape(role)}">',
        f'<text class="panel-title" x="{PL}" y="14">{escape(role)}</text>',
        f'<rect class="band" x="{PL}" y="{y(low):.1f}" width="{pw}" '
        f'height="{PT + ph - y(low):.1f}"/>',
        f'<rect class="band" x="{PL}" y="{PT}" width="{pw}" height="{y(high) - PT:.1f}"/>',
        f'<rect class="frame" x="{PL}" y="{PT}" width="{pw}" height="{ph}"/>',
    ]
    for v in (low, high):
        parts.append(
            f'<line class="threshold" x1="{PL}" x2="{PL + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
        )
    for v in range(0, int(ymax) + 1, 2):
        parts.append(
            f'<text class="tick" x="{PL - 4}" y="{y(v) + 3:.1f}" text-anchor="end">{v}</text>'
        )
    for b in range(0, blocks, max(1, math.ceil(blocks / 10))):
        parts.append(
            f'<text class="tick" x="{x(b):.1f}" y="{PT + ph + 12}" text-anchor="middle">{b}</text>'
        )
    parts.append(
        f'<text class="axis" x="{PL + pw / 2}" y="{PH - 2}" text-anchor="middle">block</text>'
    )
    for k, pts in enumerate(series):
        medians = plots._medians([{"block": b, "alpha": a} for b, a, _, _ in pts])
        if len(medians) > 1:
            line = "".join(
                f"{'M' if i == 0 else 'L'}{x(b, k):.1f},{y(a):.1f}"
                for i, (b, a) in enumerate(medians)
            )
            parts.append(f'<path class="med {_series(k)}" d="{line}"/>')
    for k, pts in enumerate(series):
        for b, a, title, link in pts:
            mark = _marker(k, x(b, k), y(a), " clip" if a > ymax else "")
            inner = f"<title>{escape(title)}</title>{mark}"
            parts.append(f'<a href="#{link}">{inner}</a>' if link else f"<g>{inner}</g>")
    parts.append("</svg>")
    return "".join(parts)


# (4) the delta table, one row per (layer, other model) ------------------------------------------


def _delta_values(r: Record, label: str) -> dict[str, Any]:
    models = r.get("models") or {}
    delta = (r.get("delta") or {}).get(label) or {}
    return {
        "name": str(r.get("name")),
        "other": label,
        "role": str(r.get("role")),
        "block": r.get("block"),
        "alignment": str((r.get("alignment") or {}).get(label, "—")),
        "base_alpha": (models.get("base") or {}).get("alpha"),
        "other_alpha": (models.get(label) or {}).get("alpha"),
        "delta_alpha": (r.get("delta_alpha") or {}).get(label),
        "relative_norm": delta.get("relative_norm"),
        "effective_rank": delta.get("effective_rank"),
        "dw_alpha": delta.get("alpha"),
        "dw_num_traps": delta.get("num_traps"),
        "new_flags": [str(f) for f in (r.get("new_flags") or {}).get(label) or []],
        "vanished_flags": [str(f) for f in (r.get("vanished_flags") or {}).get(label) or []],
        "change_score": (r.get("change_score") or {}).get(label),
    }


def _td(key: str, kind: str, value: Any, anchor: str | None) -> str:
    """One cell: shown text and `data-v`, the sort key (empty when there is no value)."""
    if isinstance(value, list):
        content, sort = _flags(value), " ".join(value)
    elif kind == "num":
        v = num(value)
        content = _fmt(value, "alpha" if "alpha" in key else key)
        sort = "" if v is None else repr(rounded(v, 7))
    else:
        content, sort = escape(str(value)), str(value)
    if key == "name":
        content = f'<a href="#{anchor}">{_name(value)}</a>' if anchor else _name(value)
    return f'<td class="c-{key}" data-v="{escape(sort)}">{content}</td>'


def _delta_table(
    records: list[Record], labels: list[str], anchors: dict[tuple[str, str], str]
) -> str:
    head = "".join(
        f'<th data-key="{key}" data-type="{kind}" title="{escape(tip)}">{escape(text)}</th>'
        for key, text, kind, tip in DELTA_COLUMNS
    )
    rows = []
    for r in records:
        for label in labels:
            v = _delta_values(r, label)
            anchor = anchors.get((v["name"], label))
            cls = " ".join(
                c
                for c, on in (("flagged", v["new_flags"]), ("skipped", v["alignment"] != "aligned"))
                if on
            )
            cells = "".join(_td(k, kind, v[k], anchor) for k, _, kind, _ in DELTA_COLUMNS)
            rows.append(
                f'<tr class="{cls}" data-other="{escape(label)}">{cells}</tr>'
                if cls
                else f'<tr data-other="{escape(label)}">{cells}</tr>'
            )
    options = "".join(f'<option value="{escape(s)}">{escape(s)}</option>' for s in labels)
    return _section(
        "changes",
        "Layer changes",
        "<p class='muted'>One row per layer and compared model. Click a header to sort (numbers "
        "as numbers, empty cells last); ΔW = W<sub>other</sub> − W<sub>base</sub>.</p>",
        '<div class="controls"><label>model <select id="d-other"><option value="">all</option>'
        f'{options}</select></label><label>name <input id="d-text" type="search" '
        'placeholder="filter by name"></label><span id="d-count" class="muted"></span></div>',
        '<div class="table-wrap"><table id="delta-table" class="layers delta">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>",
    )


# (5) ESD overlays: base, other and ΔW of the layers that changed most ---------------------------


def _pick_overlays(records: list[Record], labels: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per other model, (name, label) of its top layers by change score, then (a bounded number
    of) the other layers that gained a flag, each group by change score."""
    out = {}
    for label in labels:
        scored = [r for r in records if num((r.get("change_score") or {}).get(label)) is not None]
        scored.sort(key=lambda r: -float((r.get("change_score") or {})[label]))
        top = scored[:TOP_OVERLAYS]
        flagged = [r for r in scored[TOP_OVERLAYS:] if (r.get("new_flags") or {}).get(label)]
        picked = top + flagged[:MAX_FLAGGED_OVERLAYS]
        out[label] = [(str(r.get("name")), label) for r in picked]
    return out


def overlay_view(spectra: Sequence[Any]) -> dict[str, Any] | None:
    """Counts of log10 λ of several spectra in `BINS` equal bins over their common range.

    Per spectrum, eigenvalues below its own λ_max·1e-8 (zero up to rounding) are counted in
    `below`, not binned; None when no spectrum has an eigenvalue above zero.
    """
    clean = [_clean(s) for s in spectra]
    shown = [e[e >= e.max() * 10.0**-FLOOR_DECADES] if np.any(e > 0) else e[:0] for e in clean]
    if not any(s.size for s in shown):
        return None
    lo = math.log10(min(float(s.min()) for s in shown if s.size))
    hi = math.log10(max(float(s.max()) for s in shown if s.size))
    if hi - lo < 0.5:  # all eigenvalues (nearly) equal: give the bars some width
        lo, hi = (lo + hi) / 2 - 0.25, (lo + hi) / 2 + 0.25
    lo, hi = math.floor(lo * 1e4) / 1e4, math.ceil(hi * 1e4) / 1e4
    edges = np.linspace(lo, hi, BINS + 1)
    return {
        "lo": lo,
        "hi": hi,
        "counts": [
            [int(c) for c in np.histogram(np.log10(s), bins=edges)[0]] if s.size else []
            for s in shown
        ],
        "n": [int(e.size) for e in clean],
        "below": [int(e.size - s.size) for e, s in zip(clean, shown, strict=True)],
    }


def overlay_svg(view: Mapping[str, Any], classes: Sequence[str], label: str = "") -> str:
    """Log-log densities of the spectra of `view` on one plot: the first as bars, the others as
    step outlines with the given CSS classes (same geometry as the scan report's ESD plot)."""
    lo, hi = float(view["lo"]), float(view["hi"])
    dens = [plots._densities(c, n, lo, hi) for c, n in zip(view["counts"], view["n"], strict=True)]
    values = [d for ds in dens for d in ds if d is not None]
    ylo, yhi = min(values) - 0.25, max(values) + 0.25
    if math.floor(yhi) < ylo:
        ylo = math.floor(ylo)
    W, H, ML, MR, MT, MB = plots.W, plots.H, plots.ML, plots.MR, plots.MT, plots.MB
    pw, ph, base = W - ML - MR, H - MT - MB, H - MB

    def x(u: float) -> float:
        return ML + (u - lo) / (hi - lo) * pw

    def y(v: float) -> float:
        return MT + (yhi - v) / (yhi - ylo) * ph

    parts = [
        f'<svg class="esd overlay" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}">',
        f'<rect class="frame" x="{ML}" y="{MT}" width="{pw}" height="{ph}"/>',
    ]
    for u in plots._log_ticks(lo, hi):
        parts.append(
            f'<line class="grid" x1="{x(u):.1f}" x2="{x(u):.1f}" y1="{MT}" y2="{base}"/>'
            f'<text class="tick" x="{x(u):.1f}" y="{base + 14}" text-anchor="middle">'
            f"{plots.tick_label(u)}</text>"
        )
    for v in plots._log_ticks(ylo, yhi):
        parts.append(
            f'<line class="grid" x1="{ML}" x2="{ML + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text class="tick" x="{ML - 4}" y="{y(v) + 3:.1f}" text-anchor="end">'
            f"{plots.tick_label(v)}</text>"
        )
    step = (hi - lo) / BINS
    for k, (ds, cls) in enumerate(zip(dens, classes, strict=True)):
        if not any(d is not None for d in ds):
            continue
        if k == 0:
            bars = "".join(
                f"M{x(lo + i * step):.1f},{base}V{y(d):.1f}H{x(lo + (i + 1) * step):.1f}V{base}Z"
                for i, d in enumerate(ds)
                if d is not None
            )
            parts.append(f'<path class="{cls}" d="{bars}"/>')
        else:
            parts.append(f'<path class="{cls}" d="{plots._outline(ds, lo, step, x, y, base)}"/>')
    parts.append(
        f'<text class="axis" x="{ML + pw / 2}" y="{H - 6}" text-anchor="middle">'
        "eigenvalue λ of WᵀW (log scale)</text>"
        f'<text class="axis" transform="translate(13,{MT + ph / 2}) rotate(-90)" '
        'text-anchor="middle">density p(λ) (log)</text></svg>'
    )
    return "".join(parts)


def _overlays(
    records: list[Record],
    labels: list[str],
    overlays: dict[str, list[tuple[str, str]]],
    anchors: dict[tuple[str, str], str],
    spectra: Spectra,
) -> str:
    by_name = {str(r.get("name")): r for r in records}
    groups = []
    for k, label in enumerate(labels, start=1):
        cards = "".join(
            _overlay_card(by_name[name], label, k, anchors[(name, label)], spectra)
            for name, _ in overlays[label]
        )
        groups.append(f"<h3>{_key(k)}{escape(label)}</h3>{cards or '<p>No layer changed.</p>'}")
    return _section(
        "spectra",
        "Spectra of the layers that changed most",
        f"<p class='muted'>Per compared model, its {TOP_OVERLAYS} layers with the highest change "
        f"score and (up to {MAX_FLAGGED_OVERLAYS} more) those that gained a flag. Each plot holds "
        "three empirical spectral densities on the same log-log axes: the base layer (bars), the "
        "other model's layer, and the update ΔW (dashed).</p>",
        "".join(groups),
    )


def _overlay_card(r: Record, label: str, k: int, anchor: str, spectra: Spectra) -> str:
    name = str(r.get("name"))
    v = _delta_values(r, label)
    delta = (r.get("delta") or {}).get(label) or {}
    keys = (f"base|{name}", f"{label}|{name}", f"{label}|dW|{name}")
    view = overlay_view([(spectra.get(key) or {}).get("evals") for key in keys])
    names = ("base", label, "ΔW")
    classes = ("esd-bar", f"ov {_series(k)}", "ov ov-dw")
    if view is None:
        plot = '<p class="note">No spectrum stored for this layer.</p>'
    else:
        keys_html = (
            '<span class="key k-bar"></span>base',
            f'<span class="key k-ov {_series(k)}"></span>{escape(label)}',
            '<span class="key k-ov k-dw"></span>ΔW',
        )
        zero = [f"{names[i]}: {n} eigenvalue(s) ≈ 0" for i, n in enumerate(view["below"]) if n]
        legend = " ".join(f'<span class="li">{h}</span>' for h in keys_html) + (
            f" Not drawn: {escape('; '.join(zero))}." if zero else ""
        )
        plot = (
            f"<figure>{overlay_svg(view, classes, f'ESD of {name}: base, {label}, ΔW')}"
            f"<figcaption>{legend}</figcaption></figure>"
        )
    metrics = [
        ("base alpha", fmt(v["base_alpha"], "alpha")),
        (f"{escape(label)} alpha", fmt(v["other_alpha"], "alpha")),
        ("Δalpha", _fmt(v["delta_alpha"], "alpha")),
        ("ΔW rel. norm", fmt(v["relative_norm"])),
        ("ΔW eff. rank", fmt(v["effective_rank"])),
        ("ΔW alpha", fmt(v["dw_alpha"], "alpha")),
        ("ΔW traps", fmt(v["dw_num_traps"])),
        ("ΔW stable rank", fmt(delta.get("stable_rank"))),
        ("ΔW status", escape(str(delta.get("status") or "—"))),
        ("vanished flags", escape(", ".join(v["vanished_flags"]) or "none")),
        ("change score", fmt(v["change_score"])),
    ]
    return (
        f'<article class="layer-card" id="{anchor}"><h3><code>{escape(name)}</code> '
        f"<span class='muted'>{escape(label)}</span> {_flags(v['new_flags'])}</h3>"
        f'<p class="muted">role {escape(v["role"])} · block {fmt(v["block"])} · '
        f'{escape(v["alignment"])}</p><div class="card-body">{_dl(metrics)}{plot}</div></article>'
    )


# (6) how to read this ---------------------------------------------------------------------------


def _how_to_read(result_json: Mapping[str, Any]) -> str:
    t = _thresholds(result_json)
    items = [
        "<b>Δalpha</b> = alpha(other) − alpha(base). Negative: the tail of the spectrum got "
        "heavier, the layer holds more strongly correlated structure; well below "
        f"{t['alpha_low']:g} it may be over-fit. Positive: the spectrum moved towards that of a "
        f"random matrix; above {t['alpha_high']:g} the layer carries little learned structure. "
        "Compare layers of the same role, as alpha depends on the matrix shape.",
        "<b>ΔW</b> = W<sub>other</sub> − W<sub>base</sub>, the update, analyzed like any other "
        "matrix. Its <b>relative norm</b> ‖ΔW‖<sub>F</sub> / ‖W<sub>base</sub>‖<sub>F</sub> says "
        "how large the update is next to the weights: around 0.01 for a light fine-tune, near 1 "
        "when the layer was replaced.",
        "The <b>effective rank</b> of ΔW, exp(entropy of its normalized singular values), says in "
        "how many directions the update acts: at most r for a LoRA adapter of rank r, close to "
        "the matrix size for a full fine-tune, and about k when k single entries were changed.",
        "<b>Correlation traps in ΔW</b>: after shuffling the update's entries, eigenvalues still "
        "stand above the Marchenko–Pastur edge. That happens when a few entries of the update are "
        "far larger than the rest: a handful of weights were changed a lot (a rewritten token, a "
        "bad optimizer step, or an edit made on purpose). A new <span class='flag "
        "f-correlation_trap'>correlation_trap</span> on the other model's layer is the strongest "
        "change signal.",
        "<b>Change score</b> = 100 × (new correlation trap) + 10 × (number of new flags) + "
        "|Δalpha| + relative norm of ΔW: a ranking, not a measure.",
        "<b>Alignment</b>: layers are paired by tensor name and shape only. <i>missing</i> (only "
        "in the base), <i>extra</i> (only in the other) and <i>shape_changed</i> layers are "
        "listed but not compared.",
    ]
    return _section(
        "howto",
        "How to read this",
        "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>",
        "<p class='muted'>Written by llm-audit. This page makes no network request; the raw "
        "eigenvalues stay in the comparison result.</p>",
    )


COMPARE_CSS = """
.sr0 { --c: var(--accent); } .sr1 { --c: var(--rand); } .sr2 { --c: var(--xmin); }
.sr3 { --c: var(--bulk); } .sr4 { --c: var(--fit); } .sr5 { --c: var(--warn); }
svg .mkr { fill: var(--c); stroke: var(--bg); stroke-width: 0.6; }
svg .mkr.clip { fill: var(--bg); stroke: var(--c); stroke-width: 1.5; }
svg .med { fill: none; stroke: var(--c); stroke-width: 1.3; opacity: 0.55; }
svg .ov { fill: none; stroke: var(--c); stroke-width: 1.7; }
svg .ov-dw { stroke: var(--fg); stroke-dasharray: 5 3; stroke-width: 1.4; }
svg.mk { display: inline-block; width: 12px; height: 12px; margin-right: 4px; }
.legend .li { margin-right: 14px; white-space: nowrap; }
.key.k-ov { border-color: var(--c); }
.key.k-dw { border-color: var(--fg); border-top-style: dashed; }
.other-card { margin: 12px 0; } .other-card dl { margin-bottom: 6px; }
.other-card ul { columns: 2; } .provenance table.models { margin-bottom: 10px; }
table.top-changed td.c-name { word-break: break-all; }
table.delta td.c-other, table.delta td.c-alignment, table.delta td.c-new_flags,
table.delta td.c-vanished_flags { text-align: left; }
table.delta tbody tr { cursor: default; }
#spectra > h3 { margin-top: 1.4em; }
"""

# Sorts and filters the delta table; the same behaviour as the scan report's layer table.
COMPARE_JS = """(function () {
  "use strict";
  var table = document.getElementById("delta-table");
  var tbody = table.tBodies[0], heads = table.tHead.rows[0].cells;
  var rows = Array.prototype.slice.call(tbody.rows), state = { col: -1, dir: 1 };
  function sortBy(col) {
    var num = heads[col].getAttribute("data-type") === "num";
    var dir = state.col === col ? -state.dir : 1;
    state = { col: col, dir: dir };
    var keyed = rows.map(function (tr) {
      var v = tr.cells[col].getAttribute("data-v");
      return { tr: tr, v: v === "" ? null : num ? parseFloat(v) : v.toLowerCase() };
    });
    keyed.sort(function (a, b) {
      if (a.v === null || b.v === null) { return a.v === b.v ? 0 : a.v === null ? 1 : -1; }
      return a.v < b.v ? -dir : a.v > b.v ? dir : 0;
    });
    keyed.forEach(function (k) { tbody.appendChild(k.tr); });
    Array.prototype.forEach.call(heads, function (th, i) {
      th.classList.remove("sort-asc", "sort-desc");
      th.removeAttribute("aria-sort");
      if (i === col) {
        th.classList.add(dir === 1 ? "sort-asc" : "sort-desc");
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      }
    });
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(i); });
    th.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(i); }
    });
  });
  var fOther = document.getElementById("d-other"), fText = document.getElementById("d-text");
  function filter() {
    var other = fOther.value, text = fText.value.trim().toLowerCase(), shown = 0;
    rows.forEach(function (tr) {
      var ok = (other === "" || tr.getAttribute("data-other") === other) &&
        (text === "" || tr.cells[0].textContent.toLowerCase().indexOf(text) >= 0);
      tr.hidden = !ok;
      if (ok) { shown += 1; }
    });
    document.getElementById("d-count").textContent = shown + " of " + rows.length + " rows";
  }
  fOther.addEventListener("change", filter);
  fText.addEventListener("input", filter);
  filter();
})();
"""
