"""PrometheusPusher against a real Pushgateway, read back through Prometheus' HTTP API."""

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from crucible_dagster.engine.histogram import new_histogram
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.results import QueryResult, Result, RunStatus, SutRecord, Verdict
from crucible_dagster.results.prometheus import IntervalStats, PrometheusPusher
from tests.conftest import PG_PASSWORD
from tests.servers_prometheus import (
    PrometheusServers,
    free_port,
    missing_binaries,
    start_prometheus_servers,
)

pytestmark = pytest.mark.integration

PLAN = "tpch_smoke"
SUT = "postgresql://127.0.0.1:5432/tpch"

Samples = list[dict[str, Any]]


@pytest.fixture(scope="session")
def prometheus_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServers]:
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not on PATH; install the Debian packages "
            "prometheus and prometheus-pushgateway"
        )
    servers = start_prometheus_servers(tmp_path_factory.mktemp("prometheus"))
    try:
        yield servers
    finally:
        servers.stop()


def _run_id() -> str:
    return f"{PLAN}_20250101-0000_{secrets.token_hex(4)}"


def _pusher(servers: PrometheusServers, run_id: str, shard: int | str = 0) -> PrometheusPusher:
    return PrometheusPusher(servers.pushgateway_url, run_id=run_id, plan=PLAN, sut=SUT, shard=shard)


def _wait_until(
    servers: PrometheusServers, promql: str, done: Callable[[Samples], bool], timeout_s: float = 15
) -> Samples:
    # Prometheus scrapes every second, so an early answer may still hold an older push.
    deadline = time.monotonic() + timeout_s
    samples = servers.query(promql)
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.25)
        samples = servers.query(promql)
    return samples


def _by_label(samples: Samples, label: str) -> dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in samples}


def _histogram(values_us: list[int]) -> HdrHistogram:
    histogram = new_histogram()
    for value in values_us:
        histogram.record_value(value)
    return histogram


def test_interval_counters_accumulate_across_pushes_with_run_labels(
    prometheus_servers: PrometheusServers,
) -> None:
    run_id = _run_id()
    pusher = _pusher(prometheus_servers, run_id, shard=1)
    seconds = [
        {"q1": IntervalStats(100, 2, 1), "q6": IntervalStats(10, 0)},
        {"q1": IntervalStats(120, 0, 0), "q6": IntervalStats(12, 1)},
        {"q1": IntervalStats(90, 1, 3), "q6": IntervalStats(8, 0)},
    ]
    for t_s, per_query in enumerate(seconds):
        assert pusher.push_interval(t_s, per_query)

    promql = f'crucible_query_executions_total{{run_id="{run_id}"}}'
    samples = _wait_until(
        prometheus_servers, promql, lambda s: _by_label(s, "query") == {"q1": 310, "q6": 30}
    )

    assert _by_label(samples, "query") == {"q1": 310.0, "q6": 30.0}
    labels = next(s["metric"] for s in samples if s["metric"]["query"] == "q1")
    assert labels["run_id"] == run_id
    assert labels["plan"] == PLAN
    assert labels["shard"] == "1"
    assert labels["sut"] == SUT
    assert labels["job"] == "crucible"
    errors = prometheus_servers.wait_for(f'crucible_query_errors_total{{run_id="{run_id}"}}')
    assert _by_label(errors, "query") == {"q1": 3.0, "q6": 1.0}
    dropped = prometheus_servers.wait_for(f'crucible_query_dropped_total{{run_id="{run_id}"}}')
    assert _by_label(dropped, "query") == {"q1": 4.0, "q6": 0.0}
    assert pusher.failures == []


