"""`run_load`: starts the shard processes, supervises them, and merges what they measured."""

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnProcess
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from crucible_dagster.engine import histogram
from crucible_dagster.engine.health import generator_bottleneck
from crucible_dagster.engine.intervals import IntervalRow, IntervalWriter
from crucible_dagster.engine.model import (
    EngineQuery,
    LoadShape,
    Measurement,
    Progress,
    QueryMeasurement,
    ShardResult,
)
from crucible_dagster.engine.schedule import (
    shard_seed,
    shard_vus,
    validate_shape,
    vu_start_times,
)
from crucible_dagster.engine.shard import CONTROL_TICK_S, Channel, ShardSpec, shard_main
from crucible_dagster.errors import RunError, SutError
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.suts.driver import driver_for

# What a shard process runs: its spec, the channel to the parent, `go`, `halt`, the start instant.
ShardEntry = Callable[[Any, Any, Any, Any, Any], None]

# Spawning a shard imports asyncpg, uvloop and hdrh before it can connect.
SPAWN_ALLOWANCE_S = 60.0
# The shared start instant lies this far ahead of the release, so every shard sleeps to it.
START_LEAD_S = 0.05
# How long a shard may take to send its result once it should have stopped.
WIND_DOWN_S = 15.0
# How long a finished shard process may stay silent before it counts as lost.
LOST_SHARD_S = 2.0


def run_load(
    target: SutTarget,
    queries: Sequence[EngineQuery],
    shape: LoadShape,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
    intervals_path: Path | None = None,
    on_interval: Callable[[int, int, Sequence[IntervalRow]], None] | None = None,
    entry: ShardEntry = shard_main,
    spec_for: Callable[[int], object] | None = None,
    on_start: Callable[[float], None] | None = None,
) -> Measurement:
    """Runs the load `shape` describes against `target` and returns the merged measurement.

    Starts `shape.shards` shard processes that split the load, releases them together, and
    stops them at the end of the schedule or when `stop` is set (how thresholds abort a run).
    With `intervals_path`, one NDJSON line per second of the measured window is written there
    while the run goes (format in `engine.intervals`). `on_interval(shard, t, rows)` is called
    for every second a shard sends, from the loop that supervises the shards, so it must return
    at once (hand the rows to another thread); an exception from it is counted, not raised. No
    shard process outlives this call. A SUT that cannot be reached raises SutError before any
    load is sent.

    `entry` is what each shard process runs, given `spec_for(shard)` (by default the native
    engine's `ShardSpec`) and the channel, events and start instant described in
    `engine.shard`; another engine plugs in here by speaking the same messages.

    `on_start(instant)` is told the wall-clock instant (time.time()) of t = 0 of the schedule
    once it is agreed, so that work on the same timeline (chaos) can align with it.
    """
    validate_shape(shape)
    if not queries:
        raise RunError("the workload has no queries to run")
    _check_weights(queries, shape)
    driver_for(target.identity.sut_type)  # a SutError naming the supported types otherwise
    run = _Run(
        target,
        tuple(queries),
        shape,
        on_progress,
        stop,
        intervals_path,
        on_interval=on_interval,
        entry=entry,
        spec_for=spec_for,
        on_start=on_start,
    )
    return run.execute()


def _check_weights(queries: Sequence[EngineQuery], shape: LoadShape) -> None:
    weights = [q.weight for q in queries]
    if any(w < 0 for w in weights) or max(weights) <= 0:
        raise RunError(f"query weights must be 0 or more with one above 0, got {weights}")
    if shape.query_choice == "sequence" and any(w != int(w) for w in weights):
        raise RunError(f"in a sequence, weights are whole repeat counts, got {weights}")


@dataclass
class _ShardState:
    completed: int = 0
    errors: int = 0
    active_vus: int = 0
    ready: bool = False
    result: ShardResult | None = None
    silent_since: float | None = None


