"""calibration.html: one self-contained page, drawn with the report's kit (`report.page`,
`report.svg`), so it looks like the audit page and opens offline.

Four charts share a log-step x axis with the phases shaded: accuracy (train, test), alpha per
layer (with the alpha_low line), traps per layer, and trap strength per layer (the shuffled top
eigenvalue over its threshold, with the line at 1); then a sortable table with the verdict per
checkpoint and, for a run audited at several shuffle seeds, the share of seeds that agree.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from llm_audit.config import Thresholds
from llm_audit.report.page import document, section, setup, sort_cell, sort_header
from llm_audit.report.plots import series_class
from llm_audit.report.svg import Axes, Box, linear_ticks, log_ticks, tick_label

CHART_BOX = Box(760, 230, left=44, right=12, top=10, bottom=36)
PHASES = ("pre-grokking", "grokked", "collapse")  # shaded in this order in the legend


def render_page(data: dict[str, Any]) -> str:
    """The page for a `calibration.json` mapping."""
    rows = data["checkpoints"]
    task = str(data["task"])
    layers = [k[len("alpha[") : -1] for k in rows[0] if k.startswith("alpha[")] if rows else []
    phases = " ".join(f'<span class="phase ph-{p}">{p}</span>' for p in PHASES)
    body = [
        f'<header id="top"><h1>Calibration run: {escape(task)}</h1>'
        f"<p>{escape(_summary(data))}; {_times(data)}. Phases from the accuracy curves: "
        f"{phases}</p></header>",
        _chart("accuracy", "Accuracy", rows, {"train": "train_acc", "test": "test_acc"}, (0, 1)),
        _chart(
            "alpha",
            "Alpha per layer",
            rows,
            {n: f"alpha[{n}]" for n in layers},
            None,
            hline=Thresholds().alpha_low,
        ),
        _chart(
            "traps", "Correlation traps per layer", rows, {n: f"num_traps[{n}]" for n in layers}
        ),
        _table(rows, layers),
    ]
    if any(f"trap_strength[{n}]" in r for r in rows for n in layers):  # runs audited since
        strength = {n: f"trap_strength[{n}]" for n in layers}
        title = "Trap strength per layer (shuffled top eigenvalue / threshold; a trap above 1)"
        body.insert(-1, _chart("strength", title, rows, strength, None, hline=1.0))
    config = escape("\n".join(f"{k}: {v}" for k, v in data["config"].items()))
    body.insert(1, setup("the run's config", f"<pre>{config}</pre>"))
    return document(f"Calibration: {task}", body)


def _times(data: dict[str, Any]) -> str:
    """How long training (and a re-audit, if any) took."""
    trained, again = data.get("seconds"), data.get("reaudit_seconds")
    text = "training time not recorded" if trained is None else f"trained in {trained:,.0f} s"
    return text + ("" if again is None else f", audited again in {again:,.0f} s")


def _summary(data: dict[str, Any]) -> str:
    rows, ph = data["checkpoints"], data["phases"]
    text = (
        f"memorized at step {ph['memorized_step']}, grokking onset {ph['grokked_step']}, "
        f"test-accuracy peak {ph['peak_test_acc']:.3f} at {ph['peak_step']}, "
        f"collapse onset {'not reached' if ph['collapse_step'] is None else ph['collapse_step']}"
    )
    disagree = data.get("disagreements", [])
    text += (
        f"; verdict agrees with the phase at {len(rows) - len(disagree)} of {len(rows)} checkpoints"
        + (f" (not at steps {', '.join(map(str, disagree))})" if disagree else "")
    )
    for where, agreement in (
        ("checkpoint", data.get("seed_agreement")),
        ("monitor-grid", (data.get("monitor") or {}).get("seed_agreement")),
    ):
        everything = (agreement or {}).get("all") or {}
        if everything.get("audits"):
            text += (
                f"; over shuffle seeds, {everything['agree']} of {everything['audits']} "
                f"{where} audits agree ({everything['share']:.1%})"
            )
    mon = data.get("monitor")
    if mon:
        text += (
            f"; AuditMonitor every {mon['every']} steps would stop at "
            f"{mon['would_stop_at'] if mon['would_stop_at'] is not None else 'no step'}"
            f" (collapse onset on its grid: {mon['dense_collapse_step']}), keeping step "
            f"{mon['kept_step']}"
        )
    return text


def _chart(
    anchor: str,
    title: str,
    rows: list[dict[str, Any]],
    series: dict[str, str],
    yrange: tuple[float, float] | None = None,
    hline: float | None = None,
) -> str:
    """One line per series (column of `rows`) against log10 step, over the phases' shading."""
    values = [float(r[k]) for r in rows for k in series.values() if _finite(r.get(k))]
    lo, hi = yrange or (min([*values, 0.0]), max([*values, 1.0, hline or 0.0]) * 1.05)
    xs = [math.log10(max(r["step"], 1)) for r in rows]
    x0, x1 = min(xs, default=0.0), max(xs, default=1.0)
    ax = Axes(CHART_BOX, (x0, max(x1, x0 + 1e-9)), (lo, hi))
    parts = [_shades(ax, rows, xs), ax.frame()]
    parts.append(ax.x_ticks((u, tick_label(u)) for u in log_ticks(x0, x1)))
    parts.append(ax.y_ticks((v, f"{v:g}") for v in linear_ticks(lo, hi, most=6)))
    if hline is not None:
        parts.append(ax.hline(hline, "threshold"))
    for i, key in enumerate(series.values()):
        points = [(x, float(r[key])) for x, r in zip(xs, rows, strict=True) if _finite(r.get(key))]
        parts.append(ax.line(points, f"series-line {series_class(i)}"))
    parts.append(ax.titles("training step (log scale)"))
    legend = " ".join(
        f'<span class="li"><span class="key k-series {series_class(i)}"></span>{escape(name)}'
        "</span>"
        for i, name in enumerate(series)
    )
    return section(anchor, title, f'<p class="legend">{legend}</p>', ax.svg("chart", title, parts))


