"""Inline-SVG primitives every page draws with: a plot box, axes that map data to pixels, ticks.

Charts are strings; colours come from CSS classes (assets/report.css), so every chart follows the
light, dark and print schemes. `Axes` draws what all charts share (frame, grid, tick labels, axis
titles, lines, bands, bars); the charts in `plots.py` and the pages add only their own marks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

TICK_GAP = 13  # px from the x axis down to the baseline of its tick labels


@dataclass(frozen=True)
class Box:
    """An SVG's size and the margins around its plot area, in px of its viewBox."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom

    @property
    def base(self) -> int:
        """y of the x axis (the bottom of the plot area)."""
        return self.height - self.bottom


class Axes:
    """A plot area showing data x in `xrange` and y in `yrange` (both linear; pass log10 values
    for a log axis). Each method returns SVG markup; nothing is drawn outside what is asked."""

    def __init__(self, box: Box, xrange: tuple[float, float], yrange: tuple[float, float]) -> None:
        self.box = box
        self.x0, self.x1 = xrange
        self.y0, self.y1 = yrange

    def x(self, u: float) -> float:
        b = self.box
        return b.left + (u - self.x0) / ((self.x1 - self.x0) or 1.0) * b.plot_width

    def y(self, v: float) -> float:
        b = self.box
        return b.top + (self.y1 - v) / ((self.y1 - self.y0) or 1.0) * b.plot_height

    def svg(self, cls: str, label: str, parts: Iterable[str]) -> str:
        """The chart: an <svg> of class `cls` holding `parts`, named `label` for screen readers."""
        b = self.box
        return (
            f'<svg class="{cls}" viewBox="0 0 {b.width} {b.height}" role="img" '
            f'aria-label="{escape(label)}">{"".join(parts)}</svg>'
        )

    def frame(self) -> str:
        b = self.box
        return (
            f'<rect class="frame" x="{b.left}" y="{b.top}" width="{b.plot_width}" '
            f'height="{b.plot_height}"/>'
        )

    def x_ticks(self, ticks: Iterable[tuple[float, str]], *, grid: bool = True) -> str:
        """(value, label) pairs under the x axis, each with a vertical grid line if `grid`."""
        b, out = self.box, []
        for u, text in ticks:
            x = f"{self.x(u):.1f}"
            if grid:
                out.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{b.top}" y2="{b.base}"/>')
            out.append(
                f'<text class="tick" x="{x}" y="{b.base + TICK_GAP}" text-anchor="middle">'
                f"{text}</text>"
            )
        return "".join(out)

    def y_ticks(self, ticks: Iterable[tuple[float, str]], *, grid: bool = True) -> str:
        """(value, label) pairs left of the y axis, each with a horizontal grid line if `grid`."""
        b, out = self.box, []
        for v, text in ticks:
            y = self.y(v)
            if grid:
                out.append(
                    f'<line class="grid" x1="{b.left}" x2="{b.left + b.plot_width}" '
                    f'y1="{y:.1f}" y2="{y:.1f}"/>'
                )
            out.append(
                f'<text class="tick" x="{b.left - 4}" y="{y + 3:.1f}" text-anchor="end">'
                f"{text}</text>"
            )
        return "".join(out)

    def titles(self, x_title: str, y_title: str = "") -> str:
        """Axis titles: under the x tick labels, and rotated left of the y tick labels."""
        b = self.box
        out = (
            f'<text class="axis" x="{b.left + b.plot_width / 2}" y="{b.height - 4}" '
            f'text-anchor="middle">{x_title}</text>'
        )
        if y_title:
            out += (
                f'<text class="axis" transform="translate(13,{b.top + b.plot_height / 2}) '
                f'rotate(-90)" text-anchor="middle">{y_title}</text>'
            )
        return out

    def vline(self, u: float, cls: str, title: str = "") -> str:
        """A vertical line across the plot at x = `u`, with a tooltip if `title`."""
        b, x = self.box, f"{self.x(u):.1f}"
        tip = f"<title>{escape(title)}</title>" if title else ""
        return f'<line class="{cls}" x1="{x}" x2="{x}" y1="{b.top}" y2="{b.base}">{tip}</line>'

    def hline(self, v: float, cls: str) -> str:
        """A horizontal line across the plot at y = `v`."""
        b, y = self.box, f"{self.y(v):.1f}"
        return f'<line class="{cls}" x1="{b.left}" x2="{b.left + b.plot_width}" y1="{y}" y2="{y}"/>'

    def hband(self, v0: float, v1: float, cls: str) -> str:
        """A band across the plot between y = `v0` and `v1`, clipped to the plot."""
        top, bottom = self.y(min(max(v0, v1), self.y1)), self.y(max(min(v0, v1), self.y0))
        return (
            f'<rect class="{cls}" x="{self.box.left}" y="{top:.1f}" width="{self.box.plot_width}" '
            f'height="{max(bottom - top, 0):.1f}"/>'
        )

    def vband(self, u0: float, u1: float, cls: str) -> str:
        """A band over the plot's full height between x = `u0` and `u1`."""
        left, right = self.x(u0), self.x(u1)
        return (
            f'<rect class="{cls}" x="{left:.1f}" y="{self.box.top}" '
            f'width="{max(right - left, 0):.1f}" height="{self.box.plot_height}"/>'
        )

    def line(self, points: Iterable[tuple[float, float]], cls: str) -> str:
        """A path through (x, y) points in order; empty when fewer than two."""
        pts = [(self.x(u), self.y(v)) for u, v in points]
        if len(pts) < 2:
            return ""
        d = "".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(pts))
        return f'<path class="{cls}" d="{d}"/>'

    def bars(self, heights: Sequence[float | None], lo: float, step: float, cls: str) -> str:
        """Histogram bars from the x axis: bin i spans [lo + i·step, lo + (i+1)·step] and rises
        to y = heights[i]; None is an empty bin."""
        base = self.box.base
        d = "".join(
            f"M{self.x(lo + i * step):.1f},{base}V{self.y(h):.1f}H{self.x(lo + (i + 1) * step):.1f}"
            f"V{base}Z"
            for i, h in enumerate(heights)
            if h is not None
        )
        return f'<path class="{cls}" d="{d}"/>'

    def outline(self, heights: Sequence[float | None], lo: float, step: float, cls: str) -> str:
        """The same bins as one step outline, dropping to the axis around empty bins."""
        base, d, inside = self.box.base, [], False
        for i, h in enumerate(heights):
            if h is None:
                if inside:
                    d.append(f"V{base}")
                inside = False
                continue
            y, x1 = self.y(h), self.x(lo + (i + 1) * step)
            d.append(
                f"V{y:.1f}H{x1:.1f}"
                if inside
                else f"M{self.x(lo + i * step):.1f},{base}V{y:.1f}H{x1:.1f}"
            )
            inside = True
        if inside:
            d.append(f"V{base}")
        return f'<path class="{cls}" d="{"".join(d)}"/>'


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions (log10 values) inside [lo, hi]: the decades, or 1-2-5 steps when fewer
    than two decades fit."""
    decades = [float(k) for k in range(math.ceil(lo), math.floor(hi) + 1)]
    if len(decades) >= 2:
        return decades
    steps = [k + math.log10(m) for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    return [u for u in steps if lo <= u <= hi]


def tick_label(u: float) -> str:
    """Label of a tick at log10 value `u`: plain decimals near 1, `2e-5` style far from it."""
    k = math.floor(u + 1e-9)
    m = round(10 ** (u - k))
    if -2 <= k <= 3:
        return f"{m * 10.0**k:.{max(0, -k)}f}"
    return f"{m}e{k}"


def linear_ticks(lo: float, hi: float, *, most: int = 8, min_step: float = 0.0) -> list[float]:
    """At most `most` ticks inside [lo, hi] at multiples of the smallest 1-2-5 step (times a power
    of ten, and at least `min_step`) that keeps them that few; [lo] when lo == hi."""
    span = hi - lo
    if not span > 0:
        return [lo]
    step = 10.0 ** math.floor(math.log10(span / most))
    step = next(s for s in (step, 2 * step, 5 * step, 10 * step) if span / s < most)
    step = max(step, min_step)
    first = math.ceil(lo / step - 1e-9)
    ticks = [(first + i) * step for i in range(int((hi - first * step) / step + 1e-9) + 1)]
    # Round away float noise (0.30000000000000004) to the step's own decimals.
    digits = max(0, -math.floor(math.log10(step)))
    return [round(t, digits) for t in ticks]
