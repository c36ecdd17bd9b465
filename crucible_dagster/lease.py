"""The SUT lease: the exclusive right of one run to load one SUT.

A lease is a row in Crucible's own `crucible_leases` table (SQLite under `$CRUCIBLE_HOME`
locally, a `crucible` schema in Dagster's PostgreSQL in production). It is taken by one
conditional upsert on a free or expired row, carries a fencing token that grows with every new
holder of the SUT, and stays alive only while its holder heartbeats. A released row is kept (with
no holder) so that the next holder's token is still higher than every earlier one.

Runs that wait for a lease (the CLI) register in `crucible_lease_waiters`, so an inventory shows
who holds each SUT and who waits for it.

Times come from the Python clock in UTC, never from the database. Limitation: every host that
takes leases on the same database must keep its clock within a small fraction of the lease TTL
of the others (NTP does); a host whose clock runs far ahead could take over a live lease.
"""

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from crucible_dagster.errors import LeaseError
from crucible_dagster.suts.base import SutIdentity

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0

# A waiter refreshes its row this often; one not seen for the stale time is taken for dead and
# left out of the inventory.
WAITER_REFRESH_S = 10.0
WAITER_STALE_AFTER_S = 120.0

# Serialises table creation by concurrent first users of one PostgreSQL database.
_PG_DDL_LOCK_KEY = 0x43525543

_SQLITE_BUSY_TIMEOUT_S = 30.0


class LeaseDatabaseError(LeaseError):
    """The lease database could not be reached or refused a statement; the lease may be fine."""


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A UTC timestamp: `timestamptz` in PostgreSQL, fixed-width naive UTC text in SQLite.

    SQLite compares timestamps as text, so every value is stored in the same zone and format.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("lease timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _tables(schema: str | None) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    metadata = sa.MetaData(schema=schema)
    leases = sa.Table(
        "crucible_leases",
        metadata,
        sa.Column("sut_key", sa.String(512), primary_key=True),
        # run_id is NULL when the SUT is free; the row stays so that tokens keep growing.
        sa.Column("run_id", sa.String(128), nullable=True),
        sa.Column("dagster_run_id", sa.String(128), nullable=True),
        sa.Column("plan", sa.String(128), nullable=True),
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("acquired_at", UtcDateTime, nullable=True),
        sa.Column("heartbeat_at", UtcDateTime, nullable=True),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        sa.Index("ix_crucible_leases_run_id", "run_id"),
    )
    waiters = sa.Table(
        "crucible_lease_waiters",
        metadata,
        sa.Column("sut_key", sa.String(512), primary_key=True),
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("plan", sa.String(128), nullable=True),
        sa.Column("since", UtcDateTime, nullable=False),
        sa.Column("seen_at", UtcDateTime, nullable=False),
    )
    # The fault journal: a chaos fault in place, with the recipe that recovers it, written when
    # it is injected and deleted when it is recovered. What a dead run left stays here for the
    # sweeper and the SUT's next run.
    faults = sa.Table(
        "crucible_faults",
        metadata,
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("sut_key", sa.String(512), nullable=False),
        sa.Column("recipe", sa.Text, nullable=False),
        sa.Column("injected_at", UtcDateTime, nullable=False),
        sa.Index("ix_crucible_faults_sut_key", "sut_key"),
    )
    return metadata, leases, waiters, faults


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Lease:
    """A lease this process holds. `expires_at` moves forward with every heartbeat."""

    sut: SutIdentity
    run_id: str
    token: int
    expires_at: datetime
    plan: str
    ttl_s: float = DEFAULT_TTL_S

    def __str__(self) -> str:
        return f"lease on {self.sut.key} (run {self.run_id}, token {self.token})"


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a SUT's lease, as stored."""

    sut_key: str
    run_id: str
    plan: str | None
    dagster_run_id: str | None
    token: int
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or utc_now())

    def describe(self) -> str:
        """`run X (plan Y, Dagster run Z) since T, expires E`, for messages to users."""
        details = [f"plan {self.plan or '?'}"]
        if self.dagster_run_id:
            details.append(f"Dagster run {self.dagster_run_id}")
        return (
            f"run {self.run_id} ({', '.join(details)}) since {_iso(self.acquired_at)}, "
            f"expires {_iso(self.expires_at)}"
        )


@dataclass(frozen=True)
class LeaseWaiter:
    """A run waiting for a SUT's lease."""

    sut_key: str
    run_id: str
    plan: str | None
    since: datetime


