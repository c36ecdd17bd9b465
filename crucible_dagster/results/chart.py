"""A run's latency over time with its faults on the same axis, as SVG or PNG.

x is seconds since the start of the load (the warm-up shaded grey before the measured window),
y the per-second p50 and p99 of all queries together, and each query's p99 when there are few
enough queries to tell the lines apart. Every injected fault is a shaded span from its actual
injection to its actual recovery; dashed lines mark when the plan wanted it.

Only a few floats per second stay in memory, so an hours-long series charts fine. Matplotlib
is used without pyplot (no global figure state), drawn by the Agg backend.
"""

import io
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from crucible_dagster.results.model import FaultEvent
from crucible_dagster.results.series import SeriesReader, percentiles_ms

# More per-query lines than this are a tangle nobody can read: then only the total is drawn.
MAX_QUERY_LINES = 8
# A p99 this many times the p50 (or more) needs a log scale to show both.
_LOG_SCALE_RATIO = 30.0
# Faults in warm colours, latency lines in cool ones, so a line never hides in a span.
_FAULT_COLOURS = ("#d62728", "#9467bd", "#ff7f0e", "#e377c2", "#bf5b17", "#f0027f")
_TOTAL_COLOURS = ("#08306b", "#4292c6")
_QUERY_COLOURS = ("#2ca02c", "#17becf", "#7f7f7f", "#bcbd22", "#1b9e77", "#66a61e", "#386cb0")


@dataclass
class LatencyPoints:
    """Per-second points of a series: `t` in series seconds, latencies in ms (NaN when a
    second had no successful execution). `query_p99_ms` is empty when there were too many
    queries to draw."""

    t: "array[float]" = field(default_factory=lambda: array("d"))
    total_p50_ms: "array[float]" = field(default_factory=lambda: array("d"))
    total_p99_ms: "array[float]" = field(default_factory=lambda: array("d"))
    query_p99_ms: "dict[str, array[float]]" = field(default_factory=dict)
    too_many_queries: bool = False
    malformed_lines: int = 0


def latency_points(lines: Iterable[str]) -> LatencyPoints:
    """Reads a per-second series once; malformed lines are skipped and counted."""
    points = LatencyPoints()
    reader = SeriesReader(lines)
    for second in reader:
        index = len(points.t)
        points.t.append(float(second.t))
        p50, p99 = percentiles_ms(second.total().service, (50.0, 99.0))
        points.total_p50_ms.append(_point(p50))
        points.total_p99_ms.append(_point(p99))
        if points.too_many_queries:
            continue
        for name, row in second.queries.items():
            if name not in points.query_p99_ms:
                if len(points.query_p99_ms) == MAX_QUERY_LINES:
                    points.too_many_queries = True
                    points.query_p99_ms.clear()
                    break
                points.query_p99_ms[name] = array("d", [math.nan] * index)
            (query_p99,) = percentiles_ms(row.service, (99.0,))
            points.query_p99_ms[name].append(_point(query_p99))
        for values in points.query_p99_ms.values():
            if len(values) == index:  # the query had no row this second
                values.append(math.nan)
    points.malformed_lines = reader.malformed
    return points


def latency_chart(
    lines: Iterable[str] | LatencyPoints,
    faults: Sequence[FaultEvent],
    *,
    warm_up_s: float,
    title: str,
) -> bytes:
    """The chart as an SVG document (text kept as text, so names are searchable)."""
    figure = _draw(_points(lines), faults, warm_up_s, title, size_px=(1200, 400), dpi=100)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "crucible"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def latency_chart_png(
    lines: Iterable[str] | LatencyPoints,
    faults: Sequence[FaultEvent],
    *,
    warm_up_s: float,
    title: str,
    width_px: int = 900,
    height_px: int = 300,
    dpi: int = 80,
) -> bytes:
    """The chart as a PNG of `width_px` x `height_px`, small enough to embed in metadata."""
    figure = _draw(_points(lines), faults, warm_up_s, title, size_px=(width_px, height_px), dpi=dpi)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _points(lines: Iterable[str] | LatencyPoints) -> LatencyPoints:
    return lines if isinstance(lines, LatencyPoints) else latency_points(lines)


def _point(value: float | None) -> float:
    return math.nan if value is None else value


