"""Asset metadata of a run with faults: the faults table, a few floats each, chart and report."""

import base64

import dagster as dg

from crucible_dagster.defs.metadata import faults_table, result_metadata
from crucible_dagster.results import (
    FaultEvent,
    FaultStatus,
    QueryImpact,
    QueryResult,
    Result,
    RunStatus,
    SutRecord,
    Verdict,
    WindowStats,
)


def _window(p99_ms: float, error_rate: float = 0.0) -> WindowStats:
    return WindowStats(seconds=10, count=100, errors=int(error_rate * 100),
                       error_rate=error_rate, qps=10.0, p99_ms=p99_ms)  # fmt: skip


def _impact(query: str, during_p99_ms: float) -> QueryImpact:
    return QueryImpact(query=query, before=_window(3.0), during=_window(during_p99_ms, 0.25),
                       after=_window(3.5), time_to_recover_s=2.0, recovered=True)  # fmt: skip


def _result(*faults: FaultEvent) -> Result:
    query = QueryResult(name="q1", count=10, errors=0, error_rate=0.0, qps=1.0, p99_ms=3.0)
    total = query.model_copy(update={"name": "total"})
    return Result(
        run_id="r", plan="p", plan_source="s", plan_sha256="h", plan_text="t",
        status=RunStatus.COMPLETED, verdict=Verdict.PASSED, concurrency=1, shards=1,
        sut=SutRecord(type="postgresql", host="h", port=1, database="d", key="k"),
        queries=[query], total=total, faults=list(faults),
    )  # fmt: skip


def _fault(
    name: str,
    impact: list[QueryImpact],
    inject_s: float | None = None,
    recover_s: float | None = None,
) -> FaultEvent:
    return FaultEvent(
        name=name, backend="local", fault_type="process_kill", target="pg",
        planned_inject_s=10.0, planned_recover_s=20.0, inject_s=inject_s, recover_s=recover_s,
        status=FaultStatus.RECOVERED if inject_s is not None else FaultStatus.NOT_INJECTED,
        impact=impact,
    )  # fmt: skip


KILL = _fault(
    "kill", [_impact("q1", 120.0), _impact("total", 110.0)], inject_s=10.1, recover_s=20.3
)
LATE = _fault("late", [])


def test_faults_add_a_table_and_floats_for_total_and_each_querys_during_p99() -> None:
    metadata = result_metadata(_result(KILL, LATE), "file:///r.json")

    floats = {k: v.value for k, v in metadata.items() if k.startswith("chaos/")}
    assert all(isinstance(metadata[k], dg.FloatMetadataValue) for k in floats)
    assert floats == {
        "chaos/kill/q1/during_p99_ms": 120.0,
        "chaos/kill/total/during_p99_ms": 110.0,
        "chaos/kill/total/before_p99_ms": 3.0,
        "chaos/kill/total/after_p99_ms": 3.5,
        "chaos/kill/total/during_error_rate": 0.25,
        "chaos/kill/total/time_to_recover_s": 2.0,
    }
    assert isinstance(metadata["faults"], dg.MarkdownMetadataValue)


def test_faults_table_shows_planned_against_actual_times_and_recovery() -> None:
    unrecovered = _fault(
        "stuck|one",
        [_impact("total", 90.0).model_copy(update={"recovered": False, "time_to_recover_s": None})],
        inject_s=10.0,
        recover_s=20.0,
    )
    rows = faults_table([KILL, LATE, unrecovered]).splitlines()  # fmt: skip

    assert rows[2] == "| kill | process_kill | recovered | 10.0 → 20.0 | 10.1 → 20.3 | 2.0 |"
    assert rows[3] == "| late | process_kill | not_injected | 10.0 → 20.0 | – → – | – |"
    assert rows[4].startswith("| stuck\\|one |") and rows[4].endswith("| not recovered |")


def test_no_faults_means_no_fault_metadata_and_existing_keys_stay() -> None:
    metadata = result_metadata(_result(), "file:///r.json")
    assert "faults" not in metadata
    assert not [k for k in metadata if k.startswith("chaos/")]
    for key in ("run_id", "status", "verdict", "result", "q1/p99_ms", "total/qps", "queries"):
        assert key in metadata


def test_chart_and_report_are_linked_and_the_png_embedded() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    metadata = result_metadata(
        _result(KILL), "file:///r.json", "file:///results/r/latency.svg",
        "https://storage.example/results/r/report.html", chart_png=png,
    )  # fmt: skip

    assert metadata["chart"] == dg.MetadataValue.path("file:///results/r/latency.svg")
    assert metadata["report"] == dg.MetadataValue.url(
        "https://storage.example/results/r/report.html"
    )
    chart = metadata["latency_chart"]
    assert isinstance(chart, dg.MarkdownMetadataValue)
    encoded = chart.value.split("data:image/png;base64,", 1)[1].rstrip(")")
    assert base64.b64decode(encoded) == png