@dataclass
class _Run:
    target: SutTarget
    queries: tuple[EngineQuery, ...]
    shape: LoadShape
    on_progress: Callable[[Progress], None] | None
    stop: threading.Event | None
    intervals_path: Path | None = None
    on_interval: Callable[[int, int, Sequence[IntervalRow]], None] | None = None
    # Exceptions raised by on_interval: a listener's bug must not stop the load.
    on_interval_errors: int = 0
    entry: "ShardEntry" = shard_main
    spec_for: Callable[[int], object] | None = None
    on_start: Callable[[float], None] | None = None
    states: list[_ShardState] = field(default_factory=list)
    halted_at: float | None = None
    stopped: bool = False

    def execute(self) -> Measurement:
        context = multiprocessing.get_context("spawn")
        shards = self.shape.shards
        self.channel = context.Queue(maxsize=16 * shards + 16)
        self.go = context.Event()
        self.halt = context.Event()
        self.start_at = context.Value("d", 0.0)
        self.states = [_ShardState() for _ in range(shards)]
        self.intervals = (
            IntervalWriter(self.intervals_path, [q.name for q in self.queries], shards)
            if self.intervals_path is not None
            else None
        )
        self.processes: list[SpawnProcess] = [
            context.Process(
                target=self.entry,
                args=(
                    self.spec_for(i) if self.spec_for is not None else self._spec(i),
                    self.channel,
                    self.go,
                    self.halt,
                    self.start_at,
                ),
                name=f"crucible-shard-{i}",
                daemon=True,
            )
            for i in range(shards)
        ]
        try:
            for process in self.processes:
                process.start()
            self._wait_until_ready()
            self.started = time.time() + START_LEAD_S
            self.start_at.value = self.started
            self.go.set()
            if self.on_start is not None:
                self.on_start(self.started)
            self._supervise()
            return self._measurement()
        finally:
            self._shut_down()
            if self.intervals is not None:
                self.intervals.close()

    def _spec(self, shard: int) -> ShardSpec:
        return native_shard_spec(self.target, self.queries, self.shape, shard)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.target.connect_timeout_s + SPAWN_ALLOWANCE_S
        while not all(s.ready for s in self.states):
            if self.stop is not None and self.stop.is_set() and self.halted_at is None:
                self._halt(stopped=True)
            if time.monotonic() > deadline:
                raise RunError(
                    f"the shards did not connect to {self.target.identity.key} within "
                    f"{self.target.connect_timeout_s + SPAWN_ALLOWANCE_S:.0f}s"
                )
            self._receive()
            self._check_alive()

    def _supervise(self) -> None:
        hold_end = self.started + self.shape.planned_s
        deadline = hold_end + self.shape.graceful_stop_s + WIND_DOWN_S
        next_report = self.started + 1.0
        last_completed, last_report = 0, self.started
        while not all(s.result is not None for s in self.states):
            self._receive()
            self._check_alive()
            now = time.time()
            if self.halted_at is None and self.stop is not None and self.stop.is_set():
                self._halt(stopped=True)
            if self.on_progress is not None and now >= next_report:
                completed, errors = self._totals()
                qps = (completed - last_completed) / max(now - last_report, 1e-9)
                self.on_progress(
                    Progress(
                        elapsed_s=max(now - self.started, 0.0),
                        planned_s=self.shape.planned_s,
                        active_vus=sum(s.active_vus for s in self.states),
                        completed=completed,
                        errors=errors,
                        qps_recent=qps,
                    )
                )
                last_completed, last_report = completed, now
                next_report = now + 1.0
            if now > deadline:
                if self.halted_at is None:
                    self._halt(stopped=False)
                if now > deadline + WIND_DOWN_S:
                    missing = [i for i, s in enumerate(self.states) if s.result is None]
                    raise RunError(f"shards {missing} did not report their results in time")

    def _receive(self) -> None:
        """Handles every message waiting, or waits up to one control tick for the first."""
        try:
            message = self.channel.get(timeout=CONTROL_TICK_S)
            while True:
                self._handle(message)
                message = self.channel.get_nowait()
        except queue.Empty:
            return

    def _handle(self, message: tuple[object, ...]) -> None:
        kind = message[0]
        if kind == "interval":
            _, shard, t, rows = message
            if self.intervals is not None:
                self.intervals.add(shard, t, rows)  # type: ignore[arg-type]
            if self.on_interval is not None:
                try:
                    self.on_interval(shard, t, rows)  # type: ignore[arg-type]
                except Exception:
                    self.on_interval_errors += 1
        elif kind == "progress":
            _, shard, completed, errors, active = message
            state = self.states[shard]  # type: ignore[call-overload]
            state.completed, state.errors, state.active_vus = completed, errors, active
        elif kind == "ready":
            self.states[message[1]].ready = True  # type: ignore[call-overload]
        elif kind == "result":
            result = message[1]
            assert isinstance(result, ShardResult)
            state = self.states[result.shard]
            state.result = result
            state.active_vus = 0
            if self.intervals is not None:
                self.intervals.shard_finished(result.shard)
        elif kind == "sut_error":
            raise SutError(str(message[2]))
        elif kind == "failed":
            raise RunError(f"shard {message[1]} failed:\n{message[2]}")

    def _check_alive(self) -> None:
        """Notices a shard process that ended without reporting (killed, crashed)."""
        now = time.monotonic()
        for shard, process in enumerate(self.processes):
            state = self.states[shard]
            if state.result is not None or process.exitcode is None:
                continue
            # Its last messages may still be in the queue; give them a moment.
            if state.silent_since is None:
                state.silent_since = now
            elif now - state.silent_since > LOST_SHARD_S:
                raise RunError(
                    f"shard {shard} exited with code {process.exitcode} before reporting results"
                )

    def _totals(self) -> tuple[int, int]:
        return sum(s.completed for s in self.states), sum(s.errors for s in self.states)

    def _halt(self, *, stopped: bool) -> None:
        self.halted_at = time.time()
        self.stopped = stopped
        self.halt.set()

    def _measurement(self) -> Measurement:
        return merge_shard_results(
            self.queries,
            self.shape,
            [s.result for s in self.states if s.result is not None],
            started=self.started,
            halted_at=self.halted_at,
            stopped=self.stopped,
        )

    def _shut_down(self) -> None:
        stop_shard_processes(self.processes, self.halt, self.go, self.channel)
        for process in self.processes:
            if process.pid is not None and not process.is_alive():
                process.close()