def test_service_histogram_buckets_count_recorded_times(
    prometheus_servers: PrometheusServers,
) -> None:
    run_id = _run_id()
    pusher = _pusher(prometheus_servers, run_id)
    first = _histogram([500, 500, 3_000, 30_000])
    second = _histogram([500, 3_000, 2_000_000, 20_000_000])
    pusher.push_interval(0, {"q1": IntervalStats(4, 0, service_histogram=first)})
    pusher.push_interval(1, {"q1": IntervalStats(5, 1, service_histogram=second)})

    promql = f'crucible_query_service_seconds_count{{run_id="{run_id}"}}'
    count = _wait_until(prometheus_servers, promql, lambda s: _by_label(s, "query") == {"q1": 8})
    assert _by_label(count, "query") == {"q1": 8.0}
    bucket_samples = prometheus_servers.query(
        f'crucible_query_service_seconds_bucket{{run_id="{run_id}",query="q1"}}'
    )
    # The Pushgateway may rewrite `le` ("1.0" becomes "1"), so compare the bounds as numbers.
    buckets = {float(le): count for le, count in _by_label(bucket_samples, "le").items()}
    assert buckets == {
        0.001: 3, 0.0025: 3, 0.005: 5, 0.01: 5, 0.025: 5, 0.05: 6, 0.1: 6, 0.25: 6, 0.5: 6,
        1.0: 6, 2.5: 7, 5.0: 7, 10.0: 7, float("inf"): 8,
    }  # fmt: skip
    total_s = float(
        prometheus_servers.query(f'crucible_query_service_seconds_sum{{run_id="{run_id}"}}')[0][
            "value"
        ][1]
    )
    assert total_s == pytest.approx(22.0375, rel=1e-3)


def _result(run_id: str) -> Result:
    q1 = QueryResult(
        name="q1", count=400, errors=4, error_rate=0.01, qps=40.0, p50_ms=1.5, p95_ms=7.25,
        p99_ms=12.0,
    )  # fmt: skip
    q6 = QueryResult(name="q6", count=100, errors=0, error_rate=0.0, qps=10.0)
    total = QueryResult(
        name="total", count=500, errors=4, error_rate=0.008, qps=50.0, p50_ms=1.6, p95_ms=7.5,
        p99_ms=12.5,
    )  # fmt: skip
    return Result(
        run_id=run_id,
        plan=PLAN,
        plan_source="plans/tpch_smoke.yaml",
        plan_sha256="0" * 64,
        plan_text="",
        sut=SutRecord(type="postgresql", host="127.0.0.1", port=5432, database="tpch", key=SUT),
        status=RunStatus.COMPLETED,
        verdict=Verdict.FAILED,
        concurrency=4,
        shards=1,
        queries=[q1, q6],
        total=total,
    )


def test_summary_gauges_match_the_result(prometheus_servers: PrometheusServers) -> None:
    run_id = _run_id()
    pusher = _pusher(prometheus_servers, run_id)

    assert pusher.push_summary(_result(run_id))

    p95 = prometheus_servers.wait_for(f'crucible_result_p95_ms{{run_id="{run_id}"}}')
    # q6 had no successful execution to time, so it has no percentile sample at all.
    assert _by_label(p95, "query") == {"q1": 7.25, "total": 7.5}
    assert all(s["metric"]["plan"] == PLAN and s["metric"]["sut"] == SUT for s in p95)
    p50 = prometheus_servers.query(f'crucible_result_p50_ms{{run_id="{run_id}"}}')
    assert _by_label(p50, "query") == {"q1": 1.5, "total": 1.6}
    p99 = prometheus_servers.query(f'crucible_result_p99_ms{{run_id="{run_id}"}}')
    assert _by_label(p99, "query") == {"q1": 12.0, "total": 12.5}
    qps = prometheus_servers.query(f'crucible_result_qps{{run_id="{run_id}"}}')
    assert _by_label(qps, "query") == {"q1": 40.0, "q6": 10.0, "total": 50.0}
    error_rate = prometheus_servers.query(f'crucible_result_error_rate{{run_id="{run_id}"}}')
    assert _by_label(error_rate, "query") == {"q1": 0.01, "q6": 0.0, "total": 0.008}
    verdict = prometheus_servers.query(f'crucible_result_verdict{{run_id="{run_id}"}}')
    assert _by_label(verdict, "verdict") == {"failed": 1.0}
    assert pusher.failures == []


