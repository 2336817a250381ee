"""calibration.html: one self-contained page (inline CSS and SVG, no scripts, opens offline).

Three charts share a log-step x axis with the phases shaded: accuracy (train, test), alpha per
layer (with the alpha = 2 line), traps per layer; then a table with the verdict per checkpoint.
"""

from __future__ import annotations

import html
import math
from importlib import resources
from typing import Any

W, H, PAD = 760, 220, 44
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SHADES = {"pre-grokking": "#f2f2f2", "grokked": "#e3f4e3", "collapse": "#fbe3e3"}


def render_page(data: dict[str, Any]) -> str:
    """The page for a `calibration.json` mapping."""
    rows = data["checkpoints"]
    steps = [r["step"] for r in rows]
    layers = [k[len("alpha[") : -1] for k in rows[0] if k.startswith("alpha[")] if rows else []
    ph = data["phases"]
    charts = [
        _chart("Accuracy", steps, rows, {"train": "train_acc", "test": "test_acc"}, (0.0, 1.0)),
        _chart("Alpha per layer", steps, rows, {n: f"alpha[{n}]" for n in layers}, None, hline=2.0),
        _chart(
            "Correlation traps per layer", steps, rows, {n: f"num_traps[{n}]" for n in layers}, None
        ),
    ]
    summary = (
        f"memorized at step {ph['memorized_step']}, grokking onset {ph['grokked_step']}, "
        f"test-accuracy peak {ph['peak_test_acc']:.3f} at {ph['peak_step']}, "
        f"collapse onset {'not reached' if ph['collapse_step'] is None else ph['collapse_step']}"
    )
    disagree = data.get("disagreements", [])
    summary += (
        f"; verdict agrees with the phase at {len(rows) - len(disagree)} of {len(rows)} checkpoints"
        + (f" (not at steps {', '.join(map(str, disagree))})" if disagree else "")
    )
    mon = data.get("monitor")
    if mon:
        summary += (
            f"; AuditMonitor every {mon['every']} steps would stop at "
            f"{mon['would_stop_at'] if mon['would_stop_at'] is not None else 'no step'}"
            f" (collapse onset on its grid: {mon['dense_collapse_step']}), keeping step "
            f"{mon['kept_step']}"
        )
    css = (resources.files("llm_audit.report") / "assets" / "report.css").read_text()
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Calibration: {html.escape(data['task'])}</title><style>{css}</style></head><body>"
        f"<h1>Calibration run: {html.escape(data['task'])}</h1><p>{html.escape(summary)}; "
        f"{data['seconds']:.0f} s. Phases from the accuracy curves: "
        + " ".join(
            f"<span style='background:{c};padding:0 4px'>{p}</span>" for p, c in SHADES.items()
        )
        + "</p>"
        + "".join(charts)
        + _table(rows, layers)
        + "<h2>Config</h2><pre>"
        + html.escape("\n".join(f"{k}: {v}" for k, v in data["config"].items()))
        + "</pre></body></html>\n"
    )


def _chart(
    title: str,
    steps: list[int],
    rows: list[dict[str, Any]],
    series: dict[str, str],
    yrange: tuple[float, float] | None,
    hline: float | None = None,
) -> str:
    values = [float(r[k]) for r in rows for k in series.values() if _finite(r.get(k))]
    lo, hi = yrange or (min([*values, 0.0]), max([*values, 1.0, hline or 0.0]) * 1.05)
    xs = [math.log10(max(s, 1)) for s in steps]
    x0, x1 = min(xs, default=0.0), max(max(xs, default=1.0), min(xs, default=0.0) + 1e-9)

    def px(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (W - 2 * PAD)

    def py(y: float) -> float:
        return H - PAD + (y - lo) / ((hi - lo) or 1.0) * (2 * PAD - H)

    parts = [_shades(rows, xs, px)]
    if hline is not None:
        parts.append(
            f"<line x1='{PAD}' x2='{W - PAD}' y1='{py(hline):.1f}' y2='{py(hline):.1f}'"
            f" stroke='#999' stroke-dasharray='4'/>"
        )
    for i, (label, key) in enumerate(series.items()):
        pts = " ".join(
            f"{px(x):.1f},{py(float(r[key])):.1f}"
            for x, r in zip(xs, rows, strict=True)
            if _finite(r.get(key))
        )
        color = COLORS[i % len(COLORS)]
        parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.8' points='{pts}'/>")
        parts.append(
            f"<text x='{W - PAD + 4}' y='{PAD + 14 * i}' fill='{color}'"
            f" font-size='11'>{html.escape(label)}</text>"
        )
    for d in range(math.floor(x0), math.ceil(x1) + 1):
        if x0 <= d <= x1:
            parts.append(
                f"<text x='{px(d):.1f}' y='{H - PAD + 16}' font-size='11'"
                f" text-anchor='middle'>1e{d}</text>"
            )
    for y in (lo, (lo + hi) / 2, hi):
        parts.append(
            f"<text x='{PAD - 4}' y='{py(y) + 4:.1f}' font-size='11'"
            f" text-anchor='end'>{y:.2g}</text>"
        )
    parts.append(
        f"<rect x='{PAD}' y='{PAD}' width='{W - 2 * PAD}' height='{H - 2 * PAD}'"
        " fill='none' stroke='#444'/>"
    )
    return (
        f"<h2>{html.escape(title)}</h2><svg xmlns='http://www.w3.org/2000/svg' width='{W + 60}' "
        f"height='{H}' role='img' aria-label='{html.escape(title)}'>{''.join(parts)}</svg>"
        f"<p style='font-size:small'>x: training step (log scale)</p>"
    )


def _shades(rows: list[dict[str, Any]], xs: list[float], px: Any) -> str:
    """One rectangle per checkpoint, coloured by phase (edges halfway between checkpoints)."""
    out = []
    for i, row in enumerate(rows):
        left = px(xs[i] if i == 0 else (xs[i - 1] + xs[i]) / 2)
        right = px(xs[i] if i == len(rows) - 1 else (xs[i] + xs[i + 1]) / 2)
        color = SHADES.get(row.get("phase", ""), "#fff")
        out.append(
            f"<rect x='{left:.1f}' y='{PAD}' width='{max(right - left, 0):.1f}'"
            f" height='{H - 2 * PAD}' fill='{color}'/>"
        )
    return "".join(out)


def _table(rows: list[dict[str, Any]], layers: list[str]) -> str:
    head = ["step", "phase", "train acc", "test acc"] + [f"alpha {n}" for n in layers]
    head += [f"traps {n}" for n in layers] + ["verdict", "agrees with phase"]
    body = []
    for r in rows:
        cells = [str(r["step"]), r["phase"], f"{r['train_acc']:.3f}", f"{r['test_acc']:.3f}"]
        cells += [f"{r[f'alpha[{n}]']:.2f}" if _finite(r[f"alpha[{n}]"]) else "–" for n in layers]
        cells += [str(r[f"num_traps[{n}]"]) for n in layers] + [r["verdict"]]
        cells.append("yes" if r.get("agrees", True) else "no")
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        reason = html.escape(r.get("verdict_reason", ""), quote=True)
        body.append(f"<tr title='{reason}'>{tds}</tr>")
    return (
        "<h2>Checkpoints</h2><table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
