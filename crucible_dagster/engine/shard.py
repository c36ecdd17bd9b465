"""One shard: a child process running its share of the load on one uvloop event loop.

The parent (`runner.run_load`) starts shards with the "spawn" method and talks to them through
one bounded queue (shard to parent) and two events (parent to shards):

1. the shard opens its sessions (closed model: one per virtual user; open models: the
   pre-allocated ones) and prepares every query, then sends `("ready", shard)`; a connection
   failure is sent as `("sut_error", shard, message)`;
2. the parent sets `go` with the agreed wall-clock start instant in `start_at`; each shard
   sleeps until it, so all shards share one load clock;
3. while running, the shard sends cumulative `("progress", shard, completed, errors, active)`
   about every second, dropped when the queue is full (the next one carries the same totals),
   and one `("interval", shard, t, rows)` per second of the measured window, never dropped
   (see `intervals.IntervalRow`);
4. at the end of the schedule, or at once when `halt` is set, it stops and sends
   `("result", ShardResult)` with its histograms encoded; an unexpected crash is sent as
   `("failed", shard, traceback)`.

Timing: `service` runs from sending a query to its last row. In open models `latency` runs
from the start the schedule intended, so time spent waiting for a free session, or for a
stalled generator, counts as well (no coordinated omission). An execution is recorded when it
started (closed model) or was due (open models) inside the measured window, after the warm-up.
"""

import asyncio
import contextlib
import multiprocessing.queues
import os
import queue
import random
import resource
import signal
import threading
import time
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import uvloop

from crucible_dagster.engine import histogram
from crucible_dagster.engine.choice import argument_makers, query_chooser
from crucible_dagster.engine.intervals import IntervalRow
from crucible_dagster.engine.model import EngineQuery, LoadShape, ShardHealth, ShardResult
from crucible_dagster.engine.schedule import arrival_schedule
from crucible_dagster.errors import SutError
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.suts.driver import Execute, driver_for

PROGRESS_INTERVAL_S = 1.0
INTERVAL_NS = 1_000_000_000
# How often the controller looks at `halt`: the delay between a stop request and the cancel.
CONTROL_TICK_S = 0.05
RECONNECT_BACKOFF_S = (0.1, 2.0)
# The server enforces statement_timeout; the client gives up this much later, for a SUT that no
# longer answers at all (a paused process, a dead link) and so cannot time out by itself.
WATCHDOG_MARGIN_S = 5.0
# An open-model start sent this much later than it was due counts as late.
LATE_START_S = 0.05
# The loop-lag ticker sleeps this long and measures how much later than asked it wakes.
LAG_TICK_S = 0.05
# A full queue means the parent is not reading; an interval then waits this long, then is lost.
INTERVAL_PUT_TIMEOUT_S = 2.0

Channel = multiprocessing.queues.Queue


@dataclass(frozen=True)
class ShardSpec:
    """Everything one shard needs, sent to the child process (pickled) when it starts."""

    shard: int
    target: SutTarget
    queries: tuple[EngineQuery, ...]
    vu_starts_s: tuple[float, ...]  # closed model: start offsets of this shard's virtual users
    hold_end_s: float  # load-clock offset at which issuing stops (the schedule's end)
    graceful_stop_s: float
    seed: int | None
    warm_up_s: float = 0.0
    shape: LoadShape | None = None  # open models: the run's shape, for the arrival schedule
    pre_allocated_vus: int = 0  # open models: this shard's share
    max_vus: int = 0  # open models: this shard's share
    query_choice: str = "random"

    @property
    def is_open(self) -> bool:
        return self.shape is not None and self.shape.is_open


# How often a shard checks that the process that started it is still alive.
ORPHAN_CHECK_S = 0.5