def stop_shard_processes(
    processes: Sequence[BaseProcess], halt: Event, go: Event, channel: Channel
) -> None:
    """Stops shard processes: asked first (`halt`), then terminated, then killed, reading the
    channel meanwhile, since a shard blocked on a full queue can only end if someone reads it;
    the channel is closed at the end."""
    halt.set()
    go.set()
    deadline = time.monotonic() + 5.0
    for process in processes:
        while process.pid is not None and process.is_alive() and time.monotonic() < deadline:
            _drain(channel)
            process.join(timeout=0.05)
    for process in processes:
        if process.pid is not None and process.is_alive():
            process.terminate()
            process.join(timeout=2.0)
        if process.pid is not None and process.is_alive():
            process.kill()
            process.join(timeout=2.0)
    _drain(channel)
    channel.close()
    channel.cancel_join_thread()


def _drain(channel: Channel) -> None:
    while True:
        try:
            channel.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return


def native_shard_spec(
    target: SutTarget, queries: Sequence[EngineQuery], shape: LoadShape, shard: int
) -> ShardSpec:
    """The native engine's spec of shard `shard`: its share of the virtual users or starts."""
    common = {
        "shard": shard,
        "target": target,
        "queries": tuple(queries),
        "hold_end_s": shape.planned_s,
        "graceful_stop_s": shape.graceful_stop_s,
        "seed": shard_seed(shape.seed, shard),
        "warm_up_s": shape.warm_up_s,
        "query_choice": shape.query_choice,
    }
    if not shape.is_open:
        starts = vu_start_times(shape)[shard]
        return ShardSpec(vu_starts_s=tuple(starts), **common)  # type: ignore[arg-type]
    pre, most = shard_vus(shape)[shard]
    return ShardSpec(
        vu_starts_s=(),
        shape=shape,
        pre_allocated_vus=pre,
        max_vus=most,
        **common,  # type: ignore[arg-type]
    )


def merge_shard_results(
    queries: Sequence[EngineQuery],
    shape: LoadShape,
    results: Sequence[ShardResult],
    *,
    started: float,
    halted_at: float | None,
    stopped: bool,
) -> Measurement:
    """Merges what the shards measured into one measurement of the run.

    `started` is the shared start instant (load clock zero, epoch seconds), `halted_at` when the
    run was halted early (None: it ran its schedule), `stopped` whether that halt was a stop
    request. Shards missing from `results` contribute nothing; `shards` is the planned count.
    """
    measured_from = started + shape.warm_up_s
    hold_end = started + shape.planned_s
    ended = hold_end if halted_at is None else min(halted_at, hold_end)
    ended = max(ended, measured_from)
    health = [r.health for r in results if r.health is not None]
    merged = [
        QueryMeasurement(
            name=query.name,
            count=sum(r.counts[q] for r in results),
            errors=sum(r.errors[q] for r in results),
            errors_by_kind=_sum_kinds(r.errors_by_kind[q] for r in results),
            interrupted=sum(r.interrupted[q] for r in results),
            histogram=histogram.merge(histogram.decode(r.histograms[q]) for r in results),
            first_error=next((r.first_errors[q] for r in results if r.first_errors[q]), None),
            latency_histogram=(
                histogram.merge(
                    histogram.decode(r.latency_histograms[q])
                    for r in results
                    if r.latency_histograms is not None
                )
                # The k6 engine's shards time service only.
                if shape.is_open and any(r.latency_histograms is not None for r in results)
                else None
            ),
            dropped=sum(r.dropped[q] for r in results if r.dropped is not None),
            late=sum(r.late[q] for r in results if r.late is not None),
        )
        for q, query in enumerate(queries)
    ]
    return Measurement(
        started_at=datetime.fromtimestamp(measured_from, UTC),
        ended_at=datetime.fromtimestamp(ended, UTC),
        queries=merged,
        shards=shape.shards,
        interrupted_by_stop=stopped,
        start_skew_s=max((r.start_delay_s for r in results), default=0.0),
        shard_health=sorted(health, key=lambda h: h.shard),
        generator_bottleneck=generator_bottleneck(health),
        intervals_lost=sum(r.intervals_lost for r in results),
        dropped_unassigned=sum(r.dropped_unassigned for r in results),
    )


def _sum_kinds(kinds: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in kinds:
        for kind, count in mapping.items():
            total[kind] = total.get(kind, 0) + count
    return dict(sorted(total.items()))
