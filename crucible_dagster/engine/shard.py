"""One shard: a child process running its share of the virtual users on one uvloop event loop.

The parent (`runner.run_load`) starts shards with the "spawn" method and talks to them through
one bounded queue (shard to parent) and two events (parent to shards):

1. every virtual user opens its own connection and prepares every query, then the shard sends
   `("ready", shard)`; a connection failure is sent as `("sut_error", shard, message)`;
2. the parent sets `go` with the agreed wall-clock start instant in `start_at`; each shard
   sleeps until it, so all shards share one load clock;
3. while running, the shard sends cumulative `("progress", shard, completed, errors, active)`
   about every second, dropped when the queue is full (the next one carries the same totals);
4. at the end of the hold, or at once when `halt` is set, it stops and sends
   `("result", ShardResult)` with its histograms encoded; an unexpected crash is sent as
   `("failed", shard, traceback)`.

Per-interval histograms are not kept yet. The design for them: every second the shard swaps in
fresh per-query recorders and sends the finished interval's counts through the same queue.
"""

import asyncio
import contextlib
import multiprocessing.queues
import queue
import random
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import asyncpg
import uvloop

from crucible_dagster.engine import histogram
from crucible_dagster.engine.model import EngineQuery, ShardResult
from crucible_dagster.errors import SutError
from crucible_dagster.suts import postgresql
from crucible_dagster.suts.base import SutTarget

PROGRESS_INTERVAL_S = 1.0
# How often the controller looks at `halt`: the delay between a stop request and the cancel.
CONTROL_TICK_S = 0.05
RECONNECT_BACKOFF_S = (0.1, 2.0)
# The server enforces statement_timeout; the client gives up this much later, for a SUT that no
# longer answers at all (a paused process, a dead link) and so cannot time out by itself.
WATCHDOG_MARGIN_S = 5.0

Channel = multiprocessing.queues.Queue


@dataclass(frozen=True)
class ShardSpec:
    """Everything one shard needs, sent to the child process (pickled) when it starts."""

    shard: int
    target: SutTarget
    queries: tuple[EngineQuery, ...]
    vu_starts_s: tuple[float, ...]  # start offsets of this shard's virtual users
    hold_end_s: float  # load-clock offset at which issuing stops (ramp_up + hold_for)
    graceful_stop_s: float
    seed: int | None


def shard_main(
    spec: ShardSpec, channel: Channel, go: Event, halt: Event, start_at: Synchronized
) -> None:
    """Entry point of a shard process."""
    # Ctrl-C reaches the whole process group; the parent decides how the shards stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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

    def __init__(self, conn: asyncpg.Connection, statements: list[object | None]) -> None:
        self.conn = conn
        self.statements = statements
        self.sent_ns = 0  # perf_counter_ns when the in-flight query was sent; 0 when idle
        self.expired = False  # set by the watchdog just before it cancels the query
        self.task: asyncio.Task[None] | None = None


