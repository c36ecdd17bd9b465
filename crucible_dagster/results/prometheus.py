"""Pushes a run's numbers to a Prometheus Pushgateway: per-second counters while it goes, the
summary when it ends.

Interval metrics go to the group `{job, run_id, shard}` and are replaced on every push (the
pusher keeps running totals, so counters stay cumulative); the summary goes to `{job, run_id}`.
A push that fails is recorded in `failures` and never raises: a run does not fail because
Prometheus is down.
"""

import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import basic_auth_handler, default_handler

from crucible_dagster.results.model import QueryResult, Result

# Upper bounds in seconds; +Inf is added when the histogram is exposed.
SERVICE_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

TOTAL_QUERY = "total"

_INTERVAL_LABELS = ("run_id", "plan", "query", "shard", "sut")
_RUN_LABELS = ("run_id", "plan", "shard", "sut")
_SUMMARY_LABELS = ("run_id", "plan", "query", "sut")

_Handler = Callable[..., Callable[[], None]]


@dataclass(frozen=True)
class IntervalStats:
    """One query's second: executions (errors included), errors, dropped starts, and the
    service times of successful executions in microseconds (None when there were none)."""

    count: int
    errors: int
    dropped: int = 0
    service_histogram: HdrHistogram | None = None


@dataclass
class _QueryTotals:
    count: int = 0
    errors: int = 0
    dropped: int = 0
    # Per bucket of SERVICE_BUCKETS_S plus one for +Inf; not cumulative until exposed.
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(SERVICE_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def add(self, stats: IntervalStats) -> None:
        self.count += stats.count
        self.errors += stats.errors
        self.dropped += stats.dropped
        if stats.service_histogram is not None:
            self._add_histogram(stats.service_histogram)

    def _add_histogram(self, histogram: HdrHistogram) -> None:
        for step in histogram.get_recorded_iterator():
            # Limitation: a value is placed by the lowest value its HDR bucket stands for, so a
            # time within the histogram's resolution (0.1 %) above a bucket edge counts below it.
            value_s = histogram.get_lowest_equivalent_value(step.value_iterated_to) / 1e6
            index = _bucket_index(value_s)
            self.bucket_counts[index] += step.count_added_in_this_iter_step
        self.sum_s += histogram.get_mean_value() * histogram.get_total_count() / 1e6


def _bucket_index(value_s: float) -> int:
    for index, bound in enumerate(SERVICE_BUCKETS_S):
        if value_s <= bound:
            return index
    return len(SERVICE_BUCKETS_S)


class _IntervalCollector:
    """Exposes the pusher's running totals as Prometheus metric families."""

    def __init__(self, pusher: "PrometheusPusher") -> None:
        self._pusher = pusher

    def collect(self) -> Iterator[Metric]:
        pusher = self._pusher
        executions = CounterMetricFamily(
            "crucible_query_executions",
            "Executions of a query so far, errors included.",
            labels=_INTERVAL_LABELS,
        )
        errors = CounterMetricFamily(
            "crucible_query_errors", "Failed executions of a query so far.", labels=_INTERVAL_LABELS
        )
        dropped = CounterMetricFamily(
            "crucible_query_dropped",
            "Starts of a query that found no free virtual user (open models).",
            labels=_INTERVAL_LABELS,
        )
        service = HistogramMetricFamily(
            "crucible_query_service_seconds",
            "Service time of successful executions of a query.",
            labels=_INTERVAL_LABELS,
        )
        for query, totals in pusher._totals.items():
            labels = [pusher.run_id, pusher.plan, query, pusher.shard, pusher.sut]
            executions.add_metric(labels, totals.count)
            errors.add_metric(labels, totals.errors)
            dropped.add_metric(labels, totals.dropped)
            service.add_metric(labels, _cumulative_buckets(totals.bucket_counts), totals.sum_s)
        elapsed = GaugeMetricFamily(
            "crucible_run_elapsed_seconds",
            "The last second of the measured window pushed by a shard.",
            labels=_RUN_LABELS,
        )
        if pusher._last_t_s is not None:
            elapsed.add_metric(
                [pusher.run_id, pusher.plan, pusher.shard, pusher.sut], pusher._last_t_s
            )
        yield from (executions, errors, dropped, service, elapsed)


def _cumulative_buckets(bucket_counts: list[int]) -> list[tuple[str, float]]:
    bounds = [*(repr(bound) for bound in SERVICE_BUCKETS_S), "+Inf"]
    buckets = []
    running = 0
    for bound, count in zip(bounds, bucket_counts, strict=True):
        running += count
        buckets.append((bound, float(running)))
    return buckets


class PrometheusPusher:
    """Pushes one run's interval counters and summary gauges to a Pushgateway.

    `sut` must be a label without secrets, such as the SUT identity key
    (`postgresql://127.0.0.1:5432/tpch`). `shard` names the generator pushing the intervals;
    `"all"` when they are already merged across shards. Credentials in `gateway_url`
    (`http://user:pass@host:9091`) are sent as basic auth and kept out of `failures`.
    """

    def __init__(
        self,
        gateway_url: str,
        *,
        run_id: str,
        plan: str,
        sut: str,
        job: str = "crucible",
        shard: int | str = "all",
        timeout_s: float = 5.0,
    ) -> None:
        self.gateway, self._handler = _gateway_and_handler(gateway_url)
        self.run_id = run_id
        self.plan = plan
        self.sut = sut
        self.job = job
        self.shard = str(shard)
        self.timeout_s = timeout_s
        self.failures: list[str] = []
        self._totals: dict[str, _QueryTotals] = {}
        self._last_t_s: int | None = None
        self._lock = threading.Lock()
        self._interval_registry = CollectorRegistry(auto_describe=False)
        self._interval_registry.register(_IntervalCollector(self))

    def __repr__(self) -> str:
        return f"PrometheusPusher(gateway={self.gateway!r}, run_id={self.run_id!r})"

    def push_interval(self, t_s: int, per_query: Mapping[str, IntervalStats]) -> bool:
        """Adds one second's numbers to the running totals and pushes them; False if it failed."""
        with self._lock:
            for query, stats in per_query.items():
                self._totals.setdefault(query, _QueryTotals()).add(stats)
            self._last_t_s = t_s if self._last_t_s is None else max(self._last_t_s, t_s)
            return self._push(
                self._interval_registry,
                {"run_id": self.run_id, "shard": self.shard},
                what=f"interval t={t_s}",
            )

    def push_summary(self, result: Result) -> bool:
        """Pushes the result's percentiles, qps, error rate and verdict; False if it failed."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SummaryCollector(self, result))
        with self._lock:
            return self._push(registry, {"run_id": self.run_id}, what="summary")

    def _push(self, registry: CollectorRegistry, grouping_key: dict[str, str], what: str) -> bool:
        try:
            push_to_gateway(
                self.gateway,
                job=self.job,
                registry=registry,
                grouping_key=grouping_key,
                timeout=self.timeout_s,
                handler=self._handler,
            )
        except Exception as exc:  # a push must never fail the run; the caller reads `failures`
            self.failures.append(f"push of {what} to {self.gateway} failed: {_describe(exc)}")
            return False
        return True


class _SummaryCollector:
    def __init__(self, pusher: PrometheusPusher, result: Result) -> None:
        self._pusher = pusher
        self._result = result

    def collect(self) -> Iterator[Metric]:
        pusher, result = self._pusher, self._result
        help_by_name = {
            "p50_ms": "Median service time of successful executions, in ms.",
            "p95_ms": "95th percentile service time of successful executions, in ms.",
            "p99_ms": "99th percentile service time of successful executions, in ms.",
            "qps": "Executions per second over the measured window.",
            "error_rate": "Failed executions divided by all executions.",
        }
        families = {
            name: GaugeMetricFamily(f"crucible_result_{name}", text, labels=_SUMMARY_LABELS)
            for name, text in help_by_name.items()
        }
        rows: list[tuple[str, QueryResult]] = [(q.name, q) for q in result.queries]
        if result.total is not None:
            rows.append((TOTAL_QUERY, result.total))
        for query, row in rows:
            labels = [pusher.run_id, pusher.plan, query, pusher.sut]
            for name, family in families.items():
                value = getattr(row, name)
                # A query without successful executions has no percentiles: no sample, not 0.
                if value is not None and not math.isnan(value):
                    family.add_metric(labels, float(value))
        verdict = GaugeMetricFamily(
            "crucible_result_verdict",
            "1 for the run's verdict (passed, failed, aborted, or none without a result).",
            labels=("run_id", "plan", "sut", "verdict"),
        )
        verdict_label = result.verdict.value if result.verdict is not None else "none"
        verdict.add_metric([pusher.run_id, pusher.plan, pusher.sut, verdict_label], 1.0)
        yield from (*families.values(), verdict)


def _gateway_and_handler(gateway_url: str) -> tuple[str, _Handler]:
    """Splits credentials off the URL so that they are sent as basic auth and never shown."""
    parts = urllib.parse.urlsplit(gateway_url if "://" in gateway_url else f"http://{gateway_url}")
    if parts.username is None:
        return urllib.parse.urlunsplit(parts), default_handler
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    gateway = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    username = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return gateway, handler


def _describe(exc: BaseException) -> str:
    # urllib wraps the socket error; its reason reads better than the wrapper.
    reason = getattr(exc, "reason", None)
    detail = str(reason) if reason is not None else str(exc)
    return f"{type(exc).__name__}: {detail}"[:300]
