"""The audit page, assembled from escaped strings: provenance, verdict, alpha by depth, the layer
table, layer details with their ESDs, and what the flags mean.

Every string that comes from the audit (tensor names, model id, versions) passes through `escape`.
The page is drawn with the shared kit (`page`, `plots`); assets/report.js adds what only this page
does in the browser: the "all columns" switch and the card of a layer the reader picks.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from html import escape
from typing import Any

import numpy as np

from llm_audit.config import VerdictRule
from llm_audit.report import page, plots
from llm_audit.report.outlier_panel import has_trap_kinds, outlier_panel
from llm_audit.report.validate import checked_audit, checked_spectra
from llm_audit.report.view import (
    COLUMN_HELP,
    TEXT_COLUMNS,
    block_of,
    cell,
    columns,
    fmt,
    layer_view,
    num,
    panel_of,
    quantization_note,
    role_order,
    thresholds,
    verdict_rule,
)
from llm_audit.summary import WORST_RULE, count_lines
from llm_audit.vocabulary import (
    ALPHA_FIT_FAILED,
    ALPHA_GT_6,
    ALPHA_LT_2,
    ANALYZED,
    CORRELATION_TRAP,
    FINDINGS,
    HEALTHY,
    OUTLIER_DIMENSION,
    PATHOLOGICAL,
    TRAP_FLAGS,
    WATCH,
)

Spectra = Mapping[str, Mapping[str, np.ndarray]]

VERDICT_ADVICE = {
    HEALTHY: "No counted layer shows the over-fitting or anti-grokking signature (alpha below the "
    "threshold, scattered correlation traps, failed fits): as far as weight spectra can tell, "
    "nothing here argues against shipping. Findings, if any, are for information.",
    WATCH: "Some counted layers show part of that signature, below the pathological thresholds: "
    "look at the flagged layers before you ship, and audit again after further training.",
    PATHOLOGICAL: "The spectra show the over-fitting or anti-grokking signature: investigate the "
    "flagged layers, and prefer an earlier checkpoint, before shipping this model.",
}


def render_html(audit: Mapping[str, Any], spectra: Spectra | None = None) -> str:
    """The audit as one self-contained HTML page (inline CSS, JS and SVG; no network access).

    `audit` is `AuditResult.to_json()` or a loaded audit.json; `spectra` maps layer name to
    {"evals": ..., "rand_evals": ...} eigenvalue arrays, or None to leave out the ESD plots (the
    page says so). Raises `ConfigError` if `audit` is not an audit of a supported schema_version.
    """
    audit, spectra = checked_audit(audit), checked_spectra(spectra)  # the boundary
    records: list[Mapping[str, Any]] = [r for r in audit["layers"] if isinstance(r, Mapping)]
    views = [
        layer_view(i, r, spectra.get(str(r.get("name"))) if spectra is not None else None)
        for i, r in enumerate(records)
    ]
    model = audit.get("model") or {}
    title = f"llm-audit: {model.get('id', 'model')}"
    body = [
        _title(audit),
        _verdict(audit, records),
        _setup(audit),
        outlier_panel(audit.get("summary") or {}, records),
        _depth(audit, records),
        _table(records),
        _details(records, views, spectra is not None),
        _flags_explained(audit, spectra is not None),
    ]
    return page.document(title, body, scripts=("table.js", "report.js"), data={"layers": views})


# (1) provenance -----------------------------------------------------------------------------------


def _title(audit: Mapping[str, Any]) -> str:
    model = audit.get("model") or {}
    return (
        '<header id="top"><h1>Weight-spectrum audit of '
        f"<code>{escape(str(model.get('id', 'model')))}</code></h1>"
        '<nav><a href="#verdict">verdict</a><a href="#setup">setup</a>'
        + ('<a href="#outliers">outlier dimensions</a>' if has_trap_kinds(audit) else "")
        + '<a href="#depth">alpha by depth</a>'
        '<a href="#layers">layers</a><a href="#details">layer details</a>'
        '<a href="#flags">what the flags mean</a></nav></header>'
    )


def _setup(audit: Mapping[str, Any]) -> str:
    """Model, settings and versions, folded: the verdict comes first."""
    model = audit.get("model") or {}
    settings = audit.get("settings") or {}
    summary = audit.get("summary") or {}
    versions = settings.get("versions") or {}
    files = model.get("files") or []
    dtype = model.get("dtype")
    dtype = ", ".join(map(str, dtype)) if isinstance(dtype, list) else dtype
    params = num(model.get("num_parameters"))
    quant = model.get("quantization")
    items = [
        ("model", f"<code>{escape(str(model.get('id', '—')))}</code>"),
        ("source", escape(str(model.get("source") or "—"))),
        ("revision", escape(str(model.get("revision") or "—"))),
        ("family", escape(str(model.get("family") or "—"))),
        ("parameters", f"{params / 1e6:,.1f} M ({int(params):,})" if params is not None else "—"),
        ("dtype", escape(str(dtype or "—"))),
        *(
            [("quantization", escape(", ".join(f"{k} {v}" for k, v in quant.items())))]
            if isinstance(quant, Mapping)
            else []
        ),
        ("estimator", escape(str(settings.get("estimator", "—")))),
        ("device", escape(str(settings.get("device", "—")))),
        ("seed", escape(str(settings.get("seed", "—")))),
        ("traps", "on" if settings.get("traps", True) else "off"),
        ("eigensolver", escape(str(settings.get("eigensolver", "—")))),
        ("tool", f"llm-audit {escape(str(versions.get('llm-audit', '—')))}"),
        ("date", escape(_date(settings.get("started")))),
        ("time taken", f"{fmt(summary.get('seconds'))} s"),
    ]
    file_list = "".join(f"<li><code>{escape(str(f))}</code></li>" for f in files)
    lib_list = ", ".join(f"{escape(str(k))} {escape(str(v))}" for k, v in versions.items())
    return page.setup(
        "model, settings and versions",
        page.dl(items, "pairs"),
        f"<p>files ({len(files)}):</p>"
        f"<ul class='files'>{file_list or '<li>none (in-memory model)</li>'}</ul>"
        f"<p class='muted'>{lib_list}</p>",
    )


def _date(started: Any) -> str:
    if not isinstance(started, str):
        return "—"
    try:
        return dt.datetime.fromisoformat(started).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return started


# (2) verdict and summary cards ------------------------------------------------------------------


def _verdict(audit: Mapping[str, Any], records: list[Mapping[str, Any]]) -> str:
    s = audit.get("summary") or {}
    verdict = str(s.get("verdict", "unknown"))
    t, rule = thresholds(audit), verdict_rule(audit)
    counted, found = count_lines(s, t, rule)
    skipped = [r for r in records if r.get("status") not in ANALYZED]
    reasons = Counter(f"{r.get('status')}: {r.get('reason') or 'no reason given'}" for r in skipped)
    skipped_text = (
        "<ul>" + "".join(f"<li>{n} × {escape(k)}</li>" for k, n in reasons.items()) + "</ul>"
        if skipped
        else "<p class='muted'>none</p>"
    )
    excluded = ", ".join(map(str, s.get("excluded_from_summary") or [])) or "none"
    outside = s.get("num_flagged_outside") or 0
    items = [f for f in s.get("findings") or [] if isinstance(f, Mapping)]
    finding_text = (
        "<ul class='findings'>"
        + "".join(f"<li>{escape(str(f.get('text', f.get('name'))))}</li>" for f in items)
        + "</ul>"
        if items
        else "<p class='muted'>none</p>"
    )
    cards = [
        _card(
            "counted by the verdict",
            f"{fmt(s.get('num_flagged'))} <small>of {fmt(s.get('num_counted'))} layers "
            "flagged</small>",
            page.counts(counted[1:]),
        ),
        _card(
            "findings, not counted",
            f"{fmt(s.get('num_with_findings'))} <small>layers with findings</small>",
            page.counts(found),
        ),
        _card(
            "layers",
            f"{fmt(s.get('num_analyzed'))} <small>of {fmt(s.get('num_layers'))} analyzed</small>",
            f"<p>{fmt(s.get('num_counted'))} counted in the summary (excluded roles: "
            f"{escape(excluded)}"
            + (f"; {fmt(outside)} of those have flags, shown in the table" if outside else "")
            + f")</p><p>skipped:</p>{skipped_text}",
        ),
        _card(
            "alpha",
            f"{fmt(s.get('mean_alpha'), 'alpha')} <small>mean</small> · "
            f"{fmt(s.get('median_alpha'), 'alpha')} <small>median</small>",
            _by_role(s.get("alpha_by_role") or {}),
        ),
        _card(
            "worst layers",
            "",
            f"<p class='muted'>Counted layers with flags, ranked: "
            f"{escape(WORST_RULE.format(low=t.alpha_low, high=t.alpha_high))}.</p>"
            + _worst(s.get("worst_layers") or [], records),
        ),
    ]
    return (
        f'<section id="verdict"><h2>Verdict</h2><div class="verdict v-{escape(verdict)}">'
        f'<span class="verdict-name">{escape(verdict)}</span>'
        f"<p class='reason'>{escape(str(s.get('verdict_reason', '')))}</p>"
        f"<p>{VERDICT_ADVICE.get(verdict, '')}</p>"
        f"<p><b>Findings</b> (listed beside the verdict, not counted by it):</p>{finding_text}"
        f"{quantization_note(audit.get('model') or {})}</div>"
        f'<div class="cards">{"".join(cards)}</div></section>'
    )


def _card(title: str, big: str, body: str) -> str:
    head = f'<p class="big">{big}</p>' if big else ""
    cls = "card wide" if title == "worst layers" else "card"
    return f'<div class="{cls}"><h3>{title}</h3>{head}{body}</div>'


def _by_role(by_role: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(role)}</td><td>{fmt(by_role[role].get('count'))}</td>"
        f"<td>{fmt(by_role[role].get('mean'), 'alpha')}</td>"
        f"<td>{fmt(by_role[role].get('median'), 'alpha')}</td></tr>"
        for role in role_order(by_role)
        if isinstance(by_role[role], Mapping)
    )
    return (
        "<div class='scroll'>"
        "<table class='mini'><thead><tr><th>role</th><th>n</th><th>mean</th><th>median</th>"
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _worst(names: list[Any], records: list[Mapping[str, Any]]) -> str:
    index = {str(r.get("name")): i for i, r in enumerate(records)}
    items = []
    for name in names:
        i = index.get(str(name))
        if i is None:
            continue
        r = records[i]
        items.append(
            f'<li><a href="#L{i}" data-pick="{i}"><code>{page.tensor_name(str(name))}</code></a> '
            f"<span class='n'>alpha {fmt(r.get('alpha'), 'alpha')}</span>, "
            f"<span class='n'>traps {fmt(r.get('num_traps'))}</span> "
            f"{page.flag_badges(r.get('flags') or [])}</li>"
        )
    return f"<ol class='worst'>{''.join(items)}</ol>" if items else "<p>none</p>"


# (3) alpha by depth -----------------------------------------------------------------------------


def _depth(audit: Mapping[str, Any], records: list[Mapping[str, Any]]) -> str:
    t, rule = thresholds(audit), verdict_rule(audit)
    points: dict[str, list[plots.DepthPoint]] = {}
    loose = []
    for i, r in enumerate(records):
        alpha, block = num(r.get("alpha")), block_of(r)
        if alpha is None:
            continue
        if block is None:
            loose.append((i, r))
            continue
        flags = [str(f) for f in r.get("flags") or []]
        title = f"{r.get('name')}: alpha {fmt(alpha, 'alpha')}" + (
            f" ({', '.join(flags)})" if flags else ""
        )
        counted = [f for f in flags if rule.counts(f)]
        trap = any(f in TRAP_FLAGS for f in counted)
        marks = ("flagged trap" if trap else "flagged") if counted else ""
        points.setdefault(panel_of(r), []).append(
            plots.DepthPoint(block, alpha, title, href=f"#L{i}", pick=i, marks=marks)
        )
    panels = plots.depth_panels(
        {role: [ps] for role, ps in points.items()}, (t.alpha_low, t.alpha_high)
    )
    outside = "".join(
        f'<li><a href="#L{i}" data-pick="{i}"><code>{escape(str(r.get("name")))}</code></a> '
        f"({escape(str(r.get('role')))}): alpha {fmt(r.get('alpha'), 'alpha')}</li>"
        for i, r in loose
    )
    return page.section(
        "depth",
        "Alpha by depth",
        f"<p class='muted'>One panel per role; a dot per layer, the line through the per-block "
        f"median. Shaded: alpha below {t.alpha_low:g} or above {t.alpha_high:g}. Ringed in "
        "red: layers with a flag the verdict counts; purple ring: correlation traps. Hollow "
        "dots at the top: alpha above the axis. Click a dot to see its spectrum.</p>",
        panels,
        f"<p>Layers outside the blocks:</p><ul>{outside}</ul>" if outside else "",
    )


# (4) the layer table ----------------------------------------------------------------------------


def _table(records: list[Mapping[str, Any]]) -> str:
    main, extra = columns(records)
    roles = role_order({str(r.get("role")) for r in records})
    flags = sorted({str(f) for r in records for f in r.get("flags") or []})
    head = "".join(
        page.sort_header(
            key,
            key,
            "text" if key in TEXT_COLUMNS else "num",
            COLUMN_HELP.get(key, ""),
            "extra" if key in extra else "",
        )
        for key in main + extra
    )
    rows = "".join(_row(i, r, main, extra) for i, r in enumerate(records))
    flag_options = [("", "all layers"), ("*", "any flag"), ("-", "no flag")]
    flag_options += [(f, f) for f in flags] + [("!", "skipped")]
    controls = page.filter_controls(
        "layer-table",
        [
            page.select_filter(
                "layer-table", "f-role", "role", "role", [("", "all"), *((r, r) for r in roles)]
            ),
            page.select_filter("layer-table", "f-flag", "flag", "flags", flag_options, tokens=True),
            page.text_filter("layer-table", "f-text"),
            '<label><input id="f-all" type="checkbox"> all columns</label>',
        ],
        "layers",
    )
    return page.section(
        "layers",
        "Layers",
        "<p class='muted'>Click a header to sort, a row to see its spectrum. "
        "Metric names follow WeightWatcher where the quantity is the same.</p>",
        controls,
        f'<div class="table-wrap"><table id="layer-table" class="layers sortable">'
        f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>",
    )


def _row(i: int, r: Mapping[str, Any], main: list[str], extra: list[str]) -> str:
    flags = [str(f) for f in r.get("flags") or []]
    analyzed = r.get("status") in ANALYZED
    # What the flag filter matches: the flags, and "*" any flag, "-" none, "!" skipped.
    words = [*flags, "*"] if flags else ["-"] if analyzed else []
    words += [] if analyzed else ["!"]
    attrs = (
        f'data-i="{i}" data-role="{escape(str(r.get("role")))}" '
        f'data-flags="{escape(" ".join(words))}"'
    )
    cls = ' class="flagged"' if flags else (' class="skipped"' if not analyzed else "")
    cells = []
    for key in main + extra:
        text, sort = cell(r, key)
        if key == "name":
            content = f'<a href="#L{i}" data-pick="{i}">{page.tensor_name(text)}</a>'
        elif key == "flags":
            content = page.flag_badges(flags)
        else:
            content = escape(text)
        cells.append(page.sort_cell(key, content, sort, "extra " if key in extra else ""))
    return f"<tr{cls} {attrs}>{''.join(cells)}</tr>"


# (5) layer details -----------------------------------------------------------------------------


def _details(records: list[Mapping[str, Any]], views: list[dict[str, Any]], have: bool) -> str:
    note = (
        ""
        if have
        else '<p class="note warn" id="no-spectra">The eigenvalue spectra '
        "(<code>spectra.npz</code>) were not available, so this page has no ESD plots. Put the "
        "<code>spectra.npz</code> written by <code>llm-audit scan</code> next to "
        "<code>audit.json</code> and run <code>llm-audit render audit.json</code> again.</p>"
    )
    flagged = [v for v, r in zip(views, records, strict=True) if r.get("flags")]
    cards = "".join(detail_card(v, with_plot=have) for v in flagged)
    return page.section(
        "details",
        "Layer details",
        note,
        '<div id="picked" class="picked" hidden></div>',
        "<p class='muted'>Each flagged layer below; pick any other layer in the table or the depth "
        "chart to see it here. The ESD is the density of the eigenvalues λ of WᵀW on log-log "
        "axes; the shuffled ESD is that of the same matrix with its entries randomly permuted.</p>",
        cards or "<p>No layer is flagged.</p>",
    )


def detail_card(v: Mapping[str, Any], *, with_plot: bool = True) -> str:
    """One layer's card: metrics, ESD plot (if its spectrum is known) and trap entries."""
    flags = page.flag_badges(v["flags"])
    meta = (
        f"role {escape(v['role'])} · block {escape(v['block'])} · shape {escape(v['shape'])} · "
        f"Q {escape(v['Q'])} · status {escape(v['status'])}"
        + (f" ({escape(v['reason'])})" if v["reason"] else "")
    )
    metrics = page.dl([(escape(k), escape(val)) for k, val in v["m"]])
    esd = v.get("esd")
    if esd:
        plot = (
            f"<figure>{plots.esd_svg(esd, 'ESD of ' + v['name'])}"
            f"<figcaption>{_legend(esd)}</figcaption></figure>"
        )
    elif with_plot:
        plot = '<p class="note">No spectrum stored for this layer.</p>'
    else:
        plot = ""
    return (
        f'<article class="layer-card" id="L{v["i"]}">'
        f"<h3><code>{escape(v['name'])}</code> {flags}</h3>"
        f'<p class="muted">{meta}</p><div class="card-body">{metrics}{plot}{_trap_table(v)}</div>'
        "</article>"
    )