def _draw(
    points: LatencyPoints,
    faults: Sequence[FaultEvent],
    warm_up_s: float,
    title: str,
    *,
    size_px: tuple[int, int],
    dpi: int,
) -> Figure:
    figure = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    handles: list[Line2D] = []
    labels: list[str] = []

    order = np.argsort(np.frombuffer(points.t, dtype=np.float64), kind="stable")
    x = np.frombuffer(points.t, dtype=np.float64)[order] + warm_up_s + 0.5  # mid-second
    series = [
        ("total p99", points.total_p99_ms, 1.6, _TOTAL_COLOURS[0]),
        ("total p50", points.total_p50_ms, 1.2, _TOTAL_COLOURS[1]),
    ]
    series += [
        (f"{name} p99", values, 0.7, _QUERY_COLOURS[number % len(_QUERY_COLOURS)])
        for number, (name, values) in enumerate(points.query_p99_ms.items())
    ]
    for label, values, width, colour in series:
        y = np.frombuffer(values, dtype=np.float64)[order]
        (line,) = axes.plot(x, y, linewidth=width, color=colour)
        handles.append(line)
        labels.append(label)

    _scale_y(axes, points)
    end_s = _end_s(x, faults, warm_up_s)
    if warm_up_s > 0:
        axes.axvspan(0, warm_up_s, color="0.88", zorder=0)
        _label(axes, warm_up_s / 2, "warm-up", "0.35", row=0, align="center")
    for number, fault in enumerate(faults):
        _draw_fault(axes, fault, _FAULT_COLOURS[number % len(_FAULT_COLOURS)], number, end_s)

    axes.set_xlim(0, max(end_s, 1.0))
    axes.set_xlabel("seconds since the start of the load")
    axes.set_ylabel("latency (ms)")
    axes.set_title(_plain(title), fontsize="medium")
    axes.grid(True, which="major", linewidth=0.3, alpha=0.6)
    if not len(points.t):
        axes.text(0.5, 0.5, "no per-second data", transform=axes.transAxes, ha="center")
    elif points.too_many_queries:
        labels[0] += f" (each query's p99 is drawn for at most {MAX_QUERY_LINES} queries)"
    # Labels passed explicitly: matplotlib would hide ones starting with "_" (a valid query name).
    axes.legend(handles, [_plain(label) for label in labels], loc="upper right", fontsize="x-small")
    return figure


def _scale_y(axes: Axes, points: LatencyPoints) -> None:
    values = np.concatenate(
        [np.frombuffer(v, dtype=np.float64) for v in (points.total_p50_ms, points.total_p99_ms)]
        + [np.frombuffer(v, dtype=np.float64) for v in points.query_p99_ms.values()]
    )
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() / positive.min() >= _LOG_SCALE_RATIO:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)


def _end_s(x: np.ndarray, faults: Sequence[FaultEvent], warm_up_s: float) -> float:
    ends = [float(x[-1]) + 0.5 if x.size else warm_up_s]
    for fault in faults:
        ends += [fault.planned_recover_s, fault.recover_s or 0.0, fault.inject_s or 0.0]
    return max(ends)


def _draw_fault(axes: Axes, fault: FaultEvent, colour: str, row: int, end_s: float) -> None:
    for planned_s in (fault.planned_inject_s, fault.planned_recover_s):
        axes.axvline(planned_s, color=colour, linestyle="--", linewidth=0.7, alpha=0.8)
    # Names near the right edge are written leftwards so they are not cut off.
    align = "right" if (fault.inject_s or fault.planned_inject_s) > 0.75 * end_s else "left"
    if fault.inject_s is None:
        text = f"{fault.name} (not injected)"
        _label(axes, fault.planned_inject_s, text, colour, row, align)
        return
    recover_s = fault.recover_s if fault.recover_s is not None else end_s
    axes.axvspan(fault.inject_s, recover_s, color=colour, alpha=0.15, zorder=0)
    _label(axes, fault.inject_s, fault.name, colour, row, align)


def _label(axes: Axes, x: float, text: str, colour: str, row: int, align: str = "left") -> None:
    # Rows step down from the top so overlapping faults do not print over each other.
    transform = blended_transform_factory(axes.transData, axes.transAxes)
    y = 0.97 - 0.07 * (row % 5)
    padded = {"left": f" {text}", "right": f"{text} ", "center": text}[align]
    axes.text(
        x, y, _plain(padded), transform=transform, color=colour, fontsize="x-small",
        ha=align, va="top", clip_on=True,
    )  # fmt: skip


def _plain(text: str) -> str:
    # Matplotlib reads "$...$" as mathematics; a name is shown exactly as written.
    return text.replace("$", r"\$")
