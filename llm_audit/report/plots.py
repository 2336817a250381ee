"""The charts the pages share, drawn with `svg.Axes`: spectra on log-log axes, alpha by depth.

`esd_svg` has a twin, `esdSvg` in assets/report.js, that draws the layer a reader picks from the
same binned data; keep the two in step (same geometry, same classes; a browser test compares them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from llm_audit.report.histogram import log_densities
from llm_audit.report.svg import Axes, Box, linear_ticks, log_ticks, tick_label
from llm_audit.report.view import fmt, num, role_order

ESD_BOX = Box(560, 300, left=58, right=14, top=16, bottom=40)  # the same numbers are in report.js
DEPTH_BOX = Box(360, 200, left=34, right=10, top=22, bottom=26)
SERIES_COLOURS = 8  # CSS classes sr0 ... sr7 (report.css), reused cyclically beyond that
NO_DEPTH = "<p class='muted'>No layer has a block index, so there is no depth to plot.</p>"


# ---- spectra ------------------------------------------------------------------------------------


def density_axes(lo: float, hi: float, series: Sequence[Sequence[float | None]]) -> Axes | None:
    """Log-log axes for densities (log10 p per bin) over log10 λ in [lo, hi], with a quarter
    decade of room above and below; None when no bin of any series is drawn."""
    values = [d for ds in series for d in ds if d is not None]
    if not values:
        return None
    ylo, yhi = min(values) - 0.25, max(values) + 0.25
    if math.floor(yhi) < ylo:  # no decade inside: reach down to one, so the y axis has a label
        ylo = math.floor(ylo)
    return Axes(ESD_BOX, (lo, hi), (ylo, yhi))


def _spectrum_frame(ax: Axes) -> str:
    """Frame, decade grid and tick labels of a spectrum plot."""
    return (
        ax.frame()
        + ax.x_ticks((u, tick_label(u)) for u in log_ticks(ax.x0, ax.x1))
        + ax.y_ticks((v, tick_label(v)) for v in log_ticks(ax.y0, ax.y1))
    )


def _spectrum_titles(ax: Axes) -> str:
    return ax.titles("eigenvalue λ of WᵀW (log scale)", "density p(λ) (log)")


def esd_svg(esd: Mapping[str, Any], label: str = "") -> str:
    """The ESD of one layer (`view.esd_view`): bars of the eigenvalue density, the shuffled ESD as
    an outline, the power-law fit from xmin, and vertical marks at xmin, the MP bulk edge and the
    largest shuffled eigenvalue; shuffled eigenvalues above the edge are triangles on top."""
    lo, hi = float(esd["lo"]), float(esd["hi"])
    de = log_densities(esd["e"], esd["ne"], lo, hi)
    dr = log_densities(esd["r"], esd["nr"], lo, hi)
    ax = density_axes(lo, hi, [de, dr])
    if ax is None:
        return '<p class="note">No eigenvalue above zero to plot.</p>'
    step = (hi - lo) / len(esd["e"])
    parts = [_spectrum_frame(ax), ax.bars(de, lo, step, "esd-bar")]
    if any(d is not None for d in dr):
        parts.append(ax.outline(dr, lo, step, "esd-rand"))
    parts.append(_fit_line(esd, ax))
    for key, cls, what in (
        ("xmin", "mark-xmin", "xmin"),
        ("bulk", "mark-bulk", "MP bulk edge (rand_bulk_max)"),
        ("mre", "mark-rand", "max_rand_eval"),
    ):
        at = num(esd.get(key))
        if at is not None and at > 0 and lo <= math.log10(at) <= hi:
            parts.append(ax.vline(math.log10(at), cls, f"{what} = {fmt(at)}"))
    for s in esd.get("spikes") or []:
        if s is not None and s > 0:
            xs = ax.x(min(hi, max(lo, math.log10(s))))
            parts.append(
                f'<path class="mark-trap" d="M{xs - 5:.1f},{ax.box.top}h10l-5,8Z">'
                f"<title>shuffled eigenvalue {fmt(s)} above the MP edge</title></path>"
            )
    parts.append(_spectrum_titles(ax))
    return ax.svg("esd", label, parts)


def _fit_line(esd: Mapping[str, Any], ax: Axes) -> str:
    """p(λ) = f·(α−1)/xmin·(λ/xmin)^−α from xmin to xmax, f the fraction of eigenvalues in the
    tail: the fitted power law at the scale of the histogram, a straight line on log-log axes."""
    alpha, xmin, xmax = num(esd.get("alpha")), num(esd.get("xmin")), num(esd.get("xmax"))
    npl = num(esd.get("npl"))
    if alpha is None or xmin is None or xmax is None or npl is None or not esd["ne"]:
        return ""
    if alpha <= 1 or xmin <= 0 or xmax <= xmin or npl <= 0:
        return ""
    c = math.log10(npl / esd["ne"] * (alpha - 1) / xmin)
    u0, u1 = max(ax.x0, math.log10(xmin)), min(ax.x1, math.log10(xmax))

    def at(u: float) -> float:
        return c - alpha * (u - math.log10(xmin))

    # Keep the line inside the plot: move each end to where it meets the top or bottom.
    if at(u0) > ax.y1:
        u0 = math.log10(xmin) + (c - ax.y1) / alpha
    if at(u1) < ax.y0:
        u1 = math.log10(xmin) + (c - ax.y0) / alpha
    if u1 <= u0:
        return ""
    return (
        f'<line class="esd-fit" x1="{ax.x(u0):.1f}" y1="{ax.y(at(u0)):.1f}" '
        f'x2="{ax.x(u1):.1f}" y2="{ax.y(at(u1)):.1f}"><title>power-law fit, alpha = '
        f"{fmt(alpha, 'alpha')}</title></line>"
    )


def overlay_svg(view: Mapping[str, Any], classes: Sequence[str], label: str = "") -> str:
    """Densities of several spectra binned alike (`compare_page.overlay_view`) on one log-log
    plot: the first as bars, the others as step outlines, each with its CSS class."""
    lo, hi = float(view["lo"]), float(view["hi"])
    dens = [log_densities(c, n, lo, hi) for c, n in zip(view["counts"], view["n"], strict=True)]
    ax = density_axes(lo, hi, dens)
    if ax is None:
        return '<p class="note">No eigenvalue above zero to plot.</p>'
    parts = [_spectrum_frame(ax)]
    for k, (ds, cls) in enumerate(zip(dens, classes, strict=True)):
        if any(d is not None for d in ds):
            step = (hi - lo) / len(ds)
            parts.append(ax.bars(ds, lo, step, cls) if k == 0 else ax.outline(ds, lo, step, cls))
    parts.append(_spectrum_titles(ax))
    return ax.svg("esd overlay", label, parts)


# ---- alpha by depth -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthPoint:
    """One layer's alpha in a depth panel, and what hovering and clicking it do."""

    block: int
    alpha: float
    title: str  # the tooltip
    href: str = ""  # link target ("#L3"); empty: not a link
    pick: int | None = None  # the layer the audit page's script shows on click
    marks: str = ""  # extra CSS classes of the marker ("flagged trap")