def test_summary_and_intervals_of_one_run_do_not_replace_each_other(
    prometheus_servers: PrometheusServers,
) -> None:
    run_id = _run_id()
    pusher = _pusher(prometheus_servers, run_id)
    pusher.push_interval(0, {"q1": IntervalStats(7, 0)})
    pusher.push_summary(_result(run_id))

    verdict = prometheus_servers.wait_for(f'crucible_result_verdict{{run_id="{run_id}"}}')
    executions = prometheus_servers.wait_for(
        f'crucible_query_executions_total{{run_id="{run_id}"}}'
    )

    assert _by_label(verdict, "verdict") == {"failed": 1.0}
    assert _by_label(executions, "query") == {"q1": 7.0}


def test_dead_gateway_records_failure_without_raising_or_leaking_credentials() -> None:
    gateway = f"http://crucible:s3cret-pw@127.0.0.1:{free_port()}"
    pusher = PrometheusPusher(gateway, run_id=_run_id(), plan=PLAN, sut=SUT, timeout_s=1.0)

    started = time.monotonic()
    pushed = pusher.push_interval(0, {"q1": IntervalStats(1, 0)})
    summarised = pusher.push_summary(_result(pusher.run_id))

    assert not pushed
    assert not summarised
    assert time.monotonic() - started < 5
    assert len(pusher.failures) == 2
    assert "interval t=0" in pusher.failures[0]
    assert "summary" in pusher.failures[1]
    assert all("refused" in failure.lower() for failure in pusher.failures)
    assert not any("s3cret" in failure for failure in [*pusher.failures, repr(pusher)])


def _run_plan_job(
    name: str, gateway_url: str, postgres: LocalPostgres, database: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:  # fmt: skip
    """Runs a small plan's Dagster job with the Pushgateway setting; returns its stored result."""
    import dagster as dg

    from crucible_dagster.settings import get_settings
    from tests.integration.test_plan_job import execute, stored_result, write_plan

    monkeypatch.setenv("CRUCIBLE_PUSHGATEWAY_URL", gateway_url)
    monkeypatch.setenv("CRUCIBLE_TEST_PG_PASSWORD", PG_PASSWORD)
    get_settings.cache_clear()
    plan = write_plan(tmp_path / "plans", name, port=postgres.port, database=database)
    with dg.instance_for_test() as instance:
        success, run_id = execute(plan, instance)
    assert success
    return stored_result(run_id)


def test_a_plan_run_pushes_its_summary_when_a_pushgateway_is_configured(
    prometheus_servers: PrometheusServers,
    postgres: LocalPostgres,
    pg_database: str,
    crucible_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = _run_plan_job(
        "pushed", prometheus_servers.pushgateway_url, postgres, pg_database, tmp_path, monkeypatch
    )
    assert result["delivery_errors"] == []

    samples = prometheus_servers.wait_for(f'crucible_result_p95_ms{{run_id="{result["run_id"]}"}}')
    by_query = {s["metric"]["query"]: float(s["value"][1]) for s in samples}
    assert set(by_query) == {"nations_per_region", "one_nation", "total"}
    assert by_query["one_nation"] == pytest.approx(result["queries"][1]["p95_ms"])
    assert all(PG_PASSWORD not in str(s["metric"]) for s in samples)


def test_a_dead_pushgateway_is_recorded_in_the_result_and_the_run_still_succeeds(
    postgres: LocalPostgres,
    pg_database: str,
    crucible_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = _run_plan_job("unpushed", dead, postgres, pg_database, tmp_path, monkeypatch)
    assert result["status"] == "completed"
    live, summary = result["delivery_errors"]
    assert live.startswith("live metrics: ") and "refused" in live
    assert "summary" in summary
