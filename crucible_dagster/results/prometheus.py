"""Pushes a run's numbers to a Prometheus Pushgateway: per-second counters while it goes, the
summary when it ends.

Interval metrics go to the group `{job, run_id, shard}` and are replaced on every push (the
pusher keeps running totals, so counters stay cumulative); the summary goes to `{job, run_id}`.
A push that fails is recorded in `failures` and never raises: a run does not fail because
Prometheus is down. `LivePush` does the interval pushes of a running load from a background
thread, one pusher per shard, so that a slow or dead gateway never holds up the load.
"""

import functools
import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
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

from crucible_dagster.engine.histogram import new_histogram
from crucible_dagster.engine.intervals import IntervalRow, MergedRow
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
    times of successful executions in microseconds.

    Service times come either as an HdrHistogram or, cheaper, as `service_counts`: a sparse map
    from hdrh counts index (`engine.histogram.counts_index`) to count, as shards send them.
    `latency_counts` (same form) is the latency from the intended start in open models; None
    in the closed model, where no latency histogram is pushed.
    """

    count: int
    errors: int
    dropped: int = 0
    service_histogram: HdrHistogram | None = None
    service_counts: Mapping[int, int] | None = None
    latency_counts: Mapping[int, int] | None = None


@dataclass
class _Buckets:
    # Per bucket of SERVICE_BUCKETS_S plus one for +Inf; not cumulative until exposed.
    counts: list[int] = field(default_factory=lambda: [0] * (len(SERVICE_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def add_histogram(self, histogram: HdrHistogram) -> None:
        for step in histogram.get_recorded_iterator():
            # Limitation: a value is placed by the lowest value its HDR bucket stands for, so a
            # time within the histogram's resolution (0.1 %) above a bucket edge counts below it.
            value_s = histogram.get_lowest_equivalent_value(step.value_iterated_to) / 1e6
            index = _bucket_index(value_s)
            self.counts[index] += step.count_added_in_this_iter_step
        self.sum_s += histogram.get_mean_value() * histogram.get_total_count() / 1e6

    def add_counts(self, counts: Mapping[int, int]) -> None:
        for counts_index, count in counts.items():
            bucket, median_s = _placement(counts_index)
            self.counts[bucket] += count
            self.sum_s += median_s * count


@dataclass
class _QueryTotals:
    count: int = 0
    errors: int = 0
    dropped: int = 0
    service: _Buckets = field(default_factory=_Buckets)
    latency: _Buckets | None = None

    def add(self, stats: IntervalStats) -> None:
        self.count += stats.count
        self.errors += stats.errors
        self.dropped += stats.dropped
        if stats.service_histogram is not None:
            self.service.add_histogram(stats.service_histogram)
        if stats.service_counts is not None:
            self.service.add_counts(stats.service_counts)
        if stats.latency_counts is not None:
            if self.latency is None:
                self.latency = _Buckets()
            self.latency.add_counts(stats.latency_counts)


# Only the layout of this histogram is used: which values a counts index stands for.
_LAYOUT = new_histogram()


@functools.cache
def _placement(counts_index: int) -> tuple[int, float]:
    """The Prometheus bucket an hdrh counts index falls in, and the median value it stands for
    in seconds (what hdrh's own mean uses)."""
    lowest_us = _LAYOUT.get_value_from_index(counts_index)
    highest_us = _LAYOUT.get_highest_equivalent_value(lowest_us)
    median_us = lowest_us + (highest_us - lowest_us + 1) // 2
    # Limitation: as with whole histograms, the bucket is chosen by the lowest value the index
    # stands for, so a time within 0.1 % above a bucket edge counts below it.
    return _bucket_index(lowest_us / 1e6), median_us / 1e6


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
        latency = HistogramMetricFamily(
            "crucible_query_latency_seconds",
            "Latency from the intended start of successful executions of a query (open models).",
            labels=_INTERVAL_LABELS,
        )
        for query, totals in pusher._totals.items():
            labels = [pusher.run_id, pusher.plan, query, pusher.shard, pusher.sut]
            executions.add_metric(labels, totals.count)
            errors.add_metric(labels, totals.errors)
            dropped.add_metric(labels, totals.dropped)
            service.add_metric(
                labels, _cumulative_buckets(totals.service.counts), totals.service.sum_s
            )
            if totals.latency is not None:
                latency.add_metric(
                    labels, _cumulative_buckets(totals.latency.counts), totals.latency.sum_s
                )
        elapsed = GaugeMetricFamily(
            "crucible_run_elapsed_seconds",
            "The last second of the measured window pushed by a shard.",
            labels=_RUN_LABELS,
        )
        if pusher._last_t_s is not None:
            elapsed.add_metric(
                [pusher.run_id, pusher.plan, pusher.shard, pusher.sut], pusher._last_t_s
            )
        yield from (executions, errors, dropped, service, latency, elapsed)


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


class _PendingShard:
    """One shard's seconds not pushed yet, merged: at most one entry per histogram bucket."""

    __slots__ = ("last_t_s", "queries")

    def __init__(self, queries: int) -> None:
        self.last_t_s = -1
        self.queries = [MergedRow() for _ in range(queries)]

    def add(self, t_s: int, rows: Sequence[IntervalRow]) -> None:
        for pending, row in zip(self.queries, rows, strict=True):
            pending.add(row)
        self.last_t_s = max(self.last_t_s, t_s)


# How long the live pusher waits after a shard's second for the other shards' same second.
_GATHER_S = 0.05


class LivePush:
    """Pushes each shard's running totals to a Pushgateway about once a second while a load runs.

    `add` (the engine's `on_interval`) only merges a shard's second into that shard's pending
    totals; a background thread pushes them, so a slow or dead gateway never holds up the load
    and memory stays bounded by the histogram layout however long the gateway stays away. Each
    shard has its own pusher and group (`shard` label = shard number). Failed pushes are kept as
    one entry (the first failure and how many failed), returned by `close`.
    """

    def __init__(
        self,
        gateway_url: str,
        *,
        run_id: str,
        plan: str,
        sut: str,
        queries: Sequence[str],
        shards: int,
        latency: bool = False,
        job: str = "crucible",
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
    ) -> None:
        if shards < 1:
            raise ValueError(f"a load has at least one shard, not {shards}")
        self.queries = tuple(queries)
        self.latency = latency
        self.interval_s = interval_s
        self._pushers = [
            PrometheusPusher(
                gateway_url,
                run_id=run_id,
                plan=plan,
                sut=sut,
                job=job,
                shard=shard,
                timeout_s=timeout_s,
            )
            for shard in range(shards)
        ]
        self.gateway = self._pushers[0].gateway
        self._pending: list[_PendingShard | None] = [None] * shards
        # Shards whose last push failed: pushed again next time even without new seconds.
        self._unsent: set[int] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._arrived = threading.Event()
        self._pushes = 0
        self._failed = 0
        self._first_failure: str | None = None
        self._closed: list[str] | None = None
        self._thread = threading.Thread(target=self._loop, name=f"live-push-{run_id}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"LivePush(gateway={self.gateway!r}, shards={len(self._pushers)})"

    def add(self, shard: int, t_s: int, rows: Sequence[IntervalRow]) -> None:
        """Merges one shard's second (one row per query, in query order); never blocks on I/O."""
        with self._lock:
            if self._closing.is_set():
                return
            pending = self._pending[shard]
            if pending is None:
                pending = self._pending[shard] = _PendingShard(len(self.queries))
            pending.add(t_s, rows)
        self._arrived.set()

    def close(self, timeout_s: float = 2.0) -> list[str]:
        """Pushes what is left, stops the thread (waiting at most `timeout_s`) and returns the
        failures: empty, or one line saying how many pushes failed and why the first did."""
        if self._closed is not None:
            return self._closed
        with self._lock:
            self._closing.set()
        self._arrived.set()
        self._thread.join(timeout_s)
        with self._lock:
            failed, pushes, first = self._failed, self._pushes, self._first_failure
        failures = []
        if first is not None:
            failures.append(
                f"live metrics: {failed} of {failed + pushes} pushes failed, the first: {first}"
            )
        if self._thread.is_alive():
            # The thread is a daemon and stops after its current push; the run need not wait.
            waiting = f"the last push to {self.gateway} did not finish within {timeout_s:g}s"
            failures = [f"{failures[0]}; {waiting}"] if failures else [f"live metrics: {waiting}"]
        self._closed = failures
        return failures

    def _loop(self) -> None:
        while True:
            self._arrived.wait()
            # The shards send the same second at about the same time: let the others arrive.
            if self._closing.wait(_GATHER_S):
                break
            self._arrived.clear()
            self._push_pending()
            # At most one push per interval; seconds arriving meanwhile are merged, not queued.
            if self._closing.wait(self.interval_s):
                break
        self._push_pending()

    def _push_pending(self) -> None:
        # Limitation: shards are pushed one after another from one thread, so with a gateway
        # that answers slowly and many shards the series in Prometheus lag behind the load (the
        # totals stay complete; only their arrival is late).
        with self._lock:
            pending, self._pending = self._pending, [None] * len(self._pushers)
        for shard, pusher in enumerate(self._pushers):
            merged = pending[shard]
            if merged is None and shard not in self._unsent:
                continue
            per_query = {} if merged is None else self._stats(merged)
            t_s = merged.last_t_s if merged is not None else (pusher._last_t_s or 0)
            if pusher.push_interval(t_s, per_query):
                self._unsent.discard(shard)
                with self._lock:
                    self._pushes += 1
                continue
            self._unsent.add(shard)
            text = pusher.failures[-1] if pusher.failures else "unknown failure"
            pusher.failures.clear()
            with self._lock:
                self._failed += 1
                if self._first_failure is None:
                    self._first_failure = text

    def _stats(self, merged: _PendingShard) -> dict[str, IntervalStats]:
        return {
            name: IntervalStats(
                count=query.count,
                errors=query.errors,
                dropped=query.dropped,
                service_counts=query.service,
                latency_counts=query.latency if self.latency else None,
            )
            for name, query in zip(self.queries, merged.queries, strict=True)
        }


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
