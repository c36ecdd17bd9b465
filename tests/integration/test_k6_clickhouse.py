"""The k6 engine against a real ClickHouse 18.16 over HTTP: the engine alone, and plans run
through Dagster with `executor: k6`."""

import json
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest

from crucible_dagster.engine.model import (
    CONSTANT_ARRIVAL_RATE,
    EngineParam,
    LoadShape,
    Measurement,
)
from crucible_dagster.errors import RunError
from crucible_dagster.k6.engine import K6Settings, run_k6_load
from crucible_dagster.k6.script import K6Query, driver_input
from crucible_dagster.params import parse_param
from crucible_dagster.results.summary import summarise
from tests import servers_clickhouse
from tests.integration import test_plan_job as plan_job_tests
from tests.integration.test_prometheus import prometheus_servers  # noqa: F401 (fixture)
from tests.servers_clickhouse import CH_PASSWORD, ClickHouseServer
from tests.servers_prometheus import PrometheusServers

pytestmark = pytest.mark.integration

clickhouse = servers_clickhouse.clickhouse

K6_BINARY = Path(sys.executable).with_name("k6")
QUERIES = [
    K6Query("one", "w.sql", 2, 1.0, ("SELECT 1",), ()),
    K6Query("numbers", "w.sql", 4, 2.0,
            ("SELECT count() FROM (SELECT number FROM system.numbers LIMIT ", ")"), (0,),
            (EngineParam("n", parse_param("n {type: int, range: [10, 1000]}")[1]),)),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _needs_k6() -> None:
    if not K6_BINARY.exists():
        pytest.skip(f"{K6_BINARY} is not installed")


def _transport(server: ClickHouseServer, database: str = "default") -> dict[str, object]:
    return {"kind": "clickhouse_http", "url": server.url, "database": database,
            "user": server.user, "timeout_ms": 30_000}  # fmt: skip


def _run(
    server: ClickHouseServer,
    shape: LoadShape,
    queries: list[K6Query] = QUERIES,
    password: str = CH_PASSWORD,
    k6_binary: Path = K6_BINARY,
    remote_write_url: str | None = None,
    tags: dict[str, str] | None = None,
) -> Measurement:
    data = driver_input(queries, sut_type="clickhouse", transport=_transport(server),
                        shape=shape, seed=11)  # fmt: skip
    settings = K6Settings(k6_binary, password, remote_write_url, tags or {})
    return run_k6_load(data, shape, settings)


def _k6_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "k6"]


def test_two_shards_measure_both_queries_with_histograms(clickhouse: ClickHouseServer) -> None:
    shape = LoadShape(concurrency=4, hold_for_s=2.0, shards=2)
    measurement = _run(clickhouse, shape)
    queries, total = summarise(measurement)

    assert [q.name for q in queries] == ["one", "numbers"]
    for query in queries:
        assert query.count > 0 and query.errors == 0
        assert query.histogram is not None
        assert 0 < query.p50_ms <= query.p99_ms <= query.max_ms  # type: ignore[operator]
    # Weight 2 against 1: the heavier query runs about twice as often.
    assert 1.5 < queries[1].count / queries[0].count < 2.6
    assert total.count == sum(q.count for q in queries)
    assert measurement.shards == 2
    assert 0 <= measurement.start_skew_s < 1.0
    assert abs(measurement.duration_s - 2.0) < 0.01
    assert _k6_processes() == []


def test_constant_arrival_rate_splits_exactly_across_shards_and_skips_the_warm_up(
    clickhouse: ClickHouseServer,
) -> None:
    shape = LoadShape(model=CONSTANT_ARRIVAL_RATE, rate=40, duration_s=3.0, warm_up_s=1.0,
                      pre_allocated_vus=4, max_vus=8, shards=2)  # fmt: skip
    measurement = _run(clickhouse, shape)
    _, total = summarise(measurement)

    # 40 starts a second for the 2 measured seconds, from two shards sharing one rate; a start
    # on a second's edge can fall either side of it.
    assert 78 <= total.count + total.dropped <= 82
    assert abs(total.qps - 40) < 2


