"""What the native engine is given (queries, load shape) and what it gives back (measurements)."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from hdrh.histogram import HdrHistogram

from crucible_dagster.params import ParamSpec

CLOSED = "closed"
CONSTANT_ARRIVAL_RATE = "constant_arrival_rate"
RAMPING_ARRIVAL_RATE = "ramping_arrival_rate"
LoadModel = Literal["closed", "constant_arrival_rate", "ramping_arrival_rate"]
MODELS: tuple[str, ...] = (CLOSED, CONSTANT_ARRIVAL_RATE, RAMPING_ARRIVAL_RATE)


@dataclass(frozen=True)
class EngineParam:
    """A query parameter; `values` holds the sample a `column` parameter draws from."""

    name: str
    spec: ParamSpec
    values: tuple[object, ...] | None = None


@dataclass(frozen=True)
class EngineQuery:
    """One workload query: its name, SQL text ready for the SUT's driver (placeholders in its
    syntax), where it was written (file and line), its weight and its parameters."""

    name: str
    sql: str
    source: str
    line: int
    weight: float = 1.0
    params: tuple[EngineParam, ...] = ()
    # Positional drivers take one argument per occurrence: the index into `params` of each
    # argument, so a parameter used twice sends one value twice. None: one argument per param.
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class LoadShape:
    """How load is generated, with k6's meanings.

    `model="closed"` (the default): virtual users ramp linearly from 0 to `concurrency` over
    `ramp_up_s`, then hold for `hold_for_s`; each starts its next query when the last one ended.

    `model="constant_arrival_rate"`: `rate` query starts per `time_unit_s`, for `duration_s`,
    whatever the SUT does. `model="ramping_arrival_rate"`: the rate starts at `start_rate` and
    moves linearly to each stage's target over the stage's duration (`stages` holds
    `(target, duration_s)` pairs). Open models run each start on an idle virtual user (a session);
    `pre_allocated_vus` are opened before load starts, more are opened on demand up to `max_vus`
    (default: `pre_allocated_vus`), and a start that finds all `max_vus` busy is dropped.

    Every model: the first `warm_up_s` of the schedule load the SUT but are not recorded; the
    measured window starts after them. Shards split virtual users by largest remainder and take
    every N-th start of one global arrival schedule, so they never multiply the load. After the
    schedule ends, in-flight queries get `graceful_stop_s` before they are cancelled.

    `query_choice="random"` picks each query by its weight; `"sequence"` runs them in order
    (closed model: every virtual user from the first query; open models: one global order
    across the starts). `seed` makes both choices and parameter values reproducible.
    """

    concurrency: int = 1
    ramp_up_s: float = 0.0
    hold_for_s: float = 0.0
    shards: int = 1
    graceful_stop_s: float = 30.0
    seed: int | None = None
    model: LoadModel = "closed"
    rate: float = 0.0
    time_unit_s: float = 1.0
    duration_s: float = 0.0
    start_rate: float = 0.0
    stages: tuple[tuple[float, float], ...] = ()
    pre_allocated_vus: int = 0
    max_vus: int | None = None
    warm_up_s: float = 0.0
    query_choice: Literal["random", "sequence"] = "random"

    @property
    def is_open(self) -> bool:
        return self.model != CLOSED

    @property
    def planned_s(self) -> float:
        """Length of the schedule from load start, warm-up included, graceful stop excluded."""
        if self.model == CONSTANT_ARRIVAL_RATE:
            return self.duration_s
        if self.model == RAMPING_ARRIVAL_RATE:
            return sum(duration_s for _, duration_s in self.stages)
        return self.ramp_up_s + self.hold_for_s

    @property
    def vus_limit(self) -> int:
        """The most sessions the shape may open: `concurrency`, or `max_vus` in open models."""
        if not self.is_open:
            return self.concurrency
        return self.max_vus if self.max_vus is not None else self.pre_allocated_vus


@dataclass
class QueryMeasurement:
    """The cumulative measurement of one query over the measured window, merged across shards.

    `count` includes errors but not interrupted or dropped executions. `histogram` holds the
    service time (send to last row) of successful executions in microseconds. In open models
    `latency_histogram` holds the time from the intended start to the last row (so queueing
    and a stalled SUT show in full), `dropped` counts starts that found every virtual user busy,
    and `late` counts starts sent more than `LATE_START_S` after they were due.
    """

    name: str
    count: int
    errors: int
    errors_by_kind: dict[str, int]
    interrupted: int
    histogram: HdrHistogram
    first_error: str | None = None
    latency_histogram: HdrHistogram | None = None
    dropped: int = 0
    late: int = 0


@dataclass(frozen=True)
class ShardHealth:
    """How hard one shard process worked: its CPU use and how late its event loop woke."""

    shard: int
    cpu_percent: float
    loop_lag_mean_ms: float
    loop_lag_max_ms: float


@dataclass
class Measurement:
    """The merged measurement of one run of the native engine.

    `started_at` is the start of the measured window: the instant the start barrier released
    the shards (load clock zero) plus the warm-up. `ended_at` is the end of the schedule, or the
    moment the run was aborted or stopped; QPS is computed over that window. `start_skew_s` is
    the largest delay between the release and a shard actually starting.
    `generator_bottleneck` says why the generator, not the SUT, may have limited the load.
    """

    started_at: datetime
    ended_at: datetime
    queries: list[QueryMeasurement]
    shards: int
    interrupted_by_stop: bool = False
    start_skew_s: float = 0.0
    shard_health: list[ShardHealth] = field(default_factory=list)
    generator_bottleneck: str | None = None
    intervals_lost: int = 0
    # Open-model starts dropped before a query was chosen (the k6 engine): total only.
    dropped_unassigned: int = 0

    @property
    def duration_s(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running load, about once per second, summed over all shards.

    `completed` and `errors` include the warm-up; `active_vus` counts busy virtual users.
    """

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
    latency_histograms: list[str] | None = None
    dropped: list[int] | None = None
    late: list[int] | None = None
    health: ShardHealth | None = None
    intervals_lost: int = 0
    # Open-model starts dropped before a query was chosen (the k6 engine's shards).
    dropped_unassigned: int = 0