def _legend(esd: Mapping[str, Any]) -> str:
    """The key under an ESD plot; the shuffled items only when the scan shuffled (traps on)."""
    items = ['<span class="key k-bar"></span>ESD']
    if esd.get("alpha") is not None:
        items.append(
            '<span class="key k-fit"></span>power-law fit (slope −alpha = '
            f"−{fmt(esd['alpha'], 'alpha')})"
        )
        items.append('<span class="key k-xmin"></span>xmin')
    if esd.get("nr"):
        items += [
            '<span class="key k-rand"></span>shuffled ESD',
            '<span class="key k-bulk"></span>MP edge',
            '<span class="key k-mre"></span>max_rand_eval',
            '<span class="key k-trap">▼</span>shuffled spikes',
        ]
    below = esd.get("below") or 0
    tail = f" {below} eigenvalue(s) ≈ 0 not drawn." if below else ""
    return " ".join(f'<span class="li">{i}</span>' for i in items) + tail


def _trap_table(v: Mapping[str, Any]) -> str:
    if not v["te"]:
        return ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in v["te"]
    )
    more = (
        f"<p class='muted'>first {len(v['te'])} of {v['te_total']} entries</p>"
        if v["te_total"] > len(v["te"])
        else ""
    )
    return (
        "<div class='traps'><p title='the matrix elements behind the traps'><b>trap entries</b>, "
        "largest |z| first</p><div class='scroll'>"
        "<table class='mini'><thead><tr><th>row</th><th>col</th>"
        f"<th>value</th><th>z</th></tr></thead><tbody>{rows}</tbody></table></div>{more}</div>"
    )


