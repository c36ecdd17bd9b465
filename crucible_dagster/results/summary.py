"""Turns the engine's merged histograms into the numbers of a result."""

from collections.abc import Sequence

from hdrh.histogram import HdrHistogram

from crucible_dagster.engine.histogram import merge
from crucible_dagster.engine.model import Measurement, QueryMeasurement
from crucible_dagster.results.model import QueryResult

_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0, "p999_ms": 99.9}


def _ms(value_us: float) -> float:
    return round(value_us / 1000.0, 3)


def query_result(
    name: str,
    *,
    count: int,
    errors: int,
    errors_by_kind: dict[str, int],
    interrupted: int,
    histogram: HdrHistogram,
    window_s: float,
    workload_id: str | None = None,
    first_error: str | None = None,
    latency_histogram: HdrHistogram | None = None,
    dropped: int = 0,
    late: int = 0,
) -> QueryResult:
    """One query's numbers; QPS counts every finished execution over the load window."""
    successes = histogram.get_total_count()
    latency: dict[str, float | None] = dict.fromkeys(
        ["min_ms", "mean_ms", "max_ms", *_PERCENTILES], None
    )
    if successes:
        latency["min_ms"] = _ms(histogram.get_min_value())
        latency["mean_ms"] = _ms(histogram.get_mean_value())
        latency["max_ms"] = _ms(histogram.get_max_value())
        for key, percentile in _PERCENTILES.items():
            latency[key] = _ms(histogram.get_value_at_percentile(percentile))
    if latency_histogram is not None and latency_histogram.get_total_count() > 0:
        latency["latency_p50_ms"] = _ms(latency_histogram.get_value_at_percentile(50.0))
        latency["latency_p95_ms"] = _ms(latency_histogram.get_value_at_percentile(95.0))
        latency["latency_p99_ms"] = _ms(latency_histogram.get_value_at_percentile(99.0))
        latency["latency_max_ms"] = _ms(latency_histogram.get_max_value())
    return QueryResult(
        name=name,
        workload_id=workload_id,
        count=count,
        errors=errors,
        error_rate=round(errors / count, 6) if count else 0.0,
        errors_by_kind=dict(sorted(errors_by_kind.items())),
        interrupted=interrupted,
        qps=round(count / window_s, 3) if window_s > 0 else 0.0,
        first_error=first_error,
        histogram=histogram.encode().decode("ascii") if successes else None,
        dropped=dropped,
        late=late,
        latency_histogram=_encoded(latency_histogram),
        **latency,
    )


def _encoded(histogram: HdrHistogram | None) -> str | None:
    if histogram is None or histogram.get_total_count() == 0:
        return None
    return histogram.encode().decode("ascii")


def summarise(
    measurement: Measurement, workload_of: dict[str, str] | None = None
) -> tuple[list[QueryResult], QueryResult]:
    """Per-query results in workload order, and the total over all queries."""
    window_s = (measurement.ended_at - measurement.started_at).total_seconds()
    workload_of = workload_of or {}
    queries = [_from_measurement(q, window_s, workload_of.get(q.name)) for q in measurement.queries]
    total = _total(measurement.queries, window_s, measurement.dropped_unassigned)
    return queries, total


def _from_measurement(q: QueryMeasurement, window_s: float, workload_id: str | None) -> QueryResult:
    return query_result(
        q.name,
        count=q.count,
        errors=q.errors,
        errors_by_kind=q.errors_by_kind,
        interrupted=q.interrupted,
        histogram=q.histogram,
        window_s=window_s,
        workload_id=workload_id,
        first_error=q.first_error,
        latency_histogram=q.latency_histogram,
        dropped=q.dropped,
        late=q.late,
    )


def _total(
    queries: Sequence[QueryMeasurement], window_s: float, dropped_unassigned: int = 0
) -> QueryResult:
    merged = merge(q.histogram for q in queries)
    timed = [q.latency_histogram for q in queries if q.latency_histogram is not None]
    merged_latency = merge(timed) if timed else None
    kinds: dict[str, int] = {}
    for q in queries:
        for kind, n in q.errors_by_kind.items():
            kinds[kind] = kinds.get(kind, 0) + n
    return query_result(
        "total",
        count=sum(q.count for q in queries),
        errors=sum(q.errors for q in queries),
        errors_by_kind=kinds,
        interrupted=sum(q.interrupted for q in queries),
        histogram=merged,
        window_s=window_s,
        latency_histogram=merged_latency,
        dropped=sum(q.dropped for q in queries) + dropped_unassigned,
        late=sum(q.late for q in queries),
        # The first query's sample stands for the run, named so a reader knows where it is from.
        first_error=next(
            (f"{q.name}: {q.first_error}" for q in queries if q.first_error is not None), None
        ),
    )
