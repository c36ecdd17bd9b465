"""The latency chart: a valid SVG (or PNG) with the faults, the warm-up and the lines."""

import json
import xml.etree.ElementTree as ET

from crucible_dagster.engine import histogram
from crucible_dagster.results import FaultEvent, FaultStatus
from crucible_dagster.results.chart import (
    MAX_QUERY_LINES,
    latency_chart,
    latency_chart_png,
    latency_points,
)

SVG = "{http://www.w3.org/2000/svg}"


def _second(t: int, latencies_ms: dict[str, list[float]]) -> str:
    queries = {}
    for name, values in latencies_ms.items():
        recorded = histogram.new_histogram()
        for value in values:
            recorded.record_value(int(value * 1000))
        queries[name] = {
            "count": len(values),
            "errors": 0,
            "service_hist": histogram.encode(recorded) if values else None,
        }
    return json.dumps({"t": t, "queries": queries})


def _fault(name: str, inject_s: float | None, recover_s: float | None) -> FaultEvent:
    return FaultEvent(
        name=name, backend="local", fault_type="network_delay", target="postgres",
        planned_inject_s=10.0, planned_recover_s=20.0, inject_s=inject_s, recover_s=recover_s,
        status=FaultStatus.RECOVERED if inject_s is not None else FaultStatus.NOT_INJECTED,
    )  # fmt: skip


def _texts(svg: bytes) -> list[str]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return ["".join(element.itertext()) for element in root.iter(f"{SVG}text")]


def test_chart_is_svg_with_fault_names_and_warm_up() -> None:
    lines = [_second(t, {"q1": [10.0] * 20, "q2": [50.0 if 5 <= t < 15 else 5.0] * 20})
             for t in range(30)]  # fmt: skip
    faults = [_fault("delay <eth0> & co", 10.4, 20.6), _fault("late_kill", None, None)]

    svg = latency_chart(lines, faults, warm_up_s=5, title="demo run 1")

    texts = _texts(svg)
    assert "demo run 1" in texts
    assert any("delay <eth0> & co" in text for text in texts)
    assert any("late_kill (not injected)" in text for text in texts)
    assert any("warm-up" in text for text in texts)
    assert {"total p99", "total p50", "q1 p99", "q2 p99"} <= set(texts)


def test_many_queries_draw_only_the_total() -> None:
    names = [f"q{i}" for i in range(MAX_QUERY_LINES + 1)]
    lines = [_second(t, {name: [1.0] for name in names}) for t in range(5)]

    points = latency_points(lines)
    assert points.too_many_queries and points.query_p99_ms == {}
    assert len(points.total_p99_ms) == 5

    texts = _texts(latency_chart(points, [], warm_up_s=0, title="many"))
    assert not any(text == "q0 p99" for text in texts)


def test_points_keep_queries_aligned_with_seconds() -> None:
    lines = [_second(0, {"a": [1.0]}), "garbage", _second(1, {"a": [2.0], "b": [3.0]}),
             _second(2, {"b": []})]  # fmt: skip

    points = latency_points(lines)

    assert list(points.t) == [0.0, 1.0, 2.0]
    assert points.malformed_lines == 1
    a, b = points.query_p99_ms["a"], points.query_p99_ms["b"]
    assert len(a) == len(b) == 3
    assert a[1] == histogram.new_histogram().get_highest_equivalent_value(2000) / 1000
    assert [value != value for value in b] == [True, False, True]  # NaN where no successes


def test_empty_series_still_makes_a_chart() -> None:
    texts = _texts(latency_chart([], [_fault("kill", 1.0, 2.0)], warm_up_s=0, title="empty"))
    assert "no per-second data" in texts


def test_names_with_dollars_and_underscores_are_written_as_they_are() -> None:
    lines = [_second(t, {"_hidden$": [1.0]}) for t in range(3)]
    texts = _texts(latency_chart(lines, [_fault("$cost$", 0.5, 1.5)], warm_up_s=0, title="$x$"))
    assert "_hidden$ p99" in texts
    assert any("$cost$" in text for text in texts)
    assert "$x$" in texts


def test_png_has_the_requested_size() -> None:
    lines = [_second(t, {"q": [1.0, 900.0]}) for t in range(10)]
    png = latency_chart_png(lines, [_fault("kill", 2.0, 4.0)], warm_up_s=2, title="png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (900, 300)