def test_a_failing_query_is_counted_by_kind_with_a_sample(clickhouse: ClickHouseServer) -> None:
    queries = [*QUERIES, K6Query("broken", "w.sql", 6, 1.0, ("SELECT no_such_column",), ())]
    measurement = _run(clickhouse, LoadShape(concurrency=2, hold_for_s=1.0), queries)
    results, total = summarise(measurement)

    broken = results[2]
    assert broken.count > 0 and broken.errors == broken.count
    assert broken.errors_by_kind == {"other": broken.count}
    assert broken.first_error is not None and broken.first_error.startswith("HTTP ")
    assert results[0].errors == 0
    assert total.errors == broken.errors


def test_sequence_choice_runs_each_query_its_repeat_count_in_turn(
    clickhouse: ClickHouseServer,
) -> None:
    shape = LoadShape(concurrency=2, hold_for_s=1.5, shards=2, query_choice="sequence")
    measurement = _run(clickhouse, shape)
    one, numbers = measurement.queries

    # Each virtual user walks one, numbers, numbers (weights 1 and 2) from its start.
    assert one.count > 10 and numbers.errors == 0
    assert abs(numbers.count - 2 * one.count) <= 2 * shape.concurrency


def test_a_stop_ends_every_k6_at_once_and_keeps_what_was_measured(
    clickhouse: ClickHouseServer,
) -> None:
    stop = threading.Event()
    shape = LoadShape(concurrency=2, hold_for_s=60.0, shards=2)
    data = driver_input(QUERIES, sut_type="clickhouse", transport=_transport(clickhouse),
                        shape=shape, seed=1)  # fmt: skip
    threading.Timer(2.0, stop.set).start()
    started = time.monotonic()
    measurement = run_k6_load(data, shape, K6Settings(K6_BINARY, CH_PASSWORD), stop=stop)

    assert time.monotonic() - started < 20
    assert measurement.interrupted_by_stop
    assert 1.0 < measurement.duration_s < 10
    assert sum(q.count for q in measurement.queries) > 0
    # Requests k6 cancels at the stop are interrupted, not errors of the SUT.
    assert all(q.errors == 0 for q in measurement.queries)
    assert _k6_processes() == []


def test_a_wrong_password_makes_every_execution_an_error(clickhouse: ClickHouseServer) -> None:
    measurement = _run(clickhouse, LoadShape(concurrency=1, hold_for_s=1.0),
                       password="not-" + CH_PASSWORD)  # fmt: skip

    for query in measurement.queries:
        assert query.count > 0 and query.errors == query.count
        assert CH_PASSWORD not in (query.first_error or "")


def test_live_metrics_reach_prometheus_by_remote_write_tagged_with_the_run_id(
    clickhouse: ClickHouseServer,
    prometheus_servers: PrometheusServers,  # noqa: F811
) -> None:
    run_id = "k6rw_" + secrets.token_hex(4)
    measurement = _run(clickhouse, LoadShape(concurrency=2, hold_for_s=3.0),
                       remote_write_url=f"{prometheus_servers.prometheus_url}/api/v1/write",
                       tags={"run_id": run_id, "plan": "k6rw"})  # fmt: skip

    samples = prometheus_servers.wait_for(f'k6_http_reqs_total{{run_id="{run_id}"}}')
    by_query = {s["metric"].get("query"): float(s["value"][1]) for s in samples}
    assert {"one", "numbers"} <= set(by_query)
    # The last push carries every request of the run.
    assert sum(by_query.values()) >= sum(q.count for q in measurement.queries)
    assert all(s["metric"]["plan"] == "k6rw" for s in samples)


