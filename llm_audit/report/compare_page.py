"""The comparison page: a base model against one or more others (fine-tunes, merges, later
checkpoints), as one self-contained HTML file that opens offline.

`render_compare_html(result_json, spectra)` takes `ComparisonResult.to_json()` and the result's
spectra ("base|<name>", "<label>|<name>", "<label>|dW|<name>"). It is drawn with the same kit as
the audit page (`page`, `plots`); the spectra are binned (`histogram`), never embedded raw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from llm_audit.errors import ConfigError
from llm_audit.report import page, plots
from llm_audit.report.histogram import drawn, finite, log_counts, log_edges
from llm_audit.report.plots import series_class, series_key
from llm_audit.report.view import (
    block_of,
    fmt,
    num,
    panel_of,
    quantization_note,
    sort_key,
    thresholds,
    verdict_rule,
)
from llm_audit.summary import count_lines
from llm_audit.vocabulary import ALIGNED, FAR_FROM_BASE, TRAP_FLAGS

Spectra = Mapping[str, Mapping[str, np.ndarray]]
Record = Mapping[str, Any]

TOP_CHANGED = 10  # rows of the "changed most" table per other model
TOP_OVERLAYS = 8  # ESD overlays per other model for the layers that changed most ...
MAX_FLAGGED_OVERLAYS = 16  # ... plus at most this many more that gained a flag
MAX_NOT_ALIGNED = 30  # not-aligned names listed per other model

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
        _title(result_json),
        _verdicts(result_json, labels),
        _header(result_json, labels),
        _summary((result_json.get("summary") or {}).get("others") or {}, records, labels, anchors),
        _depth(result_json, records, labels, anchors),
        _delta_table(records, labels, anchors),
        _overlays(records, labels, overlays, anchors, spectra or {}),
        _how_to_read(result_json),
    ]
    return page.document(f"llm-audit compare: {base_id}", body)


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


def _fmt(value: Any, key: str = "") -> str:
    """`fmt`, without the minus of a difference that rounds to zero ("-0.00")."""
    text = fmt(value, key)
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def _models(result_json: Mapping[str, Any], labels: list[str]) -> list[tuple[str, Mapping]]:
    """(label, description) of the base and each other model, in series order."""
    others = [o if isinstance(o, Mapping) else {} for o in result_json["others"]]
    return [("base", result_json.get("base") or {}), *zip(labels, others, strict=True)]


# (1) provenance and settings --------------------------------------------------------------------


def _title(result_json: Mapping[str, Any]) -> str:
    base_id = str((result_json.get("base") or {}).get("id", "base"))
    return (
        f'<header id="top"><h1>Comparison with the base <code>{escape(base_id)}</code></h1>'
        '<nav><a href="#verdicts">verdicts</a><a href="#setup">setup</a>'
        '<a href="#summary">what changed most</a><a href="#depth">alpha by depth</a>'
        '<a href="#changes">layer changes</a><a href="#spectra">spectra</a>'
        '<a href="#howto">how to read this</a></nav></header>'
    )


def _verdicts(result_json: Mapping[str, Any], labels: list[str]) -> str:
    """Per model, the base first: its verdict, what changed from the base, its findings and the
    counts behind them (`summary.count_lines`), as a scan of that model alone would give them."""
    summary = result_json.get("summary") or {}
    models = summary.get("models") or {}
    others = summary.get("others") or {}
    t, rule = thresholds(result_json), verdict_rule(result_json)
    cards = []
    for k, (label, description) in enumerate(_models(result_json, labels)):
        m = models.get(label) or {}
        verdict = str(m.get("verdict", "unknown"))
        changed = [str(c) for c in (others.get(label) or {}).get("changes") or []]
        found = [f for f in m.get("findings") or [] if isinstance(f, Mapping)]
        far = [str(f.get("text")) for f in found if f.get("name") == FAR_FROM_BASE]
        counted, _ = count_lines(m, t, rule)
        cards.append(
            f'<div class="verdict v-{escape(verdict)}{" far" if far else ""}">'
            f"<h3>{series_key(k)}{escape(label)}</h3>"
            f'<span class="verdict-name">{escape(verdict)}</span>'
            + "".join(f"<p class='far-note'>{escape(text)}</p>" for text in far)
            + f"<p class='reason'>{escape(str(m.get('verdict_reason', '—')))}</p>"
            + (_items("Changed from the base", changed) if k else "")
            + _items(
                "Findings (not counted by the verdict)",
                [str(f.get("text")) for f in found if f.get("name") != FAR_FROM_BASE],
            )
            + page.counts(counted)
            + quantization_note(description)
            + "</div>"
        )
    return page.section(
        "verdicts",
        "Verdicts",
        "<p class='muted'>Each model judged on its own, as <code>llm-audit scan</code> would: "
        "does its spectrum show the over-fitting or anti-grokking signature? Then what changed "
        "from the base.</p>",
        f'<div class="verdicts">{"".join(cards)}</div>',
    )


def _items(title: str, items: list[str]) -> str:
    listed = "".join(f"<li>{escape(i)}</li>" for i in items) or "<li>none</li>"
    return f"<p><b>{title}:</b></p><ul class='findings'>{listed}</ul>"


def _header(result_json: Mapping[str, Any], labels: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{series_key(k)}{'base' if k == 0 else 'other'}</td><td>{escape(label)}</td>"
        f"<td><code>{escape(str(m.get('id', '—')))}</code></td>"
        f"<td>{escape(str(m.get('source') or '—'))}</td>"
        f"<td>{escape(str(m.get('revision') or '—'))}</td>"
        f"<td>{len(m.get('files') or [])}</td><td>{fmt(m.get('adapter_scale'))}</td></tr>"
        for k, (label, m) in enumerate(_models(result_json, labels))
    )
    settings = result_json.get("settings") or {}
    items = [(escape(str(k)), escape(_setting(v))) for k, v in settings.items()]
    return page.setup(
        "models, settings and versions",
        "<div class='scroll'><table class='mini models'><thead><tr><th>series</th><th>label</th>"
        "<th>id</th><th>source</th><th>revision</th><th>files</th><th>adapter scale</th></tr>"
        f"</thead><tbody>{rows}</tbody></table></div>",
        page.dl(items, "pairs"),
    )


def _setting(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_setting(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "on" if value else "off"
    return fmt(value) if value is not None else "—"


# (2) what changed most --------------------------------------------------------------------------


def _summary(
    per_other: Mapping[str, Any],
    records: list[Record],
    labels: list[str],
    anchors: dict[tuple[str, str], str],
) -> str:
    """Per other model: alignment, new flags, new traps and its most changed layers (from the
    comparison summary's `others`)."""
    by_name = {str(r.get("name")): r for r in records}
    cards = []
    for k, label in enumerate(labels, start=1):
        s = per_other.get(label) or {}
        counts = s.get("alignment") or {}
        aligned = " · ".join(f"{fmt(n)} {escape(str(a))}" for a, n in counts.items())
        not_aligned = list((s.get("not_aligned") or {}).items())
        missing = "".join(
            f"<li><code>{page.tensor_name(str(n))}</code>: {escape(str(st))}</li>"
            for n, st in not_aligned[:MAX_NOT_ALIGNED]
        )
        more = len(not_aligned) - MAX_NOT_ALIGNED
        missing += f"<li class='muted'>and {more} more (see the table)</li>" if more > 0 else ""
        new = s.get("new_flags") or {}
        new_text = " ".join(f"{page.flag_badges([f])} × {fmt(n)}" for f, n in new.items()) or "none"
        traps, on_dimensions = (
            ", ".join(f"<code>{page.tensor_name(str(n))}</code>" for n in s.get(key) or [])
            for key in ("layers_with_new_traps", "layers_with_new_outlier_dimension_traps")
        )
        top = [by_name[n] for n in s.get("most_changed") or [] if n in by_name][:TOP_CHANGED]
        cards.append(
            f'<div class="card other-card"><h3>{series_key(k)}{escape(label)}</h3>'
            + page.dl(
                [
                    ("alignment", aligned or "—"),
                    ("new flags", new_text),
                    ("new correlation traps in", traps or "none"),
                    ("new traps on outlier dimensions in", on_dimensions or "none"),
                ]
            )
            + (f"<p>Not aligned (not compared):</p><ul>{missing}</ul>" if missing else "")
            + _top_changed(top, label, anchors)
            + "</div>"
        )
    return page.section(
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
        shown = f"<code>{page.tensor_name(name)}</code>"
        if anchor:
            shown = f'<a href="#{anchor}">{shown}</a>'
        rows.append(
            f"<tr><td class='c-name'>{shown}</td>"
            f"<td>{_fmt((r.get('delta_alpha') or {}).get(label), 'alpha')}</td>"
            f"<td>{fmt(delta.get('relative_norm'))}</td><td>{fmt(delta.get('effective_rank'))}</td>"
            f"<td>{page.flag_badges((r.get('new_flags') or {}).get(label) or [])}</td>"
            f"<td>{fmt((r.get('change_score') or {}).get(label))}</td></tr>"
        )
    return (
        "<div class='scroll'>"
        "<table class='mini top-changed'><thead><tr><th>layer</th><th>Δalpha</th>"
        "<th>ΔW rel. norm</th><th>ΔW eff. rank</th><th>new flags</th><th>change score</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


# (3) alpha by depth, every model on one chart per role ------------------------------------------


def _depth(
    result_json: Mapping[str, Any],
    records: list[Record],
    labels: list[str],
    anchors: dict[tuple[str, str], str],
) -> str:
    t = thresholds(result_json)
    series = ["base", *labels]
    points: dict[str, list[list[plots.DepthPoint]]] = {}
    loose = []
    for r in records:
        block, name = block_of(r), str(r.get("name"))
        models = r.get("models") or {}
        alphas = [num((models.get(s) or {}).get("alpha")) for s in series]
        if all(a is None for a in alphas):
            continue
        if block is None:
            loose.append((name, alphas))
            continue
        panel = points.setdefault(panel_of(r), [[] for _ in series])
        for k, (s, a) in enumerate(zip(series, alphas, strict=True)):
            if a is not None:
                link = anchors.get((name, s)) if k else None
                gained = [str(f) for f in (r.get("new_flags") or {}).get(s) or []] if k else []
                title = f"{name} · {s}: alpha {fmt(a, 'alpha')}" + (
                    f" (gained {', '.join(gained)})" if gained else ""
                )
                trap = any(f in TRAP_FLAGS for f in gained)
                marks = ("flagged trap" if trap else "flagged") if gained else ""
                href = f"#{link}" if link else ""
                panel[k].append(plots.DepthPoint(block, a, title, href=href, marks=marks))
    legend = " ".join(
        f'<span class="li">{series_key(k)}{escape(s)}</span>' for k, s in enumerate(series)
    )
    outside = "".join(
        f"<li><code>{page.tensor_name(n)}</code>: "
        + ", ".join(f"{escape(s)} {fmt(a, 'alpha')}" for s, a in zip(series, alphas, strict=True))
        + "</li>"
        for n, alphas in loose
    )
    return page.section(
        "depth",
        "Alpha by depth",
        f"<p class='muted'>One panel per role, one series per model (a line through each model's "
        f"per-block median). Shaded: alpha below {t.alpha_low:g} or above {t.alpha_high:g}. "
        "Ringed in red: a compared model's layer that gained a flag (purple: a trap). Hollow "
        "markers at the top: alpha above the axis. Click a marker of a compared model to "
        "see its spectra, where they are shown.</p>",
        f'<p class="legend">{legend}</p>',
        plots.depth_panels(points, (t.alpha_low, t.alpha_high)),
        f"<p>Layers outside the blocks:</p><ul>{outside}</ul>" if outside else "",
    )


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
    """One cell: the text shown and its sort key."""
    if isinstance(value, list):
        content, sort = page.flag_badges(value), " ".join(value)
    elif kind == "num":
        content, sort = _fmt(value, "alpha" if "alpha" in key else key), sort_key(value)
    else:
        content, sort = escape(str(value)), str(value)
    if key == "name":
        content = (
            f'<a href="#{anchor}">{page.tensor_name(value)}</a>'
            if anchor
            else page.tensor_name(value)
        )
    return page.sort_cell(key, content, sort)


def _delta_table(
    records: list[Record], labels: list[str], anchors: dict[tuple[str, str], str]
) -> str:
    head = "".join(page.sort_header(key, text, kind, tip) for key, text, kind, tip in DELTA_COLUMNS)
    rows = []
    for r in records:
        for label in labels:
            v = _delta_values(r, label)
            anchor = anchors.get((v["name"], label))
            cls = " ".join(
                c
                for c, on in (("flagged", v["new_flags"]), ("skipped", v["alignment"] != ALIGNED))
                if on
            )
            cells = "".join(_td(k, kind, v[k], anchor) for k, _, kind, _ in DELTA_COLUMNS)
            attrs = f' class="{cls}"' if cls else ""
            rows.append(f'<tr{attrs} data-other="{escape(label)}">{cells}</tr>')
    controls = page.filter_controls(
        "delta-table",
        [
            page.select_filter(
                "delta-table", "d-other", "model", "other", [("", "all"), *((s, s) for s in labels)]
            ),
            page.text_filter("delta-table", "d-text"),
        ],
        "rows",
    )
    return page.section(
        "changes",
        "Layer changes",
        "<p class='muted'>One row per layer and compared model. Click a header to sort (numbers "
        "as numbers, empty cells last); ΔW = W<sub>other</sub> − W<sub>base</sub>.</p>",
        controls,
        '<div class="table-wrap"><table id="delta-table" class="layers delta sortable">'
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
    """Counts of log10 λ of several spectra on one grid of `histogram.BINS` bins over their common
    range; per spectrum, eigenvalues below its own λ_max·1e-8 are counted in `below`, not binned.

    None when no spectrum has an eigenvalue above zero.
    """
    clean = [finite(s) for s in spectra]
    shown = [drawn(e, float(e.max())) if np.any(e > 0) else e[:0] for e in clean]
    if not any(s.size for s in shown):
        return None
    edges = log_edges(shown)
    return {
        "lo": float(edges[0]),
        "hi": float(edges[-1]),
        "counts": [log_counts(s, edges) for s in shown],
        "n": [int(e.size) for e in clean],
        "below": [int(e.size - s.size) for e, s in zip(clean, shown, strict=True)],
    }


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
        groups.append(
            f"<h3>{series_key(k)}{escape(label)}</h3>{cards or '<p>No layer changed.</p>'}"
        )
    return page.section(
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
    classes = ("esd-bar", f"series-line {series_class(k)}", "series-line ov-dw")
    if view is None:
        plot = '<p class="note">No spectrum stored for this layer.</p>'
    else:
        keys_html = (
            '<span class="key k-bar"></span>base',
            f'<span class="key k-series {series_class(k)}"></span>{escape(label)}',
            '<span class="key k-series k-dw"></span>ΔW',
        )
        zero = [f"{names[i]}: {n} eigenvalue(s) ≈ 0" for i, n in enumerate(view["below"]) if n]
        legend = " ".join(f'<span class="li">{h}</span>' for h in keys_html) + (
            f" Not drawn: {escape('; '.join(zero))}." if zero else ""
        )
        plot = (
            f"<figure>{plots.overlay_svg(view, classes, f'ESD of {name}: base, {label}, ΔW')}"
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
        f"<span class='muted'>{escape(label)}</span> {page.flag_badges(v['new_flags'])}</h3>"
        f'<p class="muted">role {escape(v["role"])} · block {fmt(v["block"])} · '
        f"{escape(v['alignment'])}</p>"
        f'<div class="card-body">{page.dl(metrics)}{plot}</div></article>'
    )


# (6) how to read this ---------------------------------------------------------------------------


def _how_to_read(result_json: Mapping[str, Any]) -> str:
    t = thresholds(result_json)
    items = [
        "<b>Δalpha</b> = alpha(other) − alpha(base). Negative: the tail of the spectrum got "
        "heavier, the layer holds more strongly correlated structure; well below "
        f"{t.alpha_low:g} it may be over-fit. Positive: the spectrum moved towards that of a "
        f"random matrix; above {t.alpha_high:g} the layer carries little learned structure. "
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
        "change signal. A trap whose entries all lie on the model's outlier dimensions (hidden "
        "indices that carry huge weights in layer after layer, normal in trained transformers) is "
        "flagged <span class='flag f-outlier_dimension'>outlier_dimension</span> instead, and "
        "listed apart.",
        "<b>Change score</b> = 100 × (new correlation trap) + 10 × (number of new flags) + "
        "|Δalpha| + relative norm of ΔW: a ranking, not a measure.",
        "<b>Alignment</b>: layers are paired by tensor name and shape only. <i>missing</i> (only "
        "in the base), <i>extra</i> (only in the other) and <i>shape_changed</i> layers are "
        "listed but not compared.",
    ]
    return page.section(
        "howto",
        "How to read this",
        "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>",
        "<p class='muted'>Written by llm-audit. This page makes no network request; the raw "
        "eigenvalues stay in the comparison result.</p>",
    )
