"""The result model: numbers from merged histograms, JSON shape, metadata floats, run ids."""

import json
import re
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from crucible_dagster.defs.metadata import markdown_table, result_metadata
from crucible_dagster.engine.histogram import new_histogram
from crucible_dagster.engine.model import Measurement, QueryMeasurement
from crucible_dagster.results import Result, RunStatus, SutRecord, Verdict, summarise
from crucible_dagster.run import mint_run_id

START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _query(name: str, latencies_us: list[int], errors: int = 0) -> QueryMeasurement:
    histogram = new_histogram()
    for value in latencies_us:
        histogram.record_value(value)
    return QueryMeasurement(
        name=name,
        count=len(latencies_us) + errors,
        errors=errors,
        errors_by_kind={"22": errors} if errors else {},
        interrupted=0,
        histogram=histogram,
    )


def _measurement(*queries: QueryMeasurement, seconds: float = 10.0) -> Measurement:
    return Measurement(
        started_at=START, ended_at=START + timedelta(seconds=seconds), queries=list(queries),
        shards=1,
    )  # fmt: skip


def test_qps_counts_every_execution_over_the_load_window() -> None:
    queries, total = summarise(_measurement(_query("a", [1000] * 40, errors=10), seconds=10))
    assert queries[0].qps == 5.0
    assert queries[0].count == 50
    assert queries[0].error_rate == 0.2
    assert total.qps == 5.0


def test_percentiles_are_in_milliseconds_over_successful_executions() -> None:
    latencies = list(range(1000, 101_000, 1000))  # 1 ms .. 100 ms
    queries, _ = summarise(_measurement(_query("a", latencies, errors=5)))
    q = queries[0]
    assert q.p50_ms == pytest.approx(50.0, rel=0.002)
    assert q.p99_ms == pytest.approx(99.0, rel=0.002)
    assert q.max_ms == pytest.approx(100.0, rel=0.002)
    assert q.min_ms == pytest.approx(1.0, rel=0.002)


def test_total_merges_histograms_of_all_queries_exactly() -> None:
    a, b = list(range(100, 10_100, 100)), list(range(50_000, 60_000, 100))
    _, total = summarise(_measurement(_query("a", a), _query("b", b, errors=3)))
    single, _ = summarise(_measurement(_query("all", a + b)))
    assert total.count == len(a) + len(b) + 3
    assert total.errors == 3
    assert total.errors_by_kind == {"22": 3}
    assert total.p95_ms == single[0].p95_ms
    assert total.p50_ms == single[0].p50_ms


def test_query_without_successes_has_no_percentiles() -> None:
    queries, _ = summarise(_measurement(_query("broken", [], errors=7)))
    assert queries[0].p95_ms is None
    assert queries[0].histogram is None
    assert queries[0].errors == 7


def test_result_json_has_the_documented_shape() -> None:
    queries, total = summarise(_measurement(_query("q01", [2000, 3000])))
    result = Result(
        run_id="demo_20261203-1200_0a1b2c3d", plan="demo", plan_source="plans/demo.yaml",
        plan_sha256="0" * 64, plan_text="x", status=RunStatus.COMPLETED, verdict=Verdict.PASSED,
        sut=SutRecord(type="postgresql", host="127.0.0.1", port=5432, database="d",
                      key="postgresql://127.0.0.1:5432/d"),
        started_at=START, ended_at=START + timedelta(seconds=10), concurrency=8, shards=1,
        queries=queries, total=total,
    )  # fmt: skip
    document = json.loads(result.model_dump_json())
    assert document["started_at"] == "2026-12-03T12:00:00Z"
    assert {"run_id", "plan", "status", "started_at", "ended_at", "verdict", "queries"} <= set(
        document
    )
    assert {"name", "count", "errors", "qps", "p50_ms", "p95_ms", "p99_ms", "max_ms"} <= set(
        document["queries"][0]
    )
    assert Result.model_validate_json(result.model_dump_json()) == result


def test_metadata_values_are_floats_per_query_and_total() -> None:
    queries, total = summarise(_measurement(_query("q01", [2000, 3000]), _query("q02", [100])))
    result = Result(
        run_id="r", plan="p", plan_source="s", plan_sha256="h", plan_text="t",
        status=RunStatus.COMPLETED, verdict=Verdict.PASSED, concurrency=1, shards=1,
        sut=SutRecord(type="postgresql", host="h", port=1, database="d", key="k"),
        queries=queries, total=total,
    )  # fmt: skip
    metadata = result_metadata(result, "file:///r.json")
    for key in ("q01/p95_ms", "q02/qps", "total/p99_ms", "total/qps", "q01/count"):
        assert isinstance(metadata[key], dg.FloatMetadataValue), key
    assert "| q01 |" in markdown_table(queries, total)


def test_run_id_is_plan_utc_minute_and_eight_hex() -> None:
    run_id = mint_run_id("demo_tpch", datetime(2026, 12, 3, 9, 7, 59, tzinfo=UTC))
    assert re.fullmatch(r"demo_tpch_20261203-0907_[0-9a-f]{8}", run_id)
    assert run_id != mint_run_id("demo_tpch", datetime(2026, 12, 3, 9, 7, 59, tzinfo=UTC))


def test_total_carries_the_first_error_sample_with_its_query() -> None:
    failing = _query("b", [1000] * 5, errors=2)
    failing.first_error = "22012: division by zero"

    _, total = summarise(_measurement(_query("a", [1000] * 5), failing))

    assert total is not None
    assert total.first_error == "b: 22012: division by zero"