def test_k6_that_cannot_start_fails_with_its_reason(
    clickhouse: ClickHouseServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-k6"
    with pytest.raises(RunError, match="could not"):
        _run(clickhouse, LoadShape(concurrency=1, hold_for_s=1.0), k6_binary=missing)


K6_WORKLOAD = """\
-- @type: clickhouse
-- @name: nations_per_region
SELECT r_name, count() FROM region ALL INNER JOIN nation ON r_regionkey = n_regionkey GROUP BY r_name;
-- @name: nation_by_key
-- @param: key {type: int, range: [0, 24]}
SELECT n_name FROM nation WHERE n_nationkey = :key
"""  # noqa: E501


def plan_file(folder: Path, name: str, *, port: int, database: str, execution: str) -> Path:
    """A ClickHouse plan whose `executor: native` line is replaced by `execution`."""
    path = plan_job_tests.write_plan(
        folder, name, port=port, database=database, workload=K6_WORKLOAD, workload_id="ch",
        sut_type="clickhouse", username=servers_clickhouse.CH_USER,
        password_env="CRUCIBLE_TEST_CH_PASSWORD", tables=("region", "nation"),
    )  # fmt: skip
    text = path.read_text().replace("  executor: native\n", execution)
    path.write_text(text)
    return path


@pytest.fixture
def instance(crucible_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    monkeypatch.setenv("CRUCIBLE_TEST_CH_PASSWORD", CH_PASSWORD)
    with dg.instance_for_test() as instance:
        yield instance


def test_plan_with_executor_k6_runs_through_dagster_to_per_query_results(
    clickhouse: ClickHouseServer, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    database = "k6_" + secrets.token_hex(4)
    execution = "  executor: k6\n  shards: 2\n  thresholds:\n    total: ['p(99)<5000']\n"
    plan = plan_file(tmp_path / "plans", "ch_k6", port=clickhouse.http_port, database=database,
                 execution=execution)  # fmt: skip
    try:
        success, run_id = plan_job_tests.execute(plan, instance)
        result = plan_job_tests.stored_result(run_id)
    finally:
        clickhouse.query(f"DROP DATABASE IF EXISTS {database}")

    assert success, result.get("error")
    assert result["engine"] == "k6"
    assert result["status"] == "completed" and result["verdict"] == "passed"
    assert result["shards"] == 2
    assert [q["name"] for q in result["queries"]] == ["nations_per_region", "nation_by_key"]
    for query in result["queries"]:
        assert query["count"] > 0 and query["errors"] == 0, query
        assert query["histogram"] and query["p95_ms"] > 0
    assert result["thresholds"][0]["passed"] is True
    logs = [str(event) for run in instance.get_runs() for event in instance.all_logs(run.run_id)]
    # Each shard's k6 ran under Dagster Pipes and reported its k6 summary back.
    assert sum("k6 shard" in line and "summary" in line for line in logs) == 2
    assert all(CH_PASSWORD not in line for line in logs)
    assert CH_PASSWORD not in json.dumps(result)


def test_k6_traffic_goes_through_the_fault_proxy_and_its_latency_is_measured(
    clickhouse: ClickHouseServer, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    database = "k6_" + secrets.token_hex(4)
    plan = plan_file(tmp_path / "plans", "ch_k6_chaos", port=clickhouse.http_port,
                     database=database, execution="  executor: k6\n")  # fmt: skip
    text = plan.read_text().replace("  hold_for: 2s\n", "  hold_for: 9s\n")
    plan.write_text(
        text
        + """\
chaos_spec:
  engine: local
  experiments:
    - name: slow-http
      fault_type: latency
      target: {}
      parameters: {latency: 60ms}
      schedule: {start_after: 3s, duration: 3s}
"""
    )
    try:
        success, run_id = plan_job_tests.execute(plan, instance)
        result = plan_job_tests.stored_result(run_id)
    finally:
        clickhouse.query(f"DROP DATABASE IF EXISTS {database}")
    assert success, result.get("error")
    [fault] = result["faults"]
    assert fault["status"] == "recovered"
    for impact in fault["impact"]:
        before, during = impact["before"], impact["during"]
        assert 50 <= during["p50_ms"] - before["p50_ms"] <= 120, impact