# (6) what the flags mean ------------------------------------------------------------------------


def _counted_text(rule: VerdictRule, flag: str) -> str:
    key = FINDINGS[flag]
    if rule.counts(flag):
        return f"counted against the verdict here (setting {key})."
    return f"not counted against the verdict (setting {key})."


def _flags_explained(audit: Mapping[str, Any], have_spectra: bool) -> str:
    t, rule = thresholds(audit), verdict_rule(audit)
    low, high, traps = f"{t.alpha_low:g}", f"{t.alpha_high:g}", f"{t.min_traps:g}"
    flags = [
        (ALPHA_LT_2, f"alpha &lt; {low}",
         "The tail of the eigenvalue density is heavier than in well-trained layers: the layer may "
         "be over-fit or over-trained. Together with correlation traps this is the anti-grokking "
         "signature (a model that generalized and is now over-training)."),
        (ALPHA_GT_6, f"alpha &gt; {high}",
         "The spectrum is close to that of a random matrix: the layer learned little structure. "
         "It may be under-trained, or matter little to the model; released models have a few. "
         "A finding: " + _counted_text(rule, ALPHA_GT_6)),
        (CORRELATION_TRAP, f"num_traps ≥ {traps}, scattered",
         "After shuffling the matrix's entries (which destroys learned correlations) "
         "eigenvalues still stand above the Marchenko–Pastur bulk edge. Such a spike comes from "
         "a few unusually large entries, listed with their row, column, value and z-score, here "
         "scattered rather than on the model's outlier dimensions: the extreme-weight signature "
         "of anti-grokking and other training problems (a learning rate that is too large, a bad "
         "update); check whether the listed entries are expected (e.g. a special token's "
         "embedding)."),
        (OUTLIER_DIMENSION, f"num_traps ≥ {traps}, on outlier dimensions",
         "The traps' entries all lie on the model's outlier dimensions: hidden indices of the "
         "residual stream (rows of the matrices that write to it, columns of those that read it) "
         "on which the trap layers' largest entries pile up more than random positions would "
         f"(chance at most {t.outlier_dimension_chance:g}; see 'Outlier dimensions'). Trained "
         "transformers have a few such dimensions; they are healthy, and the reason int8 "
         "quantization keeps some dimensions in higher precision (LLM.int8()): a hint for "
         "quantizing, not a training problem. A finding: "
         + _counted_text(rule, OUTLIER_DIMENSION)),
        (ALPHA_FIT_FAILED, "no fit",
         "The power-law fit could not be made (too few eigenvalues in the tail, a degenerate "
         "spectrum); alpha is left empty and the status reason says why."),
    ]  # fmt: skip
    rows = "".join(
        f"<tr><td>{page.flag_badges([f])}</td><td>{when}</td><td>{what}</td></tr>"
        for f, when, what in flags
    )
    verdicts = (
        "<p><b>Verdict.</b> It answers one question: do the spectra show the over-fitting or "
        f"anti-grokking signature? <i>pathological</i> when at least "
        f"{rule.pathological_trap_layers:g} layer(s) have traps and at least "
        f"{rule.pathological_alpha_lt_2_fraction * 100:g}% of the counted layers have "
        f"alpha &lt; {low}, or when at least {rule.pathological_trap_fraction * 100:g}% "
        "of them have traps; <i>watch</i> when a counted layer is flagged below those "
        "thresholds; <i>healthy</i> otherwise. Findings (" + ", ".join(FINDINGS) + ") are "
        "flagged and counted in the summary, and listed beside the verdict; each counts against "
        "it only when its setting is on (" + ", ".join(FINDINGS.values()) + ").</p>"
    )
    caveats = [
        "The thresholds are heuristics from HTSR theory and experiments, not laws; a flag is a "
        "reason to look, not a proof.",
        "alpha depends on the aspect ratio Q = N/M of the matrix: compare layers of the same role "
        "and shape rather than across very different shapes.",
        "Embeddings and the LM head are excluded from the summary means and counts by default "
        "(setting <code>include_embeddings_in_summary</code>); they are still in the table.",
        "<code>num_traps</code> is not WeightWatcher's <code>rand_num_spikes</code>: a matrix "
        "whose entries have a non-zero mean keeps one large eigenvalue after shuffling (the mean "
        "spike). That spike is not a trap, so <code>num_traps</code> leaves it out; "
        "<code>rand_num_spikes</code> counts it.",
        "Eigenvalues are those of WᵀW for the stored weights, in WeightWatcher's units, so values "
        "compare with WeightWatcher's.",
    ]
    return page.section(
        "flags",
        "What the flags mean",
        f"<div class='scroll'>"
        "<table class='mini flags-table'><thead><tr><th>flag</th><th>when</th><th>meaning</th>"
        f"</tr></thead><tbody>{rows}</tbody></table></div>",
        verdicts,
        "<p><b>Caveats.</b></p><ul>" + "".join(f"<li>{c}</li>" for c in caveats) + "</ul>",
        "<p class='muted'>Written by llm-audit. This page makes no network request"
        + ("; the raw eigenvalues are in spectra.npz next to audit.json." if have_spectra else ".")
        + "</p>",
    )
