"""The result of one run, as stored in `results/<run_id>/result.json` and printed by the CLI."""

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class RunStatus(StrEnum):
    """Where a run is in its life; the last three are final."""

    QUEUED = "queued"
    LEASED = "leased"
    LOADING_FIXTURES = "loading_fixtures"
    RUNNING = "running"
    COLLECTING = "collecting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Verdict(StrEnum):
    """What the measurement says: thresholds met, not met, or the load stopped early."""

    PASSED = "passed"
    FAILED = "failed"
    ABORTED = "aborted"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueryResult(_Model):
    """One query's numbers. `count` includes errors; percentiles cover successful executions."""

    name: str
    workload_id: str | None = None
    count: int
    errors: int
    error_rate: float
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    interrupted: int = 0
    qps: float
    min_ms: float | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    first_error: str | None = None
    histogram: str | None = Field(
        default=None, description="HDR histogram V2, base64; microseconds, 1 µs to 1 h, 3 digits"
    )
    # Open models only: starts that found no free virtual user, starts sent late, and latency
    # timed from the intended start (a stalled SUT counts in full here, not in service time).
    dropped: int = 0
    late: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    latency_histogram: str | None = None


class SutRecord(_Model):
    type: str
    host: str
    port: int
    database: str
    key: str


class WorkloadRecord(_Model):
    workload_id: str
    source: str
    sha256: str


class FixtureLoadRecord(_Model):
    table: str
    fixture: str
    action: str
    rows: int
    seconds: float
    data_version: str


class ShardHealthRecord(_Model):
    """How hard one generator process worked; a busy generator distorts what it measures."""

    shard: int
    cpu_percent: float
    loop_lag_mean_ms: float
    loop_lag_max_ms: float


class ThresholdRecord(_Model):
    """How one threshold fared; `observed` is null when there was nothing to measure."""

    target: str
    threshold: str
    passed: bool
    observed: float | None = None
    abort_on_fail: bool = False


class WindowStats(_Model):
    """One query's numbers over a slice of the measured window (whole seconds)."""

    seconds: int
    count: int
    errors: int
    error_rate: float
    qps: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


class QueryImpact(_Model):
    """What one fault did to one query (or to `total`): its numbers before, during and after
    the fault, and how long after recovery its p99 took to come back to the p99 before."""

    query: str
    before: WindowStats | None = None
    during: WindowStats | None = None
    after: WindowStats | None = None
    # Seconds from the fault's recovery to the first second whose p99 is at most `before.p99_ms`;
    # null when it never came back within the run, or there is nothing to compare.
    time_to_recover_s: float | None = None
    recovered: bool | None = None


class FaultStatus(StrEnum):
    """How one fault went. Only `recover_failed` may have left the fault in place."""

    RECOVERED = "recovered"  # injected, then recovered at the end of its duration
    RECOVERED_EARLY = "recovered_early"  # injected, recovered when the run stopped first
    NOT_INJECTED = "not_injected"  # the load ended (or failed) before its start
    INJECT_FAILED = "inject_failed"
    RECOVER_FAILED = "recover_failed"


class FaultEvent(_Model):
    """One chaos experiment as it happened. Times in seconds count from the start of the load
    (`Result.load_started_at`); the planned ones are the plan's, the others were measured."""

    name: str
    backend: str
    fault_type: str
    target: str
    planned_inject_s: float
    planned_recover_s: float
    injected_at: datetime | None = None
    recovered_at: datetime | None = None
    inject_s: float | None = None
    recover_s: float | None = None
    status: FaultStatus
    inject_status: str | None = None
    recover_status: str | None = None
    error: str | None = None
    impact: list[QueryImpact] = Field(default_factory=list)

    @field_serializer("injected_at", "recovered_at")
    def _serialise_time(self, value: datetime | None) -> str | None:
        return _iso(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class Result(_Model):
    """The merged measurement of a run with its verdict, or why there is none."""

    run_id: str
    dagster_run_id: str | None = None
    plan: str
    plan_source: str
    plan_sha256: str
    plan_text: str
    sut: SutRecord
    engine: str = "native"
    launch: str | None = None
    status: RunStatus
    verdict: Verdict | None = None
    abort_reason: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    duration_s: float | None = None
    concurrency: int
    shards: int
    # `intra_node`: shards as local processes; `inter_node`: as Kubernetes pods.
    scaling_mode: str = "intra_node"
    # The largest delay between the shards' common start instant and a shard actually starting.
    start_skew_s: float | None = None
    workloads: list[WorkloadRecord] = Field(default_factory=list)
    fixtures: list[FixtureLoadRecord] = Field(default_factory=list)
    queries: list[QueryResult] = Field(default_factory=list)
    total: QueryResult | None = None
    thresholds: list[ThresholdRecord] = Field(default_factory=list)
    failed_thresholds: list[str] = Field(default_factory=list)
    load_model: str = "closed"
    warm_up_s: float = 0.0
    # The seed of query choice and parameter values: set it as execution.seed to repeat them.
    seed: int | None = None
    query_choice: str = "random"
    intervals: str | None = Field(
        default=None, description="storage key of the per-second series (NDJSON)"
    )
    chart: str | None = Field(
        default=None, description="storage key of the latency-over-time chart (SVG)"
    )
    report: str | None = Field(default=None, description="storage key of the HTML report")
    shard_health: list[ShardHealthRecord] = Field(default_factory=list)
    generator_bottleneck: str | None = None
    # The instant the load started (t = 0 of the plan's schedule, before any warm-up): chaos
    # times count from it.
    load_started_at: datetime | None = None
    faults: list[FaultEvent] = Field(default_factory=list)
    # What went wrong delivering the result elsewhere (Prometheus); the result itself is kept.
    delivery_errors: list[str] = Field(default_factory=list)

    @field_serializer("started_at", "ended_at", "recorded_at", "load_started_at")
    def _serialise_time(self, value: datetime | None) -> str | None:
        return _iso(value)
