"""Fault impact from a synthetic per-second series: slices, percentiles, time to recover."""

import json
import logging

import pytest

from crucible_dagster.chaos.impact import analyse_faults, fault_impact
from crucible_dagster.engine import histogram
from crucible_dagster.results import FaultEvent, FaultStatus, QueryImpact


def _second(t: int, latencies_ms: dict[str, list[float]], errors: int = 0) -> str:
    queries = {}
    for name, values in latencies_ms.items():
        recorded = histogram.new_histogram()
        for value in values:
            recorded.record_value(int(value * 1000))
        queries[name] = {
            "count": len(values) + errors,
            "errors": errors,
            "dropped": 0,
            "service_hist": histogram.encode(recorded) if values else None,
            "latency_hist": None,
        }
    return json.dumps({"t": t, "queries": queries})


def _fault(name: str, inject_s: float | None, recover_s: float | None) -> FaultEvent:
    return FaultEvent(
        name=name, backend="local", fault_type="pod_kill", target="postgres",
        planned_inject_s=inject_s or 0.0, planned_recover_s=recover_s or 0.0,
        inject_s=inject_s, recover_s=recover_s,
        status=FaultStatus.RECOVERED if inject_s is not None else FaultStatus.NOT_INJECTED,
    )  # fmt: skip


def _impact(fault: FaultEvent, query: str) -> QueryImpact:
    return next(i for i in fault.impact if i.query == query)


def _series(profile: dict[range, float], seconds: int, errors_at: range = range(0)) -> list[str]:
    """Every second 20 executions of `q` at the latency of the range holding it."""
    lines = []
    for t in range(seconds):
        latency = next(value for span, value in profile.items() if t in span)
        lines.append(_second(t, {"q": [latency] * 20}, errors=2 if t in errors_at else 0))
    return lines


