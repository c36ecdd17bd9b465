"""Thresholds: k6-style pass/fail rules per query and in total, and the verdict of a run.

An expression is `<aggregation> <operator> <number>`, as in k6 (`p(95)<200`, `rate<0.01`):

- latency aggregations, in milliseconds over successful executions: `p(N)` (0 < N <= 100),
  `avg`, `med`, `min`, `max`;
- `rate`: errors over finished executions; `qps`: finished executions per second of the load
  window; `count`: finished executions; `dropped`: open-model starts that found no free VU;
- operators `<`, `<=`, `>`, `>=`, `==`, `!=`; whitespace between the parts is allowed.

A threshold passes when its expression holds, so `rate<0.01` fails at 0.01 itself, as in k6.
Rules are attached to a target, a query name or `total` (all queries together). A latency
aggregation on a target without a successful execution fails: no data is not a pass.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hdrh.histogram import HdrHistogram

from crucible_dagster.plan.thresholds import (
    TOTAL,
    Threshold,
    ThresholdSpec,
    parse_threshold,
)
from crucible_dagster.results.model import QueryResult, Verdict

LatencySource = Literal["service", "latency"]
"""Which time latency aggregations read: `service` (send to last row) or `latency` (from the
intended start in open models, so a stall of the SUT counts against it)."""

# The percentiles a QueryResult stores as fields; any other percentile is read from the histogram.
_STORED_PERCENTILES = {
    50.0: "p50_ms",
    90.0: "p90_ms",
    95.0: "p95_ms",
    99.0: "p99_ms",
    99.9: "p999_ms",
}
_STORED_PLAIN = {"avg": "mean_ms", "med": "p50_ms", "min": "min_ms", "max": "max_ms"}


@dataclass(frozen=True)
class ThresholdOutcome:
    """How one threshold fared; `observed` is None when there was nothing to measure."""

    target: str
    expression_text: str
    passed: bool
    observed: float | None
    abort_on_fail: bool = False
    reason: str | None = None

    @property
    def description(self) -> str:
        """E.g. `q01: p(95)<200 (observed 231.4)`."""
        detail = self.reason if self.observed is None else f"observed {_number(self.observed)}"
        return f"{self.target}: {self.expression_text} ({detail})"


Rules = Mapping[str, Sequence[ThresholdSpec]]


def check_targets(rules: Rules, query_names: Sequence[str]) -> list[str]:
    """Problems with the targets of `rules`: every target must be a query name or `total`."""
    known = set(query_names)
    choices = ", ".join([*query_names, TOTAL])
    return [
        f"thresholds name {target!r}, which is not a query of this plan: expected one of {choices}"
        for target in rules
        if target != TOTAL and target not in known
    ]


def evaluate(
    rules: Rules,
    queries: Sequence[QueryResult],
    total: QueryResult,
    latency: LatencySource = "service",
) -> list[ThresholdOutcome]:
    """Every threshold against the final results, in the order of `rules`.

    With `latency="latency"`, latency aggregations read a query's `latency_histogram` (time from
    the intended start, recorded by open models) when the result has one; closed models have no
    intended start, so their service time stands in.
    """
    by_name = {q.name: q for q in queries}
    outcomes = []
    for target, specs in rules.items():
        result = total if target == TOTAL else by_name.get(target)
        for spec in specs:
            outcomes.append(_outcome(target, spec, result, latency))
    return outcomes


def _outcome(
    target: str, spec: ThresholdSpec, result: QueryResult | None, latency: LatencySource
) -> ThresholdOutcome:
    expression = spec.expression
    observed: float | None
    reason: str | None
    if result is None:
        observed, reason = None, f"no query named {target!r} in the results"
    else:
        observed, reason = _observe(expression, result, latency)
    return ThresholdOutcome(
        target=target,
        expression_text=expression.text,
        passed=observed is not None and expression.holds(observed),
        observed=observed,
        abort_on_fail=spec.abort_on_fail,
        reason=reason,
    )


def _observe(
    expression: Threshold, result: QueryResult, latency: LatencySource
) -> tuple[float | None, str | None]:
    match expression.aggregation:
        case "rate":
            if result.count == 0:
                return None, "no finished executions"
            return result.errors / result.count, None
        case "qps":
            return float(result.qps), None
        case "count":
            return float(result.count), None
        case "dropped":
            # Results of closed models have no `dropped` field: nothing can be dropped there.
            return float(getattr(result, "dropped", None) or 0), None
    return _observe_latency(expression, result, latency)


def _observe_latency(
    expression: Threshold, result: QueryResult, latency: LatencySource
) -> tuple[float | None, str | None]:
    if latency == "latency":
        encoded = getattr(result, "latency_histogram", None)
        if encoded is not None:
            return _from_histogram(expression, encoded)

    field = _stored_field(expression)
    if field is not None:
        value = getattr(result, field)
        if value is None:
            return None, "no successful executions"
        return float(value), None
    if result.histogram is None:
        return None, "no successful executions"
    return _from_histogram(expression, result.histogram)


def _stored_field(expression: Threshold) -> str | None:
    if expression.percentile is not None:
        return _STORED_PERCENTILES.get(expression.percentile)
    return _STORED_PLAIN[expression.aggregation]


def _from_histogram(expression: Threshold, encoded: str) -> tuple[float | None, str | None]:
    histogram = HdrHistogram.decode(encoded)
    value_us = _histogram_value_us(expression, histogram)
    if value_us is None:
        return None, "no successful executions"
    return round(value_us / 1000.0, 3), None


def _histogram_value_us(expression: Threshold, histogram: HdrHistogram) -> float | None:
    if histogram.get_total_count() == 0:
        return None
    match expression.aggregation:
        case "p":
            assert expression.percentile is not None
            return float(histogram.get_value_at_percentile(expression.percentile))
        case "med":
            return float(histogram.get_value_at_percentile(50.0))
        case "avg":
            return float(histogram.get_mean_value())
        case "min":
            return float(histogram.get_min_value())
        case "max":
            return float(histogram.get_max_value())
    raise AssertionError(f"not a latency aggregation: {expression.aggregation}")


@dataclass(frozen=True)
class LiveCounts:
    """What a running load knows about one target: cumulative counts since load start.

    `qps` defaults to `count / elapsed_s`; `histogram` (service time, microseconds) is optional
    and lets latency aggregations be checked live.
    """

    count: int
    errors: int
    qps: float | None = None
    dropped: int = 0
    histogram: HdrHistogram | None = None


class AbortWatch:
    """Checks the `abort_on_fail` thresholds while the load runs, as k6's `abortOnFail` does.

    A threshold is first checked once `delay_abort_eval_s` has passed since load start. Only the
    targets present in the snapshot are checked; the engine reports counts and errors summed over
    all queries, so today that is `total` with `rate`, `count`, `qps` and `dropped`. Latency
    aggregations are checked only for targets whose snapshot carries a histogram. A rate with
    nothing finished yet is not a failure. As in k6, a threshold on a growing number such as
    `count>100` fails from the start unless its delay covers the time it needs to get there.
    """

    def __init__(self, rules: Rules) -> None:
        self._watched = [
            (target, spec)
            for target, specs in rules.items()
            for spec in specs
            if spec.abort_on_fail
        ]

    @property
    def active(self) -> bool:
        """Whether any threshold can abort the run at all."""
        return bool(self._watched)

    def check(self, elapsed_s: float, snapshot: Mapping[str, LiveCounts]) -> str | None:
        """The reason to abort now, e.g. "threshold 'rate<0.01' on total crossed after 12s:
        observed 0.034", or None while the load may go on."""
        for target, spec in self._watched:
            counts = snapshot.get(target)
            if counts is None or elapsed_s < spec.delay_abort_eval_s:
                continue
            observed = _observe_live(spec.expression, counts, elapsed_s)
            if observed is None or spec.expression.holds(observed):
                continue
            return (
                f"threshold {spec.expression.text!r} on {target} crossed after "
                f"{_seconds(elapsed_s)}: observed {_number(observed)}"
            )
        return None