def _exit_when_orphaned() -> None:
    """Ends this shard at once if its parent dies (say, SIGKILL): no load without a supervisor."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(ORPHAN_CHECK_S)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def shard_main(
    spec: ShardSpec, channel: Channel, go: Event, halt: Event, start_at: Synchronized
) -> None:
    """Entry point of a shard process."""
    # Ctrl-C reaches the whole process group; the parent decides how the shards stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_orphaned()
    try:
        result = uvloop.run(_Shard(spec, channel, go, halt, start_at).run())
    except SutError as exc:
        channel.put(("sut_error", spec.shard, str(exc)))
        return
    except BaseException:
        channel.put(("failed", spec.shard, traceback.format_exc()))
        return
    channel.put(("result", result))


class _VirtualUser:
    """One connection and its prepared statements; replaced whole when the connection drops."""

    __slots__ = ("conn", "expired", "sent_ns", "statements", "task")

    def __init__(self, conn: Any, statements: list[Execute | None]) -> None:
        self.conn = conn
        self.statements = statements
        self.sent_ns = 0  # perf_counter_ns when the in-flight query was sent; 0 when idle
        self.expired = False  # set by the watchdog just before it cancels the query
        self.task: asyncio.Task[None] | None = None


class _Interval:
    """What one second of the measured window saw, per query; service and latency histograms
    are sparse maps from hdrh's bucket index to a count, which keeps them small to send."""

    __slots__ = ("count", "dropped", "errors", "latency", "service")

    def __init__(self, n: int) -> None:
        self.count = [0] * n
        self.errors = [0] * n
        self.dropped = [0] * n
        self.service: list[dict[int, int]] = [{} for _ in range(n)]
        self.latency: list[dict[int, int]] = [{} for _ in range(n)]

    def rows(self) -> list[IntervalRow]:
        return [
            IntervalRow(c, e, d, s, lat)
            for c, e, d, s, lat in zip(
                self.count, self.errors, self.dropped, self.service, self.latency, strict=True
            )
        ]


class _LagMeter:
    """Wakes every LAG_TICK_S and keeps how late each wake-up was."""

    def __init__(self) -> None:
        self.ticks = 0
        self.total_s = 0.0
        self.max_s = 0.0

    async def run(self) -> None:
        clock = time.perf_counter
        while True:
            asked = clock() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            lag_s = max(clock() - asked, 0.0)
            self.ticks += 1
            self.total_s += lag_s
            self.max_s = max(self.max_s, lag_s)