def test_slices_and_time_to_recover_follow_the_fault() -> None:
    # 10 ms before the fault (series 0-9), 200 ms during (10-19) and 3 s after it (20-22).
    lines = _series({range(10): 10.0, range(10, 23): 200.0, range(23, 40): 10.0}, 40)
    [fault] = fault_impact(lines, [_fault("kill", 10.0, 20.0)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.before is not None and q.during is not None and q.after is not None
    assert (q.before.seconds, q.during.seconds, q.after.seconds) == (10, 10, 20)
    assert q.before.p99_ms == pytest.approx(10.0, rel=0.002)
    assert q.during.p99_ms == pytest.approx(200.0, rel=0.002)
    assert q.after.p99_ms == pytest.approx(200.0, rel=0.002)  # 3 slow seconds of 20 > 1 %
    assert q.after.p50_ms == pytest.approx(10.0, rel=0.002)
    assert q.before.qps == 20.0
    assert q.time_to_recover_s == 3
    assert q.recovered is True
    assert [i.query for i in fault.impact] == ["q", "total"]
    assert _impact(fault, "total").time_to_recover_s == 3


def test_warm_up_shifts_fault_times_onto_the_series() -> None:
    # Load time = series time + 5: the fault at load 15-25 is at series 10-20.
    lines = _series({range(10): 10.0, range(10, 20): 200.0, range(20, 30): 10.0}, 30)
    [fault] = fault_impact(lines, [_fault("kill", 15.0, 25.0)], warm_up_s=5, query_names=["q"])

    q = _impact(fault, "q")
    assert q.before is not None and q.during is not None and q.after is not None
    assert q.before.p99_ms == pytest.approx(10.0, rel=0.002)
    assert q.during.p99_ms == pytest.approx(200.0, rel=0.002)
    assert q.during.p50_ms == pytest.approx(200.0, rel=0.002)
    assert q.after.p99_ms == pytest.approx(10.0, rel=0.002)
    assert q.time_to_recover_s == 0


def test_an_edge_second_counts_in_the_slice_holding_most_of_it() -> None:
    lines = _series({range(30): 10.0}, 30)
    [fault] = fault_impact(lines, [_fault("kill", 10.4, 19.4)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.before is not None and q.during is not None and q.after is not None
    # Seconds 0-9 are before 10.4; 10-18 mostly inside [10.4, 19.4]; 19 is mostly after it.
    assert (q.before.seconds, q.during.seconds, q.after.seconds) == (10, 9, 11)


def test_a_fault_shorter_than_a_second_takes_the_seconds_it_touches() -> None:
    lines = _series({range(10): 10.0}, 10)
    [fault] = fault_impact(lines, [_fault("blip", 3.6, 4.1)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.before is not None and q.during is not None and q.after is not None
    assert (q.before.seconds, q.during.seconds, q.after.seconds) == (3, 2, 5)


def test_overlapping_faults_each_get_their_own_slices() -> None:
    lines = _series({range(10): 10.0, range(10, 25): 300.0, range(25, 40): 10.0}, 40)
    first, second = fault_impact(
        lines, [_fault("a", 10.0, 20.0), _fault("b", 15.0, 25.0)], warm_up_s=0, query_names=["q"]
    )

    a, b = _impact(first, "q"), _impact(second, "q")
    assert a.during is not None and b.during is not None and b.before is not None
    assert (a.during.seconds, b.during.seconds, b.before.seconds) == (10, 10, 15)
    assert a.time_to_recover_s == 5  # still slow until b ends at 25
    assert b.time_to_recover_s == 0
    assert b.before.p99_ms == pytest.approx(300.0, rel=0.002)  # b's before includes a


def test_fault_that_never_recovers_its_p99_says_so() -> None:
    lines = _series({range(10): 10.0, range(10, 30): 200.0}, 30)
    [fault] = fault_impact(lines, [_fault("kill", 10.0, 20.0)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.after is not None and q.after.seconds == 10
    assert q.time_to_recover_s is None
    assert q.recovered is False


def test_time_to_recover_counts_from_a_recovery_between_seconds() -> None:
    lines = _series({range(10): 10.0, range(10, 24): 200.0, range(24, 40): 10.0}, 40)
    [fault] = fault_impact(lines, [_fault("kill", 10.0, 20.4)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    # The first second after 20.4 is 21; the p99 is back from second 24.
    assert q.time_to_recover_s == pytest.approx(3.6)
    assert q.recovered is True


def test_recovery_found_in_seconds_out_of_order() -> None:
    lines = _series({range(10): 10.0, range(10, 23): 200.0, range(23, 40): 10.0}, 40)
    lines.reverse()
    [fault] = fault_impact(lines, [_fault("kill", 10.0, 20.0)], warm_up_s=0, query_names=["q"])
    assert _impact(fault, "q").time_to_recover_s == 3


def test_errors_during_the_fault_show_in_its_error_rate() -> None:
    lines = _series({range(30): 10.0}, 30, errors_at=range(10, 20))
    [fault] = fault_impact(lines, [_fault("kill", 10.0, 20.0)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.during is not None and q.before is not None
    assert q.during.errors == 20
    assert q.during.count == 220
    assert q.during.error_rate == pytest.approx(20 / 220, abs=1e-6)
    assert q.before.error_rate == 0.0


def test_total_merges_every_query_of_each_second() -> None:
    lines = [_second(t, {"fast": [1.0] * 99, "slow": [500.0]}) for t in range(20)]
    [fault] = fault_impact(
        lines, [_fault("kill", 5.0, 10.0)], warm_up_s=0, query_names=["fast", "slow"]
    )

    total = _impact(fault, "total")
    assert total.before is not None
    assert total.before.count == 500
    assert total.before.qps == 100.0
    assert total.before.max_ms == pytest.approx(500.0, rel=0.002)
    assert total.before.p50_ms == pytest.approx(1.0, rel=0.002)
    assert [i.query for i in fault.impact] == ["fast", "slow", "total"]


def test_query_without_successes_has_no_percentiles_and_no_recovery_verdict() -> None:
    lines = [_second(t, {"q": []}, errors=3) for t in range(20)]
    [fault] = fault_impact(lines, [_fault("kill", 5.0, 10.0)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.before is not None and q.before.p99_ms is None and q.before.errors == 15
    assert q.recovered is None and q.time_to_recover_s is None


def test_fault_not_injected_gets_no_impact() -> None:
    lines = _series({range(10): 10.0}, 10)
    injected, skipped = fault_impact(
        lines, [_fault("a", 2.0, 4.0), _fault("b", None, None)], warm_up_s=0, query_names=["q"]
    )
    assert len(injected.impact) == 2
    assert skipped.impact == []
    assert skipped.name == "b"


def test_fault_without_recovery_is_during_to_the_end() -> None:
    lines = _series({range(20): 10.0}, 20)
    [fault] = fault_impact(lines, [_fault("kill", 5.0, None)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.during is not None and q.during.seconds == 15
    assert q.after is None
    assert q.recovered is None


def test_seconds_past_the_measured_window_are_left_out_when_it_is_known() -> None:
    # Seconds 30-34 are the graceful stop: slow, and not an effect of the fault.
    lines = _series({range(30): 10.0, range(30, 35): 900.0}, 35)
    fault = _fault("kill", 10.0, 20.0)

    [kept] = fault_impact(lines, [fault], warm_up_s=0, query_names=["q"])
    [bounded] = fault_impact(lines, [fault], warm_up_s=0, query_names=["q"], measured_s=30.0)

    assert (a := _impact(kept, "q").after) is not None and a.seconds == 15
    assert (b := _impact(bounded, "q").after) is not None and b.seconds == 10
    assert b.max_ms == pytest.approx(10.0, rel=0.002)


def test_malformed_and_blank_lines_are_skipped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = _series({range(20): 10.0}, 20)
    lines[3] = "{not json"
    lines[7] = json.dumps({"t": "seven", "queries": {}})
    lines[9] = json.dumps({"t": 9, "queries": {"q": {"count": 1, "service_hist": "%%%"}}})
    lines.insert(12, "   ")
    faults = [_fault("kill", 10.0, 15.0)]

    analysis = analyse_faults(lines, faults, warm_up_s=0, query_names=["q"])
    assert analysis.malformed_lines == 3
    assert analysis.seconds == 17
    assert analysis.first_problem is not None and analysis.first_problem.startswith("line 4:")
    before = _impact(analysis.faults[0], "q").before
    assert before is not None and before.seconds == 7

    with caplog.at_level(logging.WARNING, logger="crucible_dagster.chaos.impact"):
        fault_impact(lines, faults, warm_up_s=0, query_names=["q"])
    assert "skipped 3 malformed lines" in caplog.text


def test_empty_series_leaves_every_slice_empty() -> None:
    [fault] = fault_impact([], [_fault("kill", 1.0, 2.0)], warm_up_s=0, query_names=["q"])
    q = _impact(fault, "q")
    assert (q.before, q.during, q.after, q.recovered) == (None, None, None, None)


def test_faults_are_copied_not_changed() -> None:
    original = _fault("kill", 1.0, 2.0)
    [copy] = fault_impact(_series({range(5): 1.0}, 5), [original], warm_up_s=0, query_names=["q"])
    assert original.impact == [] and copy.impact


@pytest.mark.parametrize(("after_ms", "recovered"), [(10.8, True), (12.0, False)])
def test_recovery_allows_ten_percent_above_the_p99_before(after_ms: float, recovered: bool) -> None:
    lines = _series({range(10): 10.0, range(10, 20): 300.0, range(20, 30): after_ms}, 30)
    [fault] = fault_impact(lines, [_fault("slow", 10.0, 20.0)], warm_up_s=0, query_names=["q"])

    q = _impact(fault, "q")
    assert q.recovered is recovered
    assert q.time_to_recover_s == (0.0 if recovered else None)