def series_class(k: int) -> str:
    """The CSS class giving series `k` its colour."""
    return f"sr{k % SERIES_COLOURS}"


def series_marker(k: int, x: float, y: float, extra: str = "", scale: float = 1.0) -> str:
    """A marker of series `k` at (x, y) px: circle, square, triangle, diamond, triangle down,
    cross; `extra` adds CSS classes, `scale` enlarges it."""
    cls = f'class="mkr {series_class(k)}{" " + extra if extra else ""}"'
    shape, s = k % 6, scale
    if shape == 0:
        return f'<circle {cls} cx="{x:.1f}" cy="{y:.1f}" r="{3.4 * s:.1f}"/>'
    corners = {
        1: ((-3, -3), (3, -3), (3, 3), (-3, 3)),
        2: ((-3.8, 3), (0, -3.8), (3.8, 3)),
        3: ((0, -4.2), (4.2, 0), (0, 4.2), (-4.2, 0)),
        4: ((-3.8, -3), (0, 3.8), (3.8, -3)),
        5: ((-1.3, -4), (1.3, -4), (1.3, -1.3), (4, -1.3), (4, 1.3), (1.3, 1.3), (1.3, 4),
            (-1.3, 4), (-1.3, 1.3), (-4, 1.3), (-4, -1.3), (-1.3, -1.3)),
    }  # fmt: skip
    d = "L".join(f"{x + dx * s:.1f},{y + dy * s:.1f}" for dx, dy in corners[shape])
    return f'<path {cls} d="M{d}Z"/>'