class _Shard:
    def __init__(
        self, spec: ShardSpec, channel: Channel, go: Event, halt: Event, start_at: Synchronized
    ) -> None:
        self.spec = spec
        self.channel = channel
        self.go = go
        self.halt = halt
        self.start_at = start_at
        n = len(spec.queries)
        self.sqls = [q.sql for q in spec.queries]
        self.recorders = [histogram.LatencyRecorder() for _ in range(n)]
        self.done = [0] * n  # finished executions, errors included
        self.errors = [0] * n
        self.errors_by_kind: list[dict[str, int]] = [{} for _ in range(n)]
        self.interrupted = [0] * n
        self.first_errors: list[str | None] = [None] * n
        self.issuing = True
        self.clock_zero = 0.0  # monotonic time of the shared start instant
        self.active_vus = 0
        self.users: list[_VirtualUser] = []

    async def run(self) -> ShardResult:
        await self._open_users()
        try:
            self.channel.put(("ready", self.spec.shard))
            start_delay_s = await self._wait_for_start()
            if not self.halt.is_set():
                await self._drive()
        finally:
            await self._close_users()
        return self._result(start_delay_s)

    async def _open_users(self) -> None:
        opened = await asyncio.gather(
            *(self._open_user() for _ in self.spec.vu_starts_s), return_exceptions=True
        )
        self.users = [u for u in opened if isinstance(u, _VirtualUser)]
        failures = [e for e in opened if isinstance(e, BaseException)]
        if failures:
            await self._close_users()
            first = failures[0]
            if isinstance(first, SutError):
                raise first
            raise SutError(f"cannot open sessions on {self.spec.target.identity.key}: {first}")

    async def _open_user(self) -> _VirtualUser:
        conn = await postgresql.connect(self.spec.target)
        return _VirtualUser(conn, await self._prepare_all(conn))

    async def _prepare_all(self, conn: asyncpg.Connection) -> list[object | None]:
        statements: list[object | None] = []
        for sql in self.sqls:
            try:
                statements.append(await conn.prepare(sql))
            except asyncpg.PostgresError:
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
        self.clock_zero = time.monotonic()
        return max(time.time() - self.start_at.value, 0.0)

    async def _drive(self) -> None:
        users = [
            asyncio.create_task(self._user_loop(i, start_s))
            for i, start_s in enumerate(self.spec.vu_starts_s)
        ]
        for user, task in zip(self.users, users, strict=True):
            user.task = task
        next_progress = self.clock_zero + PROGRESS_INTERVAL_S
        hold_end = self.clock_zero + self.spec.hold_end_s
        while time.monotonic() < hold_end and not self.halt.is_set():
            await asyncio.sleep(min(CONTROL_TICK_S, max(hold_end - time.monotonic(), 0.0)))
            self._expire_stuck_queries()
            if time.monotonic() >= next_progress:
                self._send_progress()
                next_progress += PROGRESS_INTERVAL_S

        self.issuing = False
        if not self.halt.is_set():
            graceful_end = time.monotonic() + self.spec.graceful_stop_s
            pending = {t for t in users if not t.done()}
            while pending and time.monotonic() < graceful_end and not self.halt.is_set():
                _, pending = await asyncio.wait(pending, timeout=CONTROL_TICK_S)
        for task in users:
            task.cancel()
        outcomes = await asyncio.gather(*users, return_exceptions=True)
        self._send_progress()
        crashed = [o for o in outcomes if isinstance(o, Exception)]
        if crashed:
            # Execution errors are counted inside the loop; anything that escaped it is a bug
            # that silently removed a virtual user, so the shard reports it as failed.
            raise crashed[0]

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
        delay_s = self.clock_zero + start_s - time.monotonic()
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
        """The hot loop: pick a query, run it to its last row, record the service time."""
        n = len(self.sqls)
        seed = self.spec.seed
        pick = random.Random(f"{seed}-{index}" if seed is not None else None).random
        clock = time.perf_counter_ns
        counts = [r.counts for r in self.recorders]
        done = self.done
        interrupted = self.interrupted
        statements = user.statements
        mask = histogram.SUB_BUCKET_MASK
        shift = histogram.BUCKET_SHIFT
        half = histogram.HALF_COUNT_MAGNITUDE
        highest = histogram.MAX_TRACKABLE_US
        while self.issuing:
            q = int(pick() * n) if n > 1 else 0
            statement = statements[q]
            started = user.sent_ns = clock()
            try:
                if statement is None:
                    statement = statements[q] = await user.conn.prepare(self.sqls[q])
                await statement.fetch()  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                user.sent_ns = 0
                if not (user.expired and self.issuing):
                    interrupted[q] += 1
                    raise
                # The watchdog cancelled a query the SUT never answered: a timeout, and the
                # session is no longer trustworthy.
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                user.expired = False
                done[q] += 1
                self._count_error(q, _NoAnswer(self.spec.target.statement_timeout_s))
                await self._reconnect(q, user)
                statements = user.statements
                continue
            except Exception as exc:
                user.sent_ns = 0
                done[q] += 1
                session_lost = user.conn.is_closed() or isinstance(exc, asyncpg.InternalClientError)
                # A session that dropped under a query fails it with whatever error asyncpg met
                # first; the cause is the lost connection.
                self._count_error(
                    q, _SessionLost(postgresql.describe_error(exc)) if session_lost else exc
                )
                if session_lost:
                    await self._reconnect(q, user)
                    statements = user.statements
                continue
            user.sent_ns = 0
            elapsed_us = (clock() - started) // 1000
            if elapsed_us > highest:
                elapsed_us = highest
            bucket = (elapsed_us | mask).bit_length() - shift
            counts[q][(bucket << half) + (elapsed_us >> bucket)] += 1
            done[q] += 1

    def _count_error(self, q: int, exc: BaseException) -> None:
        if isinstance(exc, _SessionLost):
            kind, sample = "connection", f"connection lost: {exc}"
        elif isinstance(exc, _NoAnswer):
            kind, sample = "timeout", str(exc)
        else:
            kind, sample = postgresql.classify_error(exc), postgresql.describe_error(exc)
        self.errors[q] += 1
        kinds = self.errors_by_kind[q]
        kinds[kind] = kinds.get(kind, 0) + 1
        if self.first_errors[q] is None:
            self.first_errors[q] = sample

    async def _reconnect(self, q: int, user: _VirtualUser) -> None:
        """Opens a new session after a lost one, backing off while the SUT stays unreachable.

        Every failed attempt counts as one more failed execution of the query that was being
        retried, so an unreachable SUT keeps raising the error rate that failure detection reads.
        """
        user.conn.terminate()
        backoff_s, backoff_max_s = RECONNECT_BACKOFF_S
        while self.issuing:
            await asyncio.sleep(backoff_s)
            if not self.issuing:
                return
            try:
                conn = await postgresql.connect(self.spec.target)
            except SutError as exc:
                self.done[q] += 1
                self._count_error(q, _SessionLost(f"reconnect failed: {exc}"))
                backoff_s = min(backoff_s * 2, backoff_max_s)
                continue
            user.conn = conn
            user.statements = await self._prepare_all(conn)
            return

    def _send_progress(self) -> None:
        message = ("progress", self.spec.shard, sum(self.done), sum(self.errors), self.active_vus)
        with contextlib.suppress(queue.Full):
            self.channel.put_nowait(message)

    async def _close_users(self) -> None:
        closing = [self._close(u.conn) for u in self.users if not u.conn.is_closed()]
        await asyncio.gather(*closing, return_exceptions=True)

    @staticmethod
    async def _close(conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), timeout=1.0)
        except BaseException:
            conn.terminate()

    def _result(self, start_delay_s: float) -> ShardResult:
        return ShardResult(
            shard=self.spec.shard,
            counts=self.done,
            errors=self.errors,
            errors_by_kind=self.errors_by_kind,
            interrupted=self.interrupted,
            histograms=[histogram.encode(r.to_histogram()) for r in self.recorders],
            first_errors=self.first_errors,
            start_delay_s=start_delay_s,
        )


class _NoAnswer(TimeoutError):
    """A query the SUT did not answer even well past its statement timeout."""

    def __init__(self, statement_timeout_s: float) -> None:
        super().__init__(
            f"no answer within {statement_timeout_s + WATCHDOG_MARGIN_S:g}s "
            f"(statement timeout {statement_timeout_s:g}s plus {WATCHDOG_MARGIN_S:g}s)"
        )


class _SessionLost(ConnectionError):
    """An execution that failed because the session was gone; always of kind "connection"."""
