"""Live metrics of a running load, pushed by `LivePush` and read back through Prometheus."""

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from crucible_dagster.engine import EngineQuery, LoadShape, Measurement, run_load
from crucible_dagster.engine.histogram import counts_index, new_histogram
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.results.prometheus import IntervalStats, LivePush, PrometheusPusher
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.conftest import PG_PASSWORD
from tests.integration.test_prometheus import prometheus_servers  # noqa: F401 (fixture)
from tests.servers_prometheus import PrometheusServers, free_port

pytestmark = pytest.mark.integration

PLAN = "live_smoke"
QUERIES = [
    EngineQuery("one", "SELECT 1", "workloads/live.sql", 2),
    EngineQuery("series", "SELECT generate_series(1, 50)", "workloads/live.sql", 4),
]

Samples = list[dict[str, Any]]


def _run_id() -> str:
    return f"{PLAN}_20250101-0000_{secrets.token_hex(4)}"


def _target(postgres: LocalPostgres, database: str) -> SutTarget:
    identity = sut_identity("postgresql", postgres.host, postgres.port, database)
    return SutTarget(identity, "postgres", SecretStr(PG_PASSWORD))


def _live(gateway_url: str, run_id: str, shape: LoadShape, target: SutTarget) -> LivePush:
    return LivePush(
        gateway_url, run_id=run_id, plan=PLAN, sut=target.identity.key,
        queries=[q.name for q in QUERIES], shards=shape.shards, latency=shape.is_open,
    )  # fmt: skip


def _values(samples: Samples, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"][label] for label in labels): float(s["value"][1]) for s in samples}


def _wait_until_equal(
    servers: PrometheusServers, promql: str, label: str, expected: dict[str, float]
) -> dict[str, float]:
    # Prometheus scrapes every second, so an early answer may still hold an older push.
    deadline = time.monotonic() + 15
    while True:
        seen = {key[0]: value for key, value in _values(servers.query(promql), label).items()}
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.25)


class _LoadInThread:
    """Runs `run_load` in a thread, so that a test can watch Prometheus while it goes."""

    def __init__(self, target: SutTarget, shape: LoadShape, live: LivePush) -> None:
        self.measurement: Measurement | None = None
        self.error: BaseException | None = None
        self._args = (target, shape, live)
        self.thread = threading.Thread(target=self._work, daemon=True)

    def _work(self) -> None:
        target, shape, live = self._args
        try:
            self.measurement = run_load(target, QUERIES, shape, on_interval=live.add)
        except BaseException as error:
            self.error = error

    def result(self) -> Measurement:
        self.thread.join(60)
        assert self.error is None, self.error
        assert self.measurement is not None
        return self.measurement


def test_counters_of_every_shard_grow_in_prometheus_while_the_load_runs(
    prometheus_servers: PrometheusServers,  # noqa: F811
    postgres: LocalPostgres,
    pg_database: str,
) -> None:
    servers = prometheus_servers
    run_id = _run_id()
    target = _target(postgres, pg_database)
    # Each second reaches Prometheus one push and one scrape (up to a second each) after it
    # ends, so a few seconds of load leave room to see the counters before the end.
    shape = LoadShape(concurrency=4, ramp_up_s=0.0, hold_for_s=6.0, shards=2, seed=5)
    live = _live(servers.pushgateway_url, run_id, shape, target)
    load = _LoadInThread(target, shape, live)
    load.thread.start()

    promql = f'crucible_query_executions_total{{run_id="{run_id}",plan="{PLAN}"}}'
    # What Prometheus holds while the load still runs: every shard's counters, partial totals.
    during: dict[tuple[str, ...], float] = {}
    while load.thread.is_alive() and {shard for shard, _ in during} != {"0", "1"}:
        during = _values(servers.query(promql), "shard", "query")
        time.sleep(0.2)
    seen_while_running = load.thread.is_alive()
    measurement = load.result()
    failures = live.close()

    assert seen_while_running, f"the load ended before Prometheus had both shards: {during}"
    assert set(during) == {(shard, q.name) for shard in ("0", "1") for q in QUERIES}
    assert failures == []
    # The final push carries the full totals: summed over shards they are the measurement,
    # and more than what was there while the load ran.
    expected = {q.name: float(q.count) for q in measurement.queries}
    assert all(count > 0 for count in expected.values())
    summed = _wait_until_equal(servers, f"sum by (query) ({promql})", "query", expected)
    assert summed == expected
    print(f"\nwhile running: {during}; at the end: {summed}")
    for query in expected:
        assert sum(v for (_, q), v in during.items() if q == query) < summed[query]
    served = {q.name: float(q.histogram.get_total_count()) for q in measurement.queries}
    service = f'sum by (query) (crucible_query_service_seconds_count{{run_id="{run_id}"}})'
    assert _wait_until_equal(servers, service, "query", served) == served
    buckets = servers.query(
        f'crucible_query_service_seconds_bucket{{run_id="{run_id}",shard="0",query="one"}}'
    )
    assert {float(s["metric"]["le"]) for s in buckets} >= {0.001, 0.01, 1.0, float("inf")}
    # The closed model has no intended start, so no latency histogram.
    assert servers.query(f'crucible_query_latency_seconds_count{{run_id="{run_id}"}}') == []