def series_key(k: int) -> str:
    """The legend's sample of series `k`, to put before its name."""
    return (
        f'<svg class="mk" viewBox="-6 -6 12 12" aria-hidden="true">{series_marker(k, 0, 0)}</svg>'
    )


def depth_panels(
    panels: Mapping[str, Sequence[Sequence[DepthPoint]]], thresholds: tuple[float, float]
) -> str:
    """One panel per role (architecture order), each holding one series of points per model, on
    common axes: blocks 0 to the deepest, alpha 0 to 8-12. A note when there is no point."""
    every = [p for series in panels.values() for points in series for p in points]
    if not every:
        return NO_DEPTH
    blocks = 1 + max(p.block for p in every)
    ymax = float(min(12, max(8, math.ceil(max(p.alpha for p in every)))))
    drawn = "".join(
        depth_panel(role, panels[role], blocks=blocks, ymax=ymax, thresholds=thresholds)
        for role in role_order(panels)
    )
    return f'<div class="panels">{drawn}</div>'


def depth_panel(
    role: str,
    series: Sequence[Sequence[DepthPoint]],
    *,
    blocks: int,
    ymax: float,
    thresholds: tuple[float, float],
) -> str:
    """alpha against block for one role: a marker per point (series side by side within a block;
    hollow at the top when above the axis), a line per series through its per-block medians,
    shaded bands below alpha_low and above alpha_high."""
    low, high = thresholds
    ax = Axes(DEPTH_BOX, (-0.5, blocks - 0.5), (0.0, ymax))
    slot = ax.box.plot_width / max(blocks, 1)
    shift = min(3.0, slot / (len(series) + 1)) / slot  # in blocks: side by side, not on top
    parts = [
        f'<text class="panel-title" x="{ax.box.left}" y="14">{escape(role)}</text>',
        ax.hband(0.0, low, "band"),
        ax.hband(high, ymax, "band"),
        ax.frame(),
        *(ax.hline(t, "threshold") for t in (low, high) if 0 <= t <= ymax),
        ax.y_ticks(((v, f"{v:g}") for v in linear_ticks(0, ymax)), grid=False),
        ax.x_ticks(((b, f"{b:g}") for b in linear_ticks(0, blocks - 1, min_step=1)), grid=False),
        ax.titles("block"),
    ]
    for k, points in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * shift
        meds = medians([(p.block, p.alpha) for p in points])
        line = [(b + offset, min(a, ymax)) for b, a in meds]
        parts.append(ax.line(line, f"med {series_class(k)}"))
    for k, points in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * shift
        for p in points:
            clipped = p.alpha > ymax
            extra = " ".join(c for c in (p.marks, "clip" if clipped else "") if c)
            at = (ax.x(p.block + offset), ax.y(min(p.alpha, ymax)))
            mark = series_marker(k, *at, extra, 1.3 if p.marks else 1.0)
            inner = f"<title>{escape(p.title)}</title>{mark}"
            pick = f' data-pick="{p.pick}"' if p.pick is not None else ""
            parts.append(f'<a href="{p.href}"{pick}>{inner}</a>' if p.href else f"<g>{inner}</g>")
    return ax.svg("depth", f"alpha by block, {role}", parts)


def medians(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """(block, median value) for each block among (block, value) points, in block order."""
    by_block: dict[int, list[float]] = {}
    for b, value in points:
        by_block.setdefault(b, []).append(value)
    out = []
    for b in sorted(by_block):
        v = sorted(by_block[b])
        mid = len(v) // 2
        out.append((b, v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2))
    return out
