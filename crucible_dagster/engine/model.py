"""What the native engine is given (queries, load shape) and what it gives back (measurements)."""

from dataclasses import dataclass
from datetime import datetime

from hdrh.histogram import HdrHistogram


@dataclass(frozen=True)
class EngineQuery:
    """One workload query: its name, SQL text, and where it was written (file and line)."""

    name: str
    sql: str
    source: str
    line: int


@dataclass(frozen=True)
class LoadShape:
    """A closed model: virtual users ramp linearly from 0 to `concurrency`, then hold.

    Shards split the virtual users (largest remainder), they never multiply them. After the
    hold, in-flight queries get `graceful_stop_s` to finish before they are cancelled.
    """

    concurrency: int
    ramp_up_s: float
    hold_for_s: float
    shards: int = 1
    graceful_stop_s: float = 30.0
    seed: int | None = None

    @property
    def planned_s(self) -> float:
        return self.ramp_up_s + self.hold_for_s


@dataclass(frozen=True)
class FailureDetection:
    """Abort the run when the cumulative error rate exceeds the threshold after a delay."""

    enabled: bool = True
    error_rate_threshold: float = 0.5
    abort_delay_s: float = 10.0


@dataclass
class QueryMeasurement:
    """The cumulative measurement of one query over the whole run, merged across shards.

    `count` includes errors but not interrupted executions; `histogram` holds the service time
    of successful executions in microseconds.
    """

    name: str
    count: int
    errors: int
    errors_by_kind: dict[str, int]
    interrupted: int
    histogram: HdrHistogram
    first_error: str | None = None


@dataclass
class Measurement:
    """The merged measurement of one run of the native engine.

    `started_at` is the instant the start barrier released the shards (load clock zero) and
    `ended_at` the end of the hold, or the moment the run was aborted or stopped; QPS is computed
    over that window. `start_skew_s` is the largest delay between that instant and a shard
    actually starting.
    """

    started_at: datetime
    ended_at: datetime
    queries: list[QueryMeasurement]
    shards: int
    abort_reason: str | None = None
    interrupted_by_stop: bool = False
    start_skew_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running load, about once per second, summed over all shards."""

    elapsed_s: float
    planned_s: float
    active_vus: int
    completed: int
    errors: int
    qps_recent: float


@dataclass
class ShardResult:
    """What one shard sends back at its end: per-query counters and encoded histograms."""

    shard: int
    counts: list[int]
    errors: list[int]
    errors_by_kind: list[dict[str, int]]
    interrupted: list[int]
    histograms: list[str]  # HDR V2 base64, one per query
    first_errors: list[str | None]
    start_delay_s: float = 0.0