def _observe_live(expression: Threshold, counts: LiveCounts, elapsed_s: float) -> float | None:
    match expression.aggregation:
        case "rate":
            return counts.errors / counts.count if counts.count else None
        case "count":
            return float(counts.count)
        case "qps":
            if counts.qps is not None:
                return counts.qps
            return counts.count / elapsed_s if elapsed_s > 0 else None
        case "dropped":
            return float(counts.dropped)
    if counts.histogram is None:
        return None
    value_us = _histogram_value_us(expression, counts.histogram)
    return None if value_us is None else round(value_us / 1000.0, 3)


def verdict(
    outcomes: Sequence[ThresholdOutcome], aborted_reason: str | None
) -> tuple[Verdict, list[str]]:
    """`aborted` when the load was stopped early, else `failed` if any threshold failed, else
    `passed`; with the descriptions of the failed thresholds (also listed when aborted)."""
    failed = [outcome.description for outcome in outcomes if not outcome.passed]
    if aborted_reason is not None:
        return Verdict.ABORTED, failed
    if failed:
        return Verdict.FAILED, failed
    return Verdict.PASSED, []


def from_failure_detection(
    enabled: bool, error_rate_threshold: float, abort_delay_s: float
) -> dict[str, list[ThresholdSpec]]:
    """The original's `failure_detection` as a threshold: `total: rate<x`, aborting on fail.

    The original aborts once the error rate reaches the threshold; k6's `rate<x` fails at x
    itself, so the two agree at the boundary.
    """
    if not enabled:
        return {}
    expression = parse_threshold(f"rate<{error_rate_threshold!r}")
    return {
        TOTAL: [ThresholdSpec(expression, abort_on_fail=True, delay_abort_eval_s=abort_delay_s)]
    }


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _seconds(value_s: float) -> str:
    return f"{value_s:.0f}s" if value_s >= 10 else f"{value_s:.1f}s"
