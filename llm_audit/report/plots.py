"""Inline SVG charts built as strings: alpha by depth, and one layer's ESD on log-log axes.

Colours come from CSS classes (see report.css), so the charts follow the light or dark scheme.
`esd_svg` has a twin, `esdSvg` in report.js, that draws the layer a reader picks from the same
binned data; keep the two in step (same geometry, same classes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from llm_audit.report.view import fmt, num

# ESD plot geometry (the same numbers are in report.js).
W, H = 560, 300
ML, MR, MT, MB = 58, 14, 16, 40


def tick_label(u: float) -> str:
    """Label of a tick at log10 value `u`: plain decimals near 1, `2e-5` style far from it."""
    k = math.floor(u + 1e-9)
    m = round(10 ** (u - k))
    if -2 <= k <= 3:
        return f"{m * 10.0**k:.{max(0, -k)}f}"
    return f"{m}e{k}"


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Decades inside [lo, hi]; 1-2-5 steps when fewer than two decades fit."""
    decades = [float(k) for k in range(math.ceil(lo), math.floor(hi) + 1)]
    if len(decades) >= 2:
        return decades
    steps = [k + math.log10(m) for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    return [u for u in steps if lo <= u <= hi]


def _densities(counts: Sequence[int], n: int, lo: float, hi: float) -> list[float | None]:
    """log10 of p(λ) per bin (count / n / bin width in λ); None for empty bins."""
    step = (hi - lo) / len(counts) if counts else 1.0
    out: list[float | None] = []
    for i, c in enumerate(counts):
        width = 10 ** (lo + (i + 1) * step) - 10 ** (lo + i * step)
        out.append(math.log10(c / n / width) if c > 0 and n > 0 else None)
    return out


def esd_svg(esd: Mapping[str, Any], label: str = "") -> str:
    """The ESD of one layer: bars of the eigenvalue density, the shuffled ESD as an outline, the
    power-law fit from xmin, and vertical marks at xmin, the MP bulk edge and the largest shuffled
    eigenvalue; shuffled eigenvalues above the edge are marked by triangles on top."""
    lo, hi = float(esd["lo"]), float(esd["hi"])
    de = _densities(esd["e"], esd["ne"], lo, hi)
    dr = _densities(esd["r"], esd["nr"], lo, hi)
    values = [d for d in de + dr if d is not None]
    if not values:
        return '<p class="note">No eigenvalue above zero to plot.</p>'
    ylo, yhi = min(values) - 0.25, max(values) + 0.25
    if math.floor(yhi) < ylo:
        ylo = math.floor(ylo)
    pw, ph = W - ML - MR, H - MT - MB

    def x(u: float) -> float:
        return ML + (u - lo) / (hi - lo) * pw

    def y(v: float) -> float:
        return MT + (yhi - v) / (yhi - ylo) * ph

    step = (hi - lo) / len(esd["e"])
    base = MT + ph
    parts = [
        f'<svg class="esd" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}">',
        f'<rect class="frame" x="{ML}" y="{MT}" width="{pw}" height="{ph}"/>',
    ]
    for u in _log_ticks(lo, hi):
        parts.append(f'<line class="grid" x1="{x(u):.1f}" x2="{x(u):.1f}" y1="{MT}" y2="{base}"/>')
        parts.append(
            f'<text class="tick" x="{x(u):.1f}" y="{base + 14}" text-anchor="middle">'
            f"{tick_label(u)}</text>"
        )
    for v in _log_ticks(ylo, yhi):
        parts.append(
            f'<line class="grid" x1="{ML}" x2="{ML + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
        )
        parts.append(
            f'<text class="tick" x="{ML - 4}" y="{y(v) + 3:.1f}" text-anchor="end">'
            f"{tick_label(v)}</text>"
        )
    bars = "".join(
        f"M{x(lo + i * step):.1f},{base}V{y(d):.1f}H{x(lo + (i + 1) * step):.1f}V{base}Z"
        for i, d in enumerate(de)
        if d is not None
    )
    parts.append(f'<path class="esd-bar" d="{bars}"/>')
    if any(d is not None for d in dr):
        parts.append(f'<path class="esd-rand" d="{_outline(dr, lo, step, x, y, base)}"/>')
    parts.append(_fit_line(esd, ylo, yhi, lo, hi, x, y))
    for key, cls, what in (
        ("xmin", "mark-xmin", "xmin"),
        ("bulk", "mark-bulk", "MP bulk edge (rand_bulk_max)"),
        ("mre", "mark-rand", "max_rand_eval"),
    ):
        at = num(esd.get(key))
        if at is not None and at > 0 and lo <= math.log10(at) <= hi:
            xv = x(math.log10(at))
            parts.append(
                f'<line class="{cls}" x1="{xv:.1f}" x2="{xv:.1f}" y1="{MT}" y2="{base}">'
                f"<title>{what} = {fmt(at)}</title></line>"
            )
    for s in esd.get("spikes") or []:
        if s is not None and s > 0:
            xs = x(min(hi, max(lo, math.log10(s))))
            parts.append(
                f'<path class="mark-trap" d="M{xs - 5:.1f},{MT}h10l-5,8Z">'
                f"<title>shuffled eigenvalue {fmt(s)} above the MP edge</title></path>"
            )
    parts.append(
        f'<text class="axis" x="{ML + pw / 2}" y="{H - 6}" text-anchor="middle">'
        "eigenvalue λ of WᵀW (log scale)</text>"
        f'<text class="axis" transform="translate(13,{MT + ph / 2}) rotate(-90)" '
        'text-anchor="middle">density p(λ) (log)</text></svg>'
    )
    return "".join(parts)


def _outline(dens: list[float | None], lo: float, step: float, x: Any, y: Any, base: float) -> str:
    """A step outline over the non-empty bins, dropping to the axis around empty ones."""
    d, inside = [], False
    for i, v in enumerate(dens):
        x0, x1 = x(lo + i * step), x(lo + (i + 1) * step)
        if v is None:
            if inside:
                d.append(f"V{base}")
            inside = False
            continue
        d.append(f"V{y(v):.1f}H{x1:.1f}" if inside else f"M{x0:.1f},{base}V{y(v):.1f}H{x1:.1f}")
        inside = True
    if inside:
        d.append(f"V{base}")
    return "".join(d)


def _fit_line(
    esd: Mapping[str, Any], ylo: float, yhi: float, lo: float, hi: float, x: Any, y: Any
) -> str:
    """p(λ) = f·(α−1)/xmin·(λ/xmin)^−α from xmin to xmax, f the fraction of eigenvalues in the
    tail: the fitted power law at the scale of the histogram, a straight line on log-log axes."""
    alpha, xmin, xmax = num(esd.get("alpha")), num(esd.get("xmin")), num(esd.get("xmax"))
    npl = num(esd.get("npl"))
    if alpha is None or xmin is None or xmax is None or npl is None or not esd["ne"]:
        return ""
    if alpha <= 1 or xmin <= 0 or xmax <= xmin or npl <= 0:
        return ""
    c = math.log10(npl / esd["ne"] * (alpha - 1) / xmin)
    u0, u1 = max(lo, math.log10(xmin)), min(hi, math.log10(xmax))

    def at(u: float) -> float:
        return c - alpha * (u - math.log10(xmin))

    # Keep the line inside the plot: move each end to where it meets the top or bottom.
    if at(u0) > yhi:
        u0 = math.log10(xmin) + (c - yhi) / alpha
    if at(u1) < ylo:
        u1 = math.log10(xmin) + (c - ylo) / alpha
    if u1 <= u0:
        return ""
    return (
        f'<line class="esd-fit" x1="{x(u0):.1f}" y1="{y(at(u0)):.1f}" '
        f'x2="{x(u1):.1f}" y2="{y(at(u1)):.1f}"><title>power-law fit, alpha = '
        f"{fmt(alpha, 'alpha')}</title></line>"
    )


# Alpha-by-depth panels, one per role.
PW, PH = 320, 180
PL, PR, PT, PB = 34, 10, 22, 26


def depth_panel(
    role: str,
    points: list[Mapping[str, Any]],
    blocks: int,
    ymax: float,
    thresholds: tuple[float, float],
) -> str:
    """alpha against block for one role: a point per layer (flagged ones ringed), a line through
    the per-block medians, shaded bands below alpha_low and above alpha_high."""
    low, high = thresholds
    pw, ph = PW - PL - PR, PH - PT - PB

    def x(b: float) -> float:
        return PL + (b + 0.5) / max(blocks, 1) * pw

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
    for t in (low, high):
        parts.append(
            f'<line class="threshold" x1="{PL}" x2="{PL + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
        )
    for v in range(0, int(ymax) + 1, 2 if ymax <= 12 else 4):
        parts.append(
            f'<text class="tick" x="{PL - 4}" y="{y(v) + 3:.1f}" text-anchor="end">{v}</text>'
        )
    every = max(1, math.ceil(blocks / 8))
    for b in range(0, blocks, every):
        parts.append(
            f'<text class="tick" x="{x(b):.1f}" y="{PT + ph + 12}" text-anchor="middle">{b}</text>'
        )
    parts.append(
        f'<text class="axis" x="{PL + pw / 2}" y="{PH - 2}" text-anchor="middle">block</text>'
    )
    medians = _medians(points)
    if len(medians) > 1:
        line = "".join(
            f"{'M' if i == 0 else 'L'}{x(b):.1f},{y(a):.1f}" for i, (b, a) in enumerate(medians)
        )
        parts.append(f'<path class="depth-line" d="{line}"/>')
    for p in points:
        parts.append(_point(p, x(p["block"]), y(p["alpha"]), p["alpha"] > ymax))
    parts.append("</svg>")
    return "".join(parts)


def _medians(points: list[Mapping[str, Any]]) -> list[tuple[int, float]]:
    by_block: dict[int, list[float]] = {}
    for p in points:
        by_block.setdefault(p["block"], []).append(p["alpha"])
    out = []
    for b in sorted(by_block):
        v = sorted(by_block[b])
        mid = len(v) // 2
        out.append((b, v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2))
    return out


def _point(p: Mapping[str, Any], px: float, py: float, clipped: bool) -> str:
    flags = p["flags"]
    cls = "pt" + (" flagged" if flags else "") + (" trap" if "correlation_trap" in flags else "")
    title = f"{p['name']}: alpha {fmt(p['alpha'], 'alpha')}" + (
        f" ({', '.join(flags)})" if flags else ""
    )
    shape = (
        f'<path class="{cls}" d="M{px - 4:.1f},{py + 5:.1f}L{px:.1f},{py - 3:.1f}'
        f'L{px + 4:.1f},{py + 5:.1f}Z"/>'
        if clipped  # above the top of the axis: a triangle pinned to the top
        else f'<circle class="{cls}" cx="{px:.1f}" cy="{py:.1f}" r="{4.5 if flags else 3}"/>'
    )
    return f'<a href="#L{p["i"]}" data-pick="{p["i"]}"><title>{escape(title)}</title>{shape}</a>'