class _Shard:
    def __init__(
        self, spec: ShardSpec, channel: Channel, go: Event, halt: Event, start_at: Synchronized
    ) -> None:
        self.spec = spec
        self.channel = channel
        self.go = go
        self.halt = halt
        self.start_at = start_at
        self.driver = driver_for(spec.target.identity.sut_type)
        n = self.n = len(spec.queries)
        self.sqls = [q.sql for q in spec.queries]
        self.weights = [q.weight for q in spec.queries]
        self.query_choice = spec.query_choice
        self.recorders = [histogram.LatencyRecorder() for _ in range(n)]
        self.latency_recorders = [histogram.LatencyRecorder() for _ in range(n)]
        self.done = [0] * n  # finished executions in the measured window, errors included
        self.errors = [0] * n
        self.errors_by_kind: list[dict[str, int]] = [{} for _ in range(n)]
        self.interrupted = [0] * n
        self.dropped = [0] * n
        self.late = [0] * n
        self.first_errors: list[str | None] = [None] * n
        self.warm_done = 0  # finished during the warm-up: progress shows them, results do not
        self.warm_errors = 0
        self.issuing = True
        self.zero_ns = 0  # perf_counter_ns of the shared start instant (load clock zero)
        self.measured_ns = 0  # perf_counter_ns where the measured window starts
        self.interval = _Interval(n)
        self.interval_t = 0
        self.interval_end_ns = 0
        self.intervals_lost = 0
        self.active_vus = 0
        self.users: list[_VirtualUser] = []
        self.idle: list[_VirtualUser] = []  # open models: sessions waiting for a start
        self.opening = 0  # open models: sessions being opened on demand
        self.running: set[asyncio.Task[None]] = set()  # open models: executions in flight
        self.lag = _LagMeter()
        self.health: ShardHealth | None = None

    async def run(self) -> ShardResult:
        await self._open_users()
        try:
            self.channel.put(("ready", self.spec.shard))
            start_delay_s = await self._wait_for_start()
            if not self.halt.is_set():
                await self._measure_health(self._drive())
        finally:
            await self._close_users()
        return self._result(start_delay_s)

    async def _open_users(self) -> None:
        wanted = self.spec.pre_allocated_vus if self.spec.is_open else len(self.spec.vu_starts_s)
        opened = await asyncio.gather(
            *(self._open_user() for _ in range(wanted)), return_exceptions=True
        )
        self.users = [u for u in opened if isinstance(u, _VirtualUser)]
        self.idle = list(self.users) if self.spec.is_open else []
        failures = [e for e in opened if isinstance(e, BaseException)]
        if failures:
            await self._close_users()
            first = failures[0]
            if isinstance(first, SutError):
                raise first
            raise SutError(f"cannot open sessions on {self.spec.target.identity.key}: {first}")
        if self.spec.is_open and not self.users:
            # With nothing pre-allocated, still check the SUT answers before load starts.
            probe = await self.driver.connect(self.spec.target)
            await self._close(probe)

    async def _open_user(self) -> _VirtualUser:
        conn = await self.driver.connect(self.spec.target)
        return _VirtualUser(conn, await self._prepare_all(conn))

    async def _prepare_all(self, conn: Any) -> list[Execute | None]:
        statements: list[Execute | None] = []
        for sql in self.sqls:
            try:
                statements.append(await self.driver.prepare(conn, sql))
            except self.driver.rejections:
                # Preflight reports rejected queries; here it is retried at every execution so
                # the failure is counted against the query.
                statements.append(None)
        return statements

    async def _wait_for_start(self) -> float:
        while not (self.go.is_set() or self.halt.is_set()):
            await asyncio.sleep(0.002)
        if self.halt.is_set():
            return 0.0
        # Wall clock for the shared instant, monotonic for everything measured after it.
        wait_s = self.start_at.value - time.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self.zero_ns = time.perf_counter_ns()
        self.measured_ns = self.zero_ns + int(self.spec.warm_up_s * 1e9)
        self.interval_end_ns = self.measured_ns + INTERVAL_NS
        return max(time.time() - self.start_at.value, 0.0)

    async def _measure_health(self, drive: Coroutine[Any, Any, None]) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before_s = usage.ru_utime + usage.ru_stime
        wall_before_s = time.perf_counter()
        ticker = asyncio.create_task(self.lag.run())
        try:
            await drive
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            usage = resource.getrusage(resource.RUSAGE_SELF)
            wall_s = max(time.perf_counter() - wall_before_s, 1e-9)
            cpu_s = usage.ru_utime + usage.ru_stime - cpu_before_s
            ticks = max(self.lag.ticks, 1)
            self.health = ShardHealth(
                shard=self.spec.shard,
                cpu_percent=round(100.0 * cpu_s / wall_s, 1),
                loop_lag_mean_ms=round(1000.0 * self.lag.total_s / ticks, 3),
                loop_lag_max_ms=round(1000.0 * self.lag.max_s, 3),
            )

    async def _drive(self) -> None:
        if self.spec.is_open:
            workers = [asyncio.create_task(self._arrivals())]
        else:
            workers = [
                asyncio.create_task(self._user_loop(i, start_s))
                for i, start_s in enumerate(self.spec.vu_starts_s)
            ]
            for user, task in zip(self.users, workers, strict=True):
                user.task = task
        clock = time.perf_counter_ns
        next_progress = self.zero_ns + int(PROGRESS_INTERVAL_S * 1e9)
        hold_end = self.zero_ns + int(self.spec.hold_end_s * 1e9)
        while clock() < hold_end and not self.halt.is_set():
            await asyncio.sleep(min(CONTROL_TICK_S, max((hold_end - clock()) / 1e9, 0.0)))
            self._expire_stuck_queries()
            now = clock()
            self._rotate(now)
            if now >= next_progress:
                self._send_progress()
                next_progress += int(PROGRESS_INTERVAL_S * 1e9)

        self.issuing = False
        if not self.halt.is_set():
            graceful_end = clock() + int(self.spec.graceful_stop_s * 1e9)
            pending = {t for t in [*workers, *self.running] if not t.done()}
            while pending and clock() < graceful_end and not self.halt.is_set():
                _, pending = await asyncio.wait(pending, timeout=CONTROL_TICK_S)
                self._rotate(clock())
        everything = [*workers, *self.running]
        for task in everything:
            task.cancel()
        outcomes = await asyncio.gather(*everything, return_exceptions=True)
        self._rotate(clock())
        self._send_interval()  # the last, partial second
        self._send_progress()
        crashed = [o for o in outcomes if isinstance(o, Exception)]
        if crashed:
            # Execution errors are counted inside the loops; anything that escaped them is a
            # bug that silently removed load, so the shard reports it as failed.
            raise crashed[0]

    def _rotate(self, now_ns: int) -> None:
        """Sends every finished second of the measured window, empty ones included."""
        while now_ns >= self.interval_end_ns:
            self._send_interval()
            self.interval = _Interval(self.n)
            self.interval_t += 1
            self.interval_end_ns += INTERVAL_NS

    def _send_interval(self) -> None:
        if self.interval_end_ns - INTERVAL_NS > time.perf_counter_ns():
            return  # the measured window has not started yet (warm-up)
        message = ("interval", self.spec.shard, self.interval_t, self.interval.rows())
        try:
            self.channel.put(message, timeout=INTERVAL_PUT_TIMEOUT_S)
        except queue.Full:
            self.intervals_lost += 1

    def _expire_stuck_queries(self) -> None:
        timeout_s = self.spec.target.statement_timeout_s
        if timeout_s <= 0:
            return
        limit_ns = int((timeout_s + WATCHDOG_MARGIN_S) * 1e9)
        now_ns = time.perf_counter_ns()
        for user in self.users:
            sent_ns = user.sent_ns
            if sent_ns and now_ns - sent_ns > limit_ns and user.task is not None:
                user.expired = True
                user.task.cancel()

    async def _user_loop(self, index: int, start_s: float) -> None:
        delay_s = (self.zero_ns + int(start_s * 1e9) - time.perf_counter_ns()) / 1e9
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if not self.issuing:
            return
        user = self.users[index]
        self.active_vus += 1
        try:
            await self._issue(index, user)
        finally:
            self.active_vus -= 1

    async def _issue(self, index: int, user: _VirtualUser) -> None:
        """The closed model's hot loop: pick a query, run it to its last row, record it."""
        seed = self.spec.seed
        choose = query_chooser(self.weights, self.query_choice, _stream(seed, str(index)))
        makers = argument_makers(self.spec.queries, _stream(seed, f"{index}-params"))
        clock = time.perf_counter_ns
        counts = [r.counts for r in self.recorders]
        done = self.done
        mask = histogram.SUB_BUCKET_MASK
        shift = histogram.BUCKET_SHIFT
        half = histogram.HALF_COUNT_MAGNITUDE
        highest = histogram.MAX_TRACKABLE_US
        measured_ns = self.measured_ns
        while self.issuing:
            q = choose()
            statement = user.statements[q]
            make_arguments = makers[q]
            arguments = make_arguments() if make_arguments is not None else ()
            started = user.sent_ns = clock()
            try:
                if statement is None:
                    statement = user.statements[q] = await self.driver.prepare(
                        user.conn, self.sqls[q]
                    )
                await statement(*arguments)
            except asyncio.CancelledError:
                if not await self._cancelled(q, user, started):
                    raise
                continue
            except Exception as exc:
                await self._failed(q, user, exc, started)
                # An error raised before any I/O (an argument the driver cannot encode) never
                # yields: without this the loop would starve the controller and never stop.
                await asyncio.sleep(0)
                continue
            ended = clock()
            user.sent_ns = 0
            if started < measured_ns:
                self.warm_done += 1
                continue
            elapsed_us = (ended - started) // 1000
            if elapsed_us > highest:
                elapsed_us = highest
            bucket = (elapsed_us | mask).bit_length() - shift
            index_ = (bucket << half) + (elapsed_us >> bucket)
            counts[q][index_] += 1
            done[q] += 1
            if ended >= self.interval_end_ns:
                self._rotate(ended)
            interval = self.interval
            interval.count[q] += 1
            service = interval.service[q]
            service[index_] = service.get(index_, 0) + 1

    async def _cancelled(self, q: int, user: _VirtualUser, started_ns: int) -> bool:
        """Handles a cancelled execution; True when the session goes on (a watchdog expiry)."""
        user.sent_ns = 0
        if not (user.expired and self.issuing):
            if started_ns >= self.measured_ns:
                self.interrupted[q] += 1
            return False
        # The watchdog cancelled a query the SUT never answered: a timeout, and the session
        # is no longer trustworthy.
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        user.expired = False
        self._count_error(q, _NoAnswer(self.spec.target.statement_timeout_s), started_ns)
        await self._reconnect(q, user)
        return True

    async def _failed(self, q: int, user: _VirtualUser, exc: Exception, started_ns: int) -> None:
        user.sent_ns = 0
        session_lost = self.driver.session_lost(user.conn, exc)
        # A session that dropped under a query fails it with whatever error asyncpg met first;
        # the cause is the lost connection.
        self._count_error(
            q, _SessionLost(self.driver.describe_error(exc)) if session_lost else exc, started_ns
        )
        if session_lost:
            await self._reconnect(q, user)

    def _count_error(self, q: int, exc: BaseException, started_ns: int) -> None:
        if started_ns < self.measured_ns:
            self.warm_done += 1
            self.warm_errors += 1
            return
        if isinstance(exc, _SessionLost):
            kind, sample = "connection", f"connection lost: {exc}"
        elif isinstance(exc, _NoAnswer):
            kind, sample = "timeout", str(exc)
        else:
            kind, sample = self.driver.classify_error(exc), self.driver.describe_error(exc)
        self.done[q] += 1
        self.errors[q] += 1
        kinds = self.errors_by_kind[q]
        kinds[kind] = kinds.get(kind, 0) + 1
        if self.first_errors[q] is None:
            self.first_errors[q] = sample
        self._rotate(time.perf_counter_ns())
        self.interval.count[q] += 1
        self.interval.errors[q] += 1

    async def _reconnect(self, q: int, user: _VirtualUser) -> None:
        """Opens a new session after a lost one, backing off while the SUT stays unreachable.

        Every failed attempt counts as one more failed execution of the query that was being
        retried, so an unreachable SUT keeps raising the error rate that failure detection reads.
        """
        self.driver.terminate(user.conn)
        backoff_s, backoff_max_s = RECONNECT_BACKOFF_S
        while self.issuing:
            await asyncio.sleep(backoff_s)
            if not self.issuing:
                return
            try:
                conn = await self.driver.connect(self.spec.target)
            except SutError as exc:
                self._count_error(
                    q, _SessionLost(f"reconnect failed: {exc}"), time.perf_counter_ns()
                )
                backoff_s = min(backoff_s * 2, backoff_max_s)
                continue
            user.conn = conn
            user.statements = await self._prepare_all(conn)
            return

    async def _arrivals(self) -> None:
        """The open models' dispatcher: at every due start, hand a query to an idle session."""
        assert self.spec.shape is not None
        shape = self.spec.shape
        schedule = arrival_schedule(shape, self.spec.shard)
        seed = self.spec.seed
        # In a sequence the shards share one global order: this shard's k-th start is the
        # schedule's (shard + k * shards)-th.
        choose = query_chooser(
            self.weights,
            self.query_choice,
            _stream(seed, "arrivals"),
            start=self.spec.shard,
            stride=shape.shards,
        )
        makers = argument_makers(self.spec.queries, _stream(seed, "arrivals-params"))
        clock = time.perf_counter_ns
        zero_ns = self.zero_ns
        while self.issuing:
            due_s = schedule.next_start_s()
            if due_s is None:
                return
            due_ns = zero_ns + int(due_s * 1e9)
            # Limitation: uvloop's timers have millisecond resolution, so above ~1000 starts per
            # second per shard starts leave in small bursts; latency is still timed from each
            # start's own due instant, but a burst can find every session busy and drop starts.
            wait_ns = due_ns - clock()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
                if not self.issuing:
                    return
            # The query and its arguments are chosen at the start, so a dropped start is
            # counted against its query and the stream of statements does not depend on timing.
            q = choose()
            make_arguments = makers[q]
            self._start(q, due_ns, make_arguments() if make_arguments is not None else [])

    def _start(self, q: int, due_ns: int, arguments: list[object]) -> None:
        if self.idle:
            user = self.idle.pop()
            coroutine = self._execute(q, user, due_ns, arguments)
        elif len(self.users) + self.opening < self.spec.max_vus:
            self.opening += 1
            user = None
            coroutine = self._execute_on_new_user(q, due_ns, arguments)
        else:
            if due_ns >= self.measured_ns:
                self.dropped[q] += 1
                self._rotate(time.perf_counter_ns())
                self.interval.dropped[q] += 1
            return
        self.active_vus += 1
        task = asyncio.create_task(coroutine)
        if user is not None:
            user.task = task
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _execute_on_new_user(self, q: int, due_ns: int, arguments: list[object]) -> None:
        """Opens one more session on demand (up to max_vus) and runs the start on it."""
        try:
            user = await self._open_user()
        except SutError as exc:
            self.opening -= 1
            self.active_vus -= 1
            self._count_error(q, _SessionLost(f"opening a session failed: {exc}"), due_ns)
            return
        except BaseException:
            self.opening -= 1
            self.active_vus -= 1
            raise
        self.opening -= 1
        self.users.append(user)
        current = asyncio.current_task()
        user.task = current
        await self._execute(q, user, due_ns, arguments)

    async def _execute(
        self, q: int, user: _VirtualUser, due_ns: int, arguments: list[object]
    ) -> None:
        """One open-model execution; its latency runs from `due_ns`, the intended start."""
        clock = time.perf_counter_ns
        try:
            statement = user.statements[q]
            started = user.sent_ns = clock()
            if started - due_ns > LATE_START_S * 1e9 and due_ns >= self.measured_ns:
                self.late[q] += 1
            try:
                if statement is None:
                    statement = user.statements[q] = await self.driver.prepare(
                        user.conn, self.sqls[q]
                    )
                await statement(*arguments)
            except asyncio.CancelledError:
                if not await self._cancelled(q, user, due_ns):
                    raise
                return
            except Exception as exc:
                await self._failed(q, user, exc, due_ns)
                return
            ended = clock()
            user.sent_ns = 0
            self._record_open(q, started, ended, due_ns)
        finally:
            self.active_vus -= 1
            user.task = None
            self.idle.append(user)

    def _record_open(self, q: int, started_ns: int, ended_ns: int, due_ns: int) -> None:
        if due_ns < self.measured_ns:
            self.warm_done += 1
            return
        service_us = min((ended_ns - started_ns) // 1000, histogram.MAX_TRACKABLE_US)
        # The dispatcher may start an execution a little before its due time; its latency is
        # then its service time, never less.
        latency_us = min((ended_ns - min(due_ns, started_ns)) // 1000, histogram.MAX_TRACKABLE_US)
        service_index = histogram.counts_index(service_us)
        latency_index = histogram.counts_index(latency_us)
        self.recorders[q].counts[service_index] += 1
        self.latency_recorders[q].counts[latency_index] += 1
        self.done[q] += 1
        if ended_ns >= self.interval_end_ns:
            self._rotate(ended_ns)
        interval = self.interval
        interval.count[q] += 1
        service = interval.service[q]
        service[service_index] = service.get(service_index, 0) + 1
        latency = interval.latency[q]
        latency[latency_index] = latency.get(latency_index, 0) + 1

    def _send_progress(self) -> None:
        completed = sum(self.done) + self.warm_done
        errors = sum(self.errors) + self.warm_errors
        message = ("progress", self.spec.shard, completed, errors, self.active_vus)
        with contextlib.suppress(queue.Full):
            self.channel.put_nowait(message)

    async def _close_users(self) -> None:
        closing = [self._close(u.conn) for u in self.users if not self.driver.is_closed(u.conn)]
        await asyncio.gather(*closing, return_exceptions=True)

    async def _close(self, conn: Any) -> None:
        try:
            await asyncio.wait_for(self.driver.close(conn), timeout=1.0)
        except BaseException:
            self.driver.terminate(conn)

    def _result(self, start_delay_s: float) -> ShardResult:
        is_open = self.spec.is_open
        return ShardResult(
            shard=self.spec.shard,
            counts=self.done,
            errors=self.errors,
            errors_by_kind=self.errors_by_kind,
            interrupted=self.interrupted,
            histograms=[histogram.encode(r.to_histogram()) for r in self.recorders],
            first_errors=self.first_errors,
            start_delay_s=start_delay_s,
            latency_histograms=(
                [histogram.encode(r.to_histogram()) for r in self.latency_recorders]
                if is_open
                else None
            ),
            dropped=self.dropped,
            late=self.late,
            health=self.health,
            intervals_lost=self.intervals_lost,
        )


def _stream(seed: int | None, name: str) -> random.Random:
    """One reproducible random stream of a shard; unseeded runs get a fresh one."""
    return random.Random(f"{seed}-{name}" if seed is not None else None)


class _NoAnswer(TimeoutError):
    """A query the SUT did not answer even well past its statement timeout."""

    def __init__(self, statement_timeout_s: float) -> None:
        super().__init__(
            f"no answer within {statement_timeout_s + WATCHDOG_MARGIN_S:g}s "
            f"(statement timeout {statement_timeout_s:g}s plus {WATCHDOG_MARGIN_S:g}s)"
        )


class _SessionLost(ConnectionError):
    """An execution that failed because the session was gone; always of kind "connection"."""