def test_open_model_pushes_latency_from_the_intended_start(
    prometheus_servers: PrometheusServers,  # noqa: F811
    postgres: LocalPostgres,
    pg_database: str,
) -> None:
    servers = prometheus_servers
    run_id = _run_id()
    target = _target(postgres, pg_database)
    shape = LoadShape(
        model="constant_arrival_rate", rate=60, duration_s=3.0, pre_allocated_vus=2, max_vus=6,
        shards=2, seed=2,
    )  # fmt: skip
    live = _live(servers.pushgateway_url, run_id, shape, target)

    measurement = run_load(target, QUERIES, shape, on_interval=live.add)
    assert live.close() == []

    expected = {
        q.name: float(q.latency_histogram.get_total_count())  # type: ignore[union-attr]
        for q in measurement.queries
    }
    assert all(count > 0 for count in expected.values())
    latency = f'sum by (query) (crucible_query_latency_seconds_count{{run_id="{run_id}"}})'
    assert _wait_until_equal(servers, latency, "query", expected) == expected
    buckets = servers.query(
        f'crucible_query_latency_seconds_bucket{{run_id="{run_id}",shard="1",query="one"}}'
    )
    assert {float(s["metric"]["le"]) for s in buckets} >= {0.001, 0.1, float("inf")}
    total_s = servers.query(
        f'sum(crucible_query_latency_seconds_sum{{run_id="{run_id}",query="one"}})'
    )
    assert float(total_s[0]["value"][1]) > 0


def test_sparse_counts_give_the_same_buckets_as_a_histogram(
    prometheus_servers: PrometheusServers,  # noqa: F811
) -> None:
    servers = prometheus_servers
    values_us = [80, 999, 1_000, 1_001, 2_600, 40_000, 40_000, 700_000, 3_000_000, 12_000_000]
    histogram = new_histogram()
    counts: dict[int, int] = {}
    for value in values_us:
        histogram.record_value(value)
        counts[counts_index(value)] = counts.get(counts_index(value), 0) + 1
    by_histogram, by_counts = _run_id(), _run_id()
    sut = "postgresql://127.0.0.1:5432/live"
    PrometheusPusher(
        servers.pushgateway_url, run_id=by_histogram, plan=PLAN, sut=sut
    ).push_interval(0, {"q": IntervalStats(len(values_us), 0, service_histogram=histogram)})
    PrometheusPusher(servers.pushgateway_url, run_id=by_counts, plan=PLAN, sut=sut).push_interval(
        0, {"q": IntervalStats(len(values_us), 0, service_counts=counts)}
    )

    def buckets(run_id: str) -> dict[float, float]:
        promql = f'crucible_query_service_seconds_bucket{{run_id="{run_id}"}}'
        samples = servers.wait_for(promql)
        return {float(key[0]): value for key, value in _values(samples, "le").items()}

    assert buckets(by_counts) == buckets(by_histogram)
    assert buckets(by_counts)[0.001] == 3  # 1 001 µs lies above the 1 ms edge
    sums = {
        run_id: float(
            servers.wait_for(f'crucible_query_service_seconds_sum{{run_id="{run_id}"}}')[0][
                "value"
            ][1]
        )
        for run_id in (by_histogram, by_counts)
    }
    assert sums[by_counts] == pytest.approx(sums[by_histogram], rel=1e-9)


@pytest.fixture
def black_hole_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel does) but never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("gateway", ["refused", "black_hole"])
def test_an_unreachable_gateway_neither_slows_the_load_nor_floods_the_failures(
    gateway: str, postgres: LocalPostgres, pg_database: str, black_hole_port: int
) -> None:
    port = free_port() if gateway == "refused" else black_hole_port
    target = _target(postgres, pg_database)
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=3.0, shards=2, graceful_stop_s=5)
    live = _live(f"http://127.0.0.1:{port}", _run_id(), shape, target)

    started = time.monotonic()
    measurement = run_load(target, QUERIES, shape, on_interval=live.add)
    loaded_s = time.monotonic() - started
    failures = live.close(timeout_s=2.0)
    closed_after_end_s = time.time() - measurement.ended_at.timestamp()

    # Spawning shards takes a second or so before the 3 s of load; a blocked loop takes more.
    assert loaded_s < shape.planned_s + 4.0
    assert closed_after_end_s < 3.5
    assert all(q.count > 0 for q in measurement.queries)
    assert len(failures) == 1
    reason = "refused" if gateway == "refused" else "timed out"
    assert reason in failures[0].lower()
    assert failures[0].startswith("live metrics: ")


def test_a_plan_run_pushes_live_metrics_labelled_with_its_plan(
    prometheus_servers: PrometheusServers,  # noqa: F811
    postgres: LocalPostgres,
    pg_database: str,
    crucible_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dagster as dg

    from crucible_dagster.settings import get_settings
    from tests.integration.test_plan_job import execute, stored_result, write_plan

    servers = prometheus_servers
    monkeypatch.setenv("CRUCIBLE_PUSHGATEWAY_URL", servers.pushgateway_url)
    monkeypatch.setenv("CRUCIBLE_TEST_PG_PASSWORD", PG_PASSWORD)
    get_settings.cache_clear()
    plan = write_plan(
        tmp_path / "plans", "live_plan", port=postgres.port, database=pg_database,
        hold_for="3s", extra="  shards: 2\n",
    )  # fmt: skip
    with dg.instance_for_test() as instance:
        success, dagster_run = execute(plan, instance)
    assert success
    result = stored_result(dagster_run)
    run_id = result["run_id"]

    assert result["delivery_errors"] == []
    expected = {q["name"]: float(q["count"]) for q in result["queries"]}
    promql = f'crucible_query_executions_total{{run_id="{run_id}",plan="live_plan"}}'
    summed = _wait_until_equal(servers, f"sum by (query) ({promql})", "query", expected)
    assert summed == expected
    samples = servers.query(promql)
    assert {s["metric"]["shard"] for s in samples} == {"0", "1"}
    assert all(PG_PASSWORD not in str(s["metric"]) for s in samples)
    assert servers.wait_for(f'crucible_result_p95_ms{{run_id="{run_id}",plan="live_plan"}}')