@dataclass(frozen=True)
class SutLeaseState:
    """One SUT in the inventory: its holder (None when free) and its waiters, oldest first."""

    sut_key: str
    holder: LeaseHolder | None
    waiters: list[LeaseWaiter] = field(default_factory=list)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class OpenFault:
    """A journalled fault not recovered yet; `recipe` is JSON."""

    run_id: str
    name: str
    sut_key: str
    recipe: str
    injected_at: datetime


class LeaseStore:
    """The lease tables in one database, given as a SQLAlchemy URL (SQLite or PostgreSQL).

    `schema` names a PostgreSQL schema for the tables (created if missing); SQLite has none.
    The tables are created on first use.
    """

    def __init__(self, url: str, schema: str | None = None) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            # The URL is not echoed: it may hold a password.
            raise LeaseError(
                "lease database URL is not a SQLAlchemy URL: expected "
                "sqlite:///<path> or postgresql+<driver>://<user>@<host>:<port>/<database>"
            ) from None
        self.safe_url = parsed.render_as_string(hide_password=True)
        self.schema = schema
        self.backend = parsed.get_backend_name()
        if self.backend not in ("sqlite", "postgresql"):
            raise LeaseError(
                f"lease database {self.safe_url}: expected a sqlite:// or postgresql:// URL"
            )
        if self.backend == "sqlite":
            if schema is not None:
                raise LeaseError(
                    f"lease database {self.safe_url}: a schema ({schema!r}) applies to "
                    "PostgreSQL only; SQLite keeps the tables in the file itself"
                )
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise LeaseError(
                    f"lease database {self.safe_url}: expected a SQLite file, because an "
                    "in-memory database is not shared between connections or processes"
                )
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        self._engine = self._create_engine(parsed)
        self._metadata, self._leases, self._waiters, self._faults = _tables(schema)
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        schema = f", schema={self.schema!r}" if self.schema else ""
        return f"LeaseStore({self.safe_url!r}{schema})"

    def _create_engine(self, parsed: sa.URL) -> Engine:
        if self.backend != "sqlite":
            return sa.create_engine(parsed, pool_pre_ping=True)
        engine = sa.create_engine(
            parsed,
            connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )

        # pysqlite opens transactions lazily and as DEFERRED, so two writers can both read before
        # either writes. BEGIN IMMEDIATE takes the write lock first, making each transaction
        # atomic against other processes on the same file.
        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def close(self) -> None:
        """Closes the pooled connections."""
        self._engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        self._ensure_tables()
        with self._transaction("failed") as conn:
            yield conn

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[Connection]:
        try:
            conn = self._engine.connect()
        except Exception as exc:
            # Drivers differ in what they raise for a refused connection or a wrong password.
            reason = exc.orig if isinstance(exc, DBAPIError) else exc
            raise LeaseDatabaseError(
                f"lease database {self.safe_url}: cannot connect: {reason}"
            ) from exc
        try:
            with conn, conn.begin():
                yield conn
        except DBAPIError as exc:
            raise LeaseDatabaseError(f"lease database {self.safe_url} {doing}: {exc.orig}") from exc

    def _ensure_tables(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with self._transaction("could not create the lease tables") as conn:
                if self.backend == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_DDL_LOCK_KEY)))
                    if self.schema:
                        conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                self._metadata.create_all(conn, checkfirst=True)
            self._ready = True

    def _insert(self) -> Any:
        dialect = sqlite_dialect if self.backend == "sqlite" else pg_dialect
        return dialect.insert(self._leases)

    def try_acquire(
        self,
        sut: SutIdentity,
        run_id: str,
        plan: str,
        dagster_run_id: str | None,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> Lease | None:
        """Takes the lease if it is free or expired; None when another live run holds it.

        The same run taking it again while it holds it keeps its token (idempotent).
        """
        if ttl_s <= 0:
            raise LeaseError(f"lease on {sut.key}: ttl_s must be > 0, got {ttl_s}")
        t = self._leases
        now = utc_now()
        expires_at = now + timedelta(seconds=ttl_s)
        same_run = t.c.run_id == run_id
        statement = (
            self._insert()
            .values(
                sut_key=sut.key,
                run_id=run_id,
                dagster_run_id=dagster_run_id,
                plan=plan,
                token=1,
                acquired_at=now,
                heartbeat_at=now,
                expires_at=expires_at,
            )
            .on_conflict_do_update(
                index_elements=[t.c.sut_key],
                set_={
                    "run_id": run_id,
                    "dagster_run_id": dagster_run_id,
                    "plan": plan,
                    "token": sa.case((same_run, t.c.token), else_=t.c.token + 1),
                    "acquired_at": sa.case((same_run, t.c.acquired_at), else_=now),
                    "heartbeat_at": now,
                    "expires_at": expires_at,
                },
                where=t.c.run_id.is_(None) | (t.c.expires_at <= now) | same_run,
            )
            .returning(t.c.token, t.c.expires_at)
        )
        with self._begin() as conn:
            row = conn.execute(statement).first()
        if row is None:
            return None
        lease = Lease(sut, run_id, int(row.token), row.expires_at, plan, ttl_s)
        log.info(
            "lease taken: sut %s, run %s, plan %s, token %d", sut.key, run_id, plan, lease.token
        )
        return lease

    def acquire(
        self,
        sut: SutIdentity,
        run_id: str,
        plan: str,
        dagster_run_id: str | None,
        *,
        wait: bool,
        timeout_s: float,
        ttl_s: float = DEFAULT_TTL_S,
        on_wait: Callable[[LeaseHolder], None] | None = None,
        max_poll_s: float = 2.0,
    ) -> Lease:
        """Takes the lease, or raises LeaseError naming who holds it.

        With `wait=False` a held lease fails at once. With `wait=True` this run registers as a
        waiter and polls with growing pauses (up to `max_poll_s`) until the lease is free or
        `timeout_s` has passed; `on_wait` is called with the holder when waiting starts and
        whenever the holder changes.
        """
        lease = self.try_acquire(sut, run_id, plan, dagster_run_id, ttl_s)
        if lease is not None:
            return lease
        holder = self.holder(sut)
        if not wait:
            raise LeaseError(
                f"SUT {sut.key} is leased by {_describe(holder)}; run {run_id} (plan {plan}) "
                "does not wait for it. Behind the Dagster queue this should not happen: check "
                "that every launch of this SUT carries the crucible/sut tag."
            )

        deadline = time.monotonic() + timeout_s
        since = utc_now()
        announced: str | None = None
        refreshed_at: float | None = None
        pause_s = min(0.05, max_poll_s)
        try:
            while True:
                if refreshed_at is None or time.monotonic() - refreshed_at >= WAITER_REFRESH_S:
                    self._mark_waiting(sut, run_id, plan, since)
                    refreshed_at = time.monotonic()
                if holder is not None and holder.run_id != announced:
                    announced = holder.run_id
                    log.info(
                        "waiting for the lease on %s: run %s, plan %s; held by %s",
                        sut.key,
                        run_id,
                        plan,
                        holder.describe(),
                    )
                    if on_wait is not None:
                        on_wait(holder)
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise LeaseError(
                        f"gave up waiting for the lease on SUT {sut.key} after {timeout_s:g} s: "
                        f"it is leased by {_describe(holder)}; run {run_id} (plan {plan}) "
                        "can start once that run ends or its lease expires"
                    )
                # Jitter keeps waiters in several processes from polling in lockstep.
                time.sleep(min(remaining_s, pause_s * random.uniform(0.5, 1.0)))
                pause_s = min(pause_s * 1.5, max_poll_s)
                lease = self.try_acquire(sut, run_id, plan, dagster_run_id, ttl_s)
                if lease is not None:
                    return lease
                holder = self.holder(sut)
        finally:
            self._unmark_waiting(sut.key, run_id)

    def _mark_waiting(self, sut: SutIdentity, run_id: str, plan: str, since: datetime) -> None:
        w = self._waiters
        dialect = sqlite_dialect if self.backend == "sqlite" else pg_dialect
        now = utc_now()
        statement = (
            dialect.insert(w)
            .values(sut_key=sut.key, run_id=run_id, plan=plan, since=since, seen_at=now)
            .on_conflict_do_update(index_elements=[w.c.sut_key, w.c.run_id], set_={"seen_at": now})
        )
        with self._begin() as conn:
            conn.execute(statement)

    def _unmark_waiting(self, sut_key: str, run_id: str) -> None:
        w = self._waiters
        with self._begin() as conn:
            conn.execute(sa.delete(w).where(w.c.sut_key == sut_key, w.c.run_id == run_id))

    def heartbeat(self, lease: Lease) -> None:
        """Extends the lease by its TTL; LeaseError when this run and token no longer hold it.

        A lease that expired but was not taken over is extended too: any other holder would
        have raised the token, so nobody loaded the SUT in between.
        """
        t = self._leases
        now = utc_now()
        expires_at = now + timedelta(seconds=lease.ttl_s)
        statement = (
            sa.update(t)
            .where(*self._held_by(lease, live_at=None))
            .values(heartbeat_at=now, expires_at=expires_at)
            .returning(t.c.expires_at)
        )
        with self._begin() as conn:
            row = conn.execute(statement).first()
        if row is None:
            raise self._lost(lease, now)
        lease.expires_at = row.expires_at

    def check(self, lease: Lease) -> None:
        """The fencing check before a write: LeaseError unless this run and token still hold it."""
        now = utc_now()
        statement = sa.select(self._leases.c.token).where(*self._held_by(lease, live_at=now))
        with self._begin() as conn:
            row = conn.execute(statement).first()
        if row is None:
            raise self._lost(lease, now)

    def _held_by(self, lease: Lease, live_at: datetime | None) -> list[sa.ColumnElement[bool]]:
        t = self._leases
        conditions = [
            t.c.sut_key == lease.sut.key,
            t.c.run_id == lease.run_id,
            t.c.token == lease.token,
        ]
        if live_at is not None:
            conditions.append(t.c.expires_at > live_at)
        return conditions

    def _lost(self, lease: Lease, now: datetime) -> LeaseError:
        holder = self.holder(lease.sut)
        if holder is not None and holder.run_id != lease.run_id:
            now_held = f"it is now leased by {holder.describe()}"
        elif holder is not None:
            now_held = f"this run holds it again under token {holder.token}"
        else:
            now_held = "it expired or was released"
        log.warning("lease lost: sut %s, run %s, plan %s", lease.sut.key, lease.run_id, lease.plan)
        return LeaseError(
            f"lease lost on SUT {lease.sut.key} by run {lease.run_id} (plan {lease.plan}, token "
            f"{lease.token}) at {_iso(now)}: {now_held}; the run must stop loading this SUT"
        )

    def release(self, lease: Lease | SutIdentity, run_id: str | None = None) -> bool:
        """Frees the lease if this run still holds it; True if it did. Safe to call again.

        Pass a Lease (freed only under its own token), or a SUT and the run id.
        """
        t = self._leases
        if isinstance(lease, Lease):
            sut, owner = lease.sut, lease.run_id
            conditions = [t.c.sut_key == sut.key, t.c.run_id == owner, t.c.token == lease.token]
        else:
            if run_id is None:
                raise TypeError("release(sut, run_id) needs the run id")
            sut, owner = lease, run_id
            conditions = [t.c.sut_key == sut.key, t.c.run_id == owner]
        with self._begin() as conn:
            released = conn.execute(self._free(conditions)).first() is not None
        if released:
            log.info("lease released: sut %s, run %s", sut.key, owner)
        return released

    def release_run(self, run_id: str) -> list[str]:
        """Frees every lease held by a run and drops its waits; returns the SUT keys freed."""
        t, w = self._leases, self._waiters
        with self._begin() as conn:
            rows = conn.execute(self._free([t.c.run_id == run_id])).all()
            conn.execute(sa.delete(w).where(w.c.run_id == run_id))
        keys = sorted(row.sut_key for row in rows)
        for key in keys:
            log.info("lease released for ended run: sut %s, run %s", key, run_id)
        return keys

    def _free(self, conditions: list[sa.ColumnElement[bool]]) -> sa.Update:
        t = self._leases
        return (
            sa.update(t)
            .where(*conditions)
            .values(run_id=None, dagster_run_id=None, plan=None, expires_at=None)
            .returning(t.c.sut_key)
        )

    def record_fault(self, sut_key: str, run_id: str, name: str, recipe: str) -> None:
        """Journals a fault just injected, with the JSON recipe that recovers it."""
        f = self._faults
        with self._begin() as conn:
            conn.execute(sa.delete(f).where(f.c.run_id == run_id, f.c.name == name))
            conn.execute(sa.insert(f).values(run_id=run_id, name=name, sut_key=sut_key,
                                             recipe=recipe, injected_at=utc_now()))  # fmt: skip

    def fault_recovered(self, run_id: str, name: str) -> None:
        f = self._faults
        with self._begin() as conn:
            conn.execute(sa.delete(f).where(f.c.run_id == run_id, f.c.name == name))

    def open_faults(
        self, *, sut_key: str | None = None, run_id: str | None = None
    ) -> list["OpenFault"]:
        """Faults journalled and not recovered, of one SUT or one run (or all), oldest first."""
        f = self._faults
        query = sa.select(f).order_by(f.c.injected_at)
        if sut_key is not None:
            query = query.where(f.c.sut_key == sut_key)
        if run_id is not None:
            query = query.where(f.c.run_id == run_id)
        with self._begin() as conn:
            rows = conn.execute(query).all()
        return [OpenFault(r.run_id, r.name, r.sut_key, r.recipe, r.injected_at) for r in rows]

    def holder(self, sut: SutIdentity) -> LeaseHolder | None:
        """The live holder of a SUT's lease; None when it is free or its lease has expired."""
        t = self._leases
        statement = sa.select(t).where(
            t.c.sut_key == sut.key, t.c.run_id.is_not(None), t.c.expires_at > utc_now()
        )
        with self._begin() as conn:
            row = conn.execute(statement).first()
        return None if row is None else _holder(row)

    def inventory(self) -> list[SutLeaseState]:
        """Every SUT with a holder or a waiter, by key. An expired holder is still listed."""
        t, w = self._leases, self._waiters
        fresh_after = utc_now() - timedelta(seconds=WAITER_STALE_AFTER_S)
        with self._begin() as conn:
            held = conn.execute(sa.select(t).where(t.c.run_id.is_not(None))).all()
            waiting = conn.execute(
                sa.select(w).where(w.c.seen_at > fresh_after).order_by(w.c.since, w.c.run_id)
            ).all()
        holders = {row.sut_key: _holder(row) for row in held}
        waiters: dict[str, list[LeaseWaiter]] = {}
        for row in waiting:
            waiters.setdefault(row.sut_key, []).append(
                LeaseWaiter(row.sut_key, row.run_id, row.plan, row.since)
            )
        return [
            SutLeaseState(key, holders.get(key), waiters.get(key, []))
            for key in sorted(holders.keys() | waiters.keys())
        ]


def _holder(row: sa.Row[Any]) -> LeaseHolder:
    return LeaseHolder(
        sut_key=row.sut_key,
        run_id=row.run_id,
        plan=row.plan,
        dagster_run_id=row.dagster_run_id,
        token=int(row.token),
        acquired_at=row.acquired_at,
        heartbeat_at=row.heartbeat_at,
        expires_at=row.expires_at,
    )


def _describe(holder: LeaseHolder | None) -> str:
    # The holder can leave between the failed upsert and the read that names it.
    return holder.describe() if holder is not None else "a run that has just released it"


class Heartbeat:
    """Keeps a lease alive from a daemon thread while the `with` block runs.

    The first failure is kept in `lost` (and passed to `on_lost`), so the run can stop its load.
    A database error is retried until the lease would have expired; then the lease is lost.
    """

    def __init__(
        self,
        store: LeaseStore,
        lease: Lease,
        interval_s: float | None = None,
        on_lost: Callable[[LeaseError], None] | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.interval_s = interval_s if interval_s is not None else lease.ttl_s / 3
        if self.interval_s <= 0:
            raise LeaseError(f"{lease}: heartbeat interval must be > 0, got {self.interval_s}")
        self.on_lost = on_lost
        self.lost: LeaseError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-heartbeat-{lease.sut.key}", daemon=True
        )

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops the thread and waits for it; safe to call more than once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def raise_if_lost(self) -> None:
        if self.lost is not None:
            raise self.lost

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.heartbeat(self.lease)
            except LeaseDatabaseError as exc:
                if utc_now() < self.lease.expires_at:
                    # The database failed, not the lease: try again before it expires.
                    log.warning("lease heartbeat failed, retrying: %s", exc)
                    continue
                self._lose(exc)
                return
            except LeaseError as exc:
                self._lose(exc)
                return
            except Exception as exc:
                # A thread that died silently would leave the run loading without a lease.
                self._lose(LeaseError(f"{self.lease}: heartbeat failed unexpectedly: {exc!r}"))
                return

    def _lose(self, exc: LeaseError) -> None:
        self.lost = exc
        if self.on_lost is not None:
            self.on_lost(exc)
