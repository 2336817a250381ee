"""The drawing kit the pages share (report/svg.py, histogram.py, plots.py, page.py, view.py): tick
placement, pixel mapping, bins and densities, depth panels, the page skeleton; known answers."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from llm_audit.config import Thresholds, VerdictRule
from llm_audit.report.histogram import BINS, drawn, log_counts, log_densities, log_edges
from llm_audit.report.page import asset, csp, document, json_for_script
from llm_audit.report.plots import DepthPoint, depth_panel, depth_panels, medians
from llm_audit.report.svg import Axes, Box, linear_ticks, log_ticks, tick_label
from llm_audit.report.view import thresholds, verdict_rule

BOX = Box(100, 50, left=10, right=10, top=5, bottom=5)  # plot area x 10..90, y 5..45


# ---- ticks -------------------------------------------------------------------------------------


def test_log_ticks_are_decades_or_1_2_5_steps() -> None:
    assert log_ticks(-0.3, 3.2) == [0, 1, 2, 3]
    assert log_ticks(0.1, 0.9) == pytest.approx([math.log10(2), math.log10(5)])
    # one decade inside: not enough, so 1-2-5 steps around it
    assert log_ticks(-0.5, 0.5) == pytest.approx([-math.log10(2), 0, math.log10(2)])
    assert log_ticks(0.8, 0.9) == []


def test_tick_labels() -> None:
    labels = [tick_label(u) for u in (-3, -2, 0, 1, 3, 4)]
    assert labels == ["1e-3", "0.01", "1", "10", "1000", "1e4"]
    assert tick_label(math.log10(5)) == "5" and tick_label(-2 + math.log10(2)) == "0.02"


def test_linear_ticks_take_the_smallest_1_2_5_step_that_fits() -> None:
    assert linear_ticks(0, 12) == [0, 2, 4, 6, 8, 10, 12]
    assert linear_ticks(0, 8) == [0, 2, 4, 6, 8]
    assert linear_ticks(0, 1, most=6) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]  # no 0.6000000000000001
    assert linear_ticks(-0.05, 1.05, most=6) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert linear_ticks(0, 31, min_step=1) == [0, 5, 10, 15, 20, 25, 30]
    assert linear_ticks(0, 5, min_step=1) == [0, 1, 2, 3, 4, 5]
    assert linear_ticks(0, 1, min_step=1) == [0, 1]  # blocks are whole numbers
    assert linear_ticks(3, 3) == [3]


# ---- axes --------------------------------------------------------------------------------------


def test_axes_map_data_to_the_plot_area() -> None:
    ax = Axes(BOX, (0, 1), (0, 10))
    assert (ax.x(0), ax.x(1), ax.x(0.5)) == (10, 90, 50)
    assert (ax.y(0), ax.y(10), ax.y(5)) == (45, 5, 25)
    assert BOX.base == 45 and BOX.plot_width == 80 and BOX.plot_height == 40


def test_bars_and_outline_of_a_histogram_with_an_empty_bin() -> None:
    ax = Axes(BOX, (0, 4), (0, 4))  # 20 px per unit in x, 10 in y
    heights = [1.0, None, 2.0, 3.0]
    assert ax.bars(heights, 0, 1, "b") == (
        '<path class="b" d="M10.0,45V35.0H30.0V45ZM50.0,45V25.0H70.0V45ZM70.0,45V15.0H90.0V45Z"/>'
    )
    # dropping to the axis around the empty bin, one run for the last two
    assert ax.outline(heights, 0, 1, "o") == (
        '<path class="o" d="M10.0,45V35.0H30.0V45M50.0,45V25.0H70.0V15.0H90.0V45"/>'
    )


def test_bands_are_clipped_to_the_plot_and_lines_need_two_points() -> None:
    ax = Axes(BOX, (0, 1), (0, 8))
    assert 'y="5.0"' in ax.hband(6, 10, "band") and 'height="10.0"' in ax.hband(6, 10, "band")
    assert 'height="0.0"' in ax.hband(9, 10, "band")  # wholly above the axis: nothing shown
    assert ax.line([(0, 1)], "l") == ""
    assert ax.line([(0, 0), (1, 8)], "l") == '<path class="l" d="M10.0,45.0L90.0,5.0"/>'


# ---- histograms --------------------------------------------------------------------------------


def test_log_edges_span_the_values_and_widen_a_single_value() -> None:
    edges = log_edges([np.array([1.0, 10.0]), np.array([]), np.array([100.0])])
    assert len(edges) == BINS + 1 and edges[0] == 0 and edges[-1] == 2
    single = log_edges([np.array([5.0, 5.0])])
    assert single[-1] - single[0] == pytest.approx(0.5, abs=2e-4)
    assert (single[0] + single[-1]) / 2 == pytest.approx(math.log10(5), abs=1e-4)


def test_log_counts_count_every_value_and_drawn_drops_the_numerical_zeros() -> None:
    values = np.concatenate([np.zeros(2), np.array([1e-12]), np.logspace(0, 2, 50)])
    shown = drawn(values, 100.0)
    assert shown.size == 50  # below 100·1e-8: zero up to rounding
    counts = log_counts(shown, log_edges([shown]))
    assert sum(counts) == 50 and len(counts) == BINS
    assert log_counts(np.array([]), log_edges([shown])) == []


def test_log_densities_divide_by_n_and_the_bin_width_in_lambda() -> None:
    # two bins over log10 λ in [0, 2]: λ from 1 to 10 (width 9) and 10 to 100 (width 90)
    dens = log_densities([2, 0], 4, 0.0, 2.0)
    assert dens[0] == pytest.approx(math.log10(2 / 4 / 9)) and dens[1] is None
    assert log_densities([3, 1], 4, 0.0, 2.0)[1] == pytest.approx(math.log10(1 / 4 / 90))
    assert log_densities([], 0, 0.0, 1.0) == []


# ---- depth panels ------------------------------------------------------------------------------


def test_medians_per_block() -> None:
    assert medians([(0, 1.0), (0, 3.0), (1, 5.0), (0, 2.0)]) == [(0, 2.0), (1, 5.0)]
    assert medians([(2, 1.0), (2, 4.0)]) == [(2, 2.5)]


def test_depth_panel_marks_each_point_once_and_pins_those_above_the_axis() -> None:
    base = [DepthPoint(0, 3.0, "a"), DepthPoint(1, 15.0, "b", href="#L1", pick=1)]
    other = [DepthPoint(0, 2.5, "c", marks="flagged"), DepthPoint(1, 4.0, "d")]
    svg = depth_panel("q", [base, other], blocks=2, ymax=12.0, thresholds=(2.0, 6.0))
    markers = re.findall(r'class="mkr (sr\d)([^"]*)"', svg)
    assert [m[0] for m in markers] == ["sr0", "sr0", "sr1", "sr1"]
    assert [m[1] for m in markers] == ["", " clip", " flagged", ""]
    assert svg.count('class="threshold"') == 2 and svg.count('class="med ') == 2
    assert '<a href="#L1" data-pick="1"><title>b</title>' in svg
    # the pinned marker sits on the top edge (y = 22), the median line is clipped there too
    assert 'cy="22.0"' in svg and ",22.0" in svg.split('class="med sr0" d="')[1].split('"')[0]
    # a threshold above the axis is not drawn
    high = depth_panel("q", [base], blocks=2, ymax=8.0, thresholds=(2.0, 10.0))
    assert high.count('class="threshold"') == 1


def test_depth_panels_share_axes_and_say_when_there_is_nothing() -> None:
    panels = {"up": [[DepthPoint(5, 3.0, "x")]], "q": [[DepthPoint(0, 9.5, "y")]]}
    html = depth_panels(panels, (2.0, 6.0))
    assert [m for m in re.findall(r"alpha by block, (\w+)", html)] == ["q", "up"]  # role order
    assert html.count(">10</text>") == 2  # both go to alpha 10 (ceil of 9.5)
    assert "No layer has a block index" in depth_panels({}, (2.0, 6.0))


# ---- the page and the words it reads -----------------------------------------------------------


def test_document_is_self_contained_and_its_data_cannot_close_the_script() -> None:
    html = document("t <b>", ["<p>body</p>"], data={"name": "</script><b>", "x": math.nan})
    assert csp(asset("table.js")) in html and "<title>t &lt;b&gt;</title>" in html
    assert "'unsafe-inline'; img-src" not in html and "script-src 'sha256-" in html
    assert html.count("<script") == 2 and html.count("</script>") == 2
    data = html.split('id="page-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data) == {"name": "</script><b>", "x": None}
    assert json_for_script("&") == '"\\u0026"'
    assert "<script>" not in document("t", [], scripts=())


def test_thresholds_and_rule_come_from_the_document_or_the_config_defaults() -> None:
    assert thresholds({}) == Thresholds()
    given = {"settings": {"thresholds": {"alpha_low": 1.5, "min_traps": None}}}
    assert thresholds(given) == Thresholds(alpha_low=1.5)
    rule = verdict_rule({"settings": {"verdict": {"pathological_trap_fraction": 0.5}}})
    assert rule == VerdictRule(pathological_trap_fraction=0.5)