def _shades(ax: Axes, rows: list[dict[str, Any]], xs: list[float]) -> str:
    """One band per checkpoint, coloured by phase (edges halfway between checkpoints)."""
    out = []
    for i, row in enumerate(rows):
        left = xs[i] if i == 0 else (xs[i - 1] + xs[i]) / 2
        right = xs[i] if i == len(rows) - 1 else (xs[i] + xs[i + 1]) / 2
        out.append(ax.vband(left, right, f"ph-{escape(str(row.get('phase', '')))}"))
    return "".join(out)


def _table(rows: list[dict[str, Any]], layers: list[str]) -> str:
    head = ["step", "phase", "train acc", "test acc"] + [f"alpha {n}" for n in layers]
    head += [f"traps {n}" for n in layers] + [f"strength {n}" for n in layers]
    head += ["verdict", "agrees with phase", "seeds agreeing"]
    kinds = ["num", "text", "num", "num"] + ["num"] * 3 * len(layers) + ["text", "text", "num"]
    body = []
    for r in rows:
        cells = [str(r["step"]), r["phase"], f"{r['train_acc']:.3f}", f"{r['test_acc']:.3f}"]
        cells += [f"{r[f'alpha[{n}]']:.2f}" if _finite(r[f"alpha[{n}]"]) else "–" for n in layers]
        cells += [str(r[f"num_traps[{n}]"]) for n in layers]
        cells += [_fixed(r.get(f"trap_strength[{n}]")) for n in layers] + [r["verdict"]]
        cells.append("yes" if r.get("agrees", True) else "no")
        seeds = r.get("seed_verdicts") or {}
        agreeing = round(r.get("seed_agreement", 1.0) * sum(seeds.values()))
        cells.append(f"{agreeing}/{sum(seeds.values())}" if seeds else "–")
        share = str(r.get("seed_agreement", "")) if seeds else ""
        keys = [*cells[:-1], share]  # "23/24" sorts by its share
        tds = "".join(
            sort_cell(f"k{j}", escape(c), "" if c == "–" else key, f"{kind} ")
            for j, (c, key, kind) in enumerate(zip(cells, keys, kinds, strict=True))
        )
        reason = escape(str(r.get("verdict_reason", "")))
        body.append(f'<tr title="{reason}">{tds}</tr>')
    ths = "".join(
        sort_header(f"k{j}", h, kind) for j, (h, kind) in enumerate(zip(head, kinds, strict=True))
    )
    return section(
        "checkpoints",
        "Checkpoints",
        "<p class='muted'>Click a header to sort; hover a row for the verdict's reason.</p>",
        '<div class="table-wrap"><table id="checkpoints" class="layers sortable">'
        f"<thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table></div>",
    )


def _fixed(v: Any) -> str:
    return f"{v:.2f}" if _finite(v) else "–"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
