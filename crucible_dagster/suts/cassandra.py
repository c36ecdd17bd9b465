"""Cassandra and ScyllaDB through the DataStax Python driver (cassandra-driver).

A CQL session is a pooled, thread-safe object that reconnects by itself, so a shard process
opens one `Cluster` and `Session` per target and every virtual user of the shard shares it:
`connect` hands out a counted handle (`CqlSession`), and the last handle closed shuts the
cluster down. Statements run through `Session.execute_async`; the driver's I/O thread completes
each `ResponseFuture`, and its callbacks hand the rows to the asyncio event loop with
`call_soon_threadsafe`, so no thread blocks per execution. Queries are prepared once per
process and bound with the arguments in `?` order; every page of a result is fetched.
Statements run at the driver's default consistency level (LOCAL_ONE) with token-aware routing;
the plan has no setting for either yet.

Limitation: no CQL server runs on this platform. Statements, error handling, the callback
bridge and connection failures are tested against cassandra-driver without a server (a refused
port, a silent port, stand-in sessions); nothing here has run against Cassandra or ScyllaDB.
"""

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import cassandra
from cassandra import protocol
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement, tuple_factory

from crucible_dagster.errors import Location, Problem, SutError, ValidationError
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.storage import Storage
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.suts.driver import Execute, SutDriver, WorkloadQuery, tls_context
from crucible_dagster.workload import Query

SUT_TYPES = ("cassandra", "scylla")
# Keyspace and table names: a letter, then letters, digits or `_`, 48 characters at most
# (Cassandra's limit). They are always sent double-quoted, so their case is kept as written.
CQL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")

# Opening a session tries the control connection, possibly again with an older protocol
# version, then the first pool; the whole attempt is given this many connect timeouts.
_CONNECT_ATTEMPTS = 3
_WORKER_THREADS = 8

_log = logging.getLogger(__name__)


# -- names and statements -----------------------------------------------------------------------


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a keyspace or table name, or None."""
    if CQL_NAME.match(name):
        return None
    return f"invalid CQL name {name!r}: expected a letter, then up to 47 letters, digits or '_'"


def quote_identifier(name: str) -> str:
    """A CQL identifier in double quotes (case kept), embedded quotes doubled."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}: empty or containing a NUL character")
    return '"' + name.replace('"', '""') + '"'


def render(query: Query) -> tuple[str, tuple[str, ...]]:
    """The query's CQL with one `?` per parameter occurrence, and the names in that order.

    A query without parameters is returned exactly as written.
    """
    return query.render(lambda _number: "?", numbered=False)


# -- sessions -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _SharedSession:
    """One Cluster and Session of this process for one target, and how many handles use it."""

    key: tuple[int, SutTarget]
    ready: concurrent.futures.Future[Session] = field(default_factory=concurrent.futures.Future)
    cluster: Cluster | None = None
    users: int = 0
    # Prepared statements by CQL text, shared by every handle; failures are not kept.
    prepared: dict[str, concurrent.futures.Future[PreparedStatement]] = field(default_factory=dict)


class CqlSession:
    """A virtual user's handle on its process's shared CQL session."""

    __slots__ = ("_shared", "closed")

    def __init__(self, shared: _SharedSession) -> None:
        self._shared = shared
        self.closed = False

    @property
    def session(self) -> Session:
        return self._shared.ready.result()

    def __repr__(self) -> str:
        return f"CqlSession({self._shared.key[1].identity.key}, closed={self.closed})"


_sessions: dict[tuple[int, SutTarget], _SharedSession] = {}
_sessions_lock = threading.Lock()
_workers: concurrent.futures.ThreadPoolExecutor | None = None


def _worker_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for the driver's blocking calls (opening, preparing, shutting down)."""
    global _workers
    with _sessions_lock:
        if _workers is None:
            _workers = concurrent.futures.ThreadPoolExecutor(
                max_workers=_WORKER_THREADS, thread_name_prefix="crucible-cql"
            )
        return _workers


def check_keyspace(target: SutTarget) -> str | None:
    """The target's keyspace (None when it names none); SutError when it is not a CQL name."""
    keyspace = target.database
    if not keyspace:
        return None
    problem = name_problem(keyspace)
    if problem is not None:
        raise SutError(f"{target.identity.key}: keyspace: {problem}")
    return keyspace


def open_cluster(
    target: SutTarget, keyspace: str | None, *, statement_timeout: bool = True
) -> tuple[Cluster, Session]:
    """Opens a Cluster and its Session (blocking); raises the driver's own errors.

    The request timeout is `target.statement_timeout_s` (0, or `statement_timeout=False`,
    means none); rows come as tuples, the cheapest form the driver has.
    """
    timeout_s = target.statement_timeout_s if statement_timeout else 0.0
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        request_timeout=timeout_s if timeout_s > 0 else None,
        row_factory=tuple_factory,
    )
    password = target.password.get_secret_value()
    auth = PlainTextAuthProvider(username=target.user, password=password) if password else None
    cluster = Cluster(
        contact_points=[target.host.strip("[]")],
        port=target.port,
        auth_provider=auth,
        ssl_context=tls_context(target),
        connect_timeout=target.connect_timeout_s,
        control_connection_timeout=target.connect_timeout_s,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        session = cluster.connect(keyspace)
    except BaseException:
        cluster.shutdown()
        raise
    # Session.prepare takes its timeout from here, not from the execution profile.
    session.default_timeout = timeout_s if timeout_s > 0 else None
    return cluster, session


async def connect(target: SutTarget) -> CqlSession:
    """A handle on the process's session for `target`, opening it on first use.

    Failures become a SutError that says why (refused, unknown host, bad credentials, unknown
    keyspace, no answer, TLS) without the password.
    """
    keyspace = check_keyspace(target)
    tls_context(target)  # unreadable TLS files are a SutError before any thread starts
    key = (os.getpid(), target)
    with _sessions_lock:
        shared = _sessions.get(key)
        if shared is None:
            shared = _sessions[key] = _SharedSession(key)
            opening = True
        else:
            opening = False
        shared.users += 1
    if opening:
        _worker_pool().submit(_open_shared, shared, target, keyspace)
    try:
        await asyncio.wait_for(
            asyncio.shield(asyncio.wrap_future(shared.ready)),
            timeout=target.connect_timeout_s * _CONNECT_ATTEMPTS,
        )
    except BaseException as exc:
        cluster = _release(shared)
        if cluster is not None:
            _worker_pool().submit(cluster.shutdown)
        error = connect_error(exc, target)
        if error is None:
            raise
        raise error from None
    return CqlSession(shared)


def _open_shared(shared: _SharedSession, target: SutTarget, keyspace: str | None) -> None:
    shared.ready.set_running_or_notify_cancel()
    try:
        cluster, session = open_cluster(target, keyspace)
    except BaseException as exc:
        with _sessions_lock:
            # A failed attempt is forgotten at once, so the next connect tries again.
            if _sessions.get(shared.key) is shared:
                del _sessions[shared.key]
        shared.ready.set_exception(exc)
        return
    shared.cluster = cluster
    shared.ready.set_result(session)


def _release(shared: _SharedSession) -> Cluster | None:
    """Drops one use of a shared session; returns its cluster when that was the last use and
    the cluster must now be shut down (the caller decides how)."""
    with _sessions_lock:
        shared.users -= 1
        if shared.users > 0:
            return None
        if _sessions.get(shared.key) is shared:
            del _sessions[shared.key]
    if shared.ready.done():
        return shared.cluster
    # Still opening, and nobody waits for it any more: shut it down once it is open.
    shared.ready.add_done_callback(lambda _ready: shared.cluster and shared.cluster.shutdown())
    return None


def is_closed(handle: CqlSession) -> bool:
    if handle.closed:
        return True
    ready = handle._shared.ready
    return not ready.done() or ready.exception() is not None or ready.result().is_shutdown


def session_lost(handle: CqlSession, error: BaseException) -> bool:
    """No host could take the statement, or a connection broke under it: the engine replaces
    the handle after a backoff. The shared session itself keeps reconnecting in the driver."""
    if isinstance(error, NoHostAvailable | ConnectionException):
        return True
    return is_closed(handle)


async def close(handle: CqlSession) -> None:
    cluster = _close_handle(handle)
    if cluster is not None:
        # Shielded: a caller that stops waiting must not cancel the shutdown itself.
        await asyncio.shield(asyncio.wrap_future(_worker_pool().submit(cluster.shutdown)))


def terminate(handle: CqlSession) -> None:
    """Lets go of the handle at once; a last handle's cluster shuts down in a worker thread."""
    cluster = _close_handle(handle)
    if cluster is not None:
        _worker_pool().submit(cluster.shutdown)


def _close_handle(handle: CqlSession) -> Cluster | None:
    if handle.closed:
        return None
    handle.closed = True
    return _release(handle._shared)


def shared_session_count() -> int:
    """How many shared sessions this process holds open (for tests and health checks)."""
    with _sessions_lock:
        return sum(1 for shared in _sessions.values() if shared.key[0] == os.getpid())


# -- statements on a session --------------------------------------------------------------------


class _PageWaiter:
    """Receives a ResponseFuture's pages on the driver's I/O thread and resolves an asyncio
    future per page on the event loop."""

    __slots__ = ("_loop", "page")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.page: asyncio.Future[object] = loop.create_future()

    def on_rows(self, rows: object) -> None:
        self._post(self._settle, rows, None)

    def on_error(self, error: BaseException) -> None:
        self._post(self._settle, None, error)

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        # A closed loop raises RuntimeError: nobody waits for this result any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _settle(self, rows: object, error: BaseException | None) -> None:
        if self.page.done():
            return  # the awaiting task was cancelled
        if error is not None:
            self.page.set_exception(error)
        else:
            self.page.set_result(rows)


async def run_statement(
    session: Any,
    statement: object,
    parameters: Sequence[object] | None = None,
    *,
    keep: list[tuple[object, ...]] | None = None,
) -> int:
    """Runs a statement with `execute_async` and fetches every page; returns the row count.

    Rows are counted and dropped page by page, so a large result costs one page of memory;
    with `keep`, they are appended to it instead (for small results such as state lookups).
    """
    loop = asyncio.get_running_loop()
    waiter = _PageWaiter(loop)
    future: ResponseFuture = session.execute_async(statement, parameters)
    # The callbacks stay registered: the driver calls them again for every page fetched.
    future.add_callbacks(waiter.on_rows, waiter.on_error)
    rows = 0
    while True:
        page = await waiter.page
        if isinstance(page, Sized):
            rows += len(page)
            if keep is not None:
                keep.extend(tuple(row) for row in page)  # type: ignore[attr-defined]
        if not future.has_more_pages:
            return rows
        waiter.page = loop.create_future()
        future.start_fetching_next_page()


async def fetch_rows(
    session: Any, statement: object, parameters: Sequence[object] | None = None
) -> list[tuple[object, ...]]:
    """Every row of a statement's result, as tuples."""
    rows: list[tuple[object, ...]] = []
    await run_statement(session, statement, parameters, keep=rows)
    return rows


def _start_prepare(session: Any, cql: str) -> concurrent.futures.Future[PreparedStatement]:
    """Starts preparing `cql`: with `prepare_async` where the driver has one, else with
    `Session.prepare` in a worker thread (cassandra-driver 3.x prepares synchronously)."""
    prepare_async = getattr(session, "prepare_async", None)
    if prepare_async is None:
        return _worker_pool().submit(session.prepare, cql)
    started = prepare_async(cql)
    if isinstance(started, concurrent.futures.Future):
        return started
    done: concurrent.futures.Future[PreparedStatement] = concurrent.futures.Future()
    done.set_running_or_notify_cancel()
    started.add_callbacks(done.set_result, done.set_exception)
    return done


async def prepare_statement(session: Any, cql: str) -> PreparedStatement:
    """Prepares `cql` on the SUT without blocking the event loop."""
    # Shielded: a waiter that gives up must not cancel work other waiters may share.
    return await asyncio.shield(asyncio.wrap_future(_start_prepare(session, cql)))


async def _shared_prepared(handle: CqlSession, cql: str) -> PreparedStatement:
    """The process's prepared statement for `cql`, prepared once whoever asks first."""
    shared = handle._shared
    with _sessions_lock:
        work = shared.prepared.get(cql)
    if work is None:
        started = _start_prepare(handle.session, cql)
        with _sessions_lock:
            work = shared.prepared.setdefault(cql, started)
        if work is started:
            work.add_done_callback(lambda done: _forget_failure(shared, cql, done))
    return await asyncio.shield(asyncio.wrap_future(work))


def _forget_failure(
    shared: _SharedSession, cql: str, done: concurrent.futures.Future[PreparedStatement]
) -> None:
    if done.exception() is None:
        return
    with _sessions_lock:
        if shared.prepared.get(cql) is done:
            del shared.prepared[cql]


async def prepare(handle: CqlSession, cql: str) -> Execute:
    """An awaitable that binds its arguments to the prepared `cql` and runs it to its last
    page, returning the number of rows."""
    statement = await _shared_prepared(handle, cql)
    session = handle.session

    async def execute(*args: object) -> object:
        return await run_statement(session, statement.bind(args))

    return execute


# The driver logs a traceback for every statement it fails to prepare and for every failed
# control connection, then raises the same error to us; Crucible reports those errors itself.
class _DuplicateErrorFilter(logging.Filter):
    _MESSAGES = ("Error preparing query:", "Control connection failed to connect")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self._MESSAGES))


logging.getLogger("cassandra.cluster").addFilter(_DuplicateErrorFilter())


# -- errors -------------------------------------------------------------------------------------

# Error kinds by exception class, most specific first: the CQL protocol's error names for
# server errors, "timeout" and "connection" for the engine's shared kinds.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (cassandra.OperationTimedOut, "timeout"),
    (cassandra.ReadTimeout, "timeout"),
    (cassandra.WriteTimeout, "timeout"),
    (TimeoutError, "timeout"),
    (NoHostAvailable, "connection"),
    (ConnectionException, "connection"),
    (cassandra.Unavailable, "unavailable"),
    (cassandra.ReadFailure, "read_failure"),
    (cassandra.WriteFailure, "write_failure"),
    (cassandra.CDCWriteFailure, "cdc_write_failure"),
    (cassandra.FunctionFailure, "function_failure"),
    (cassandra.AlreadyExists, "already_exists"),
    (cassandra.InvalidRequest, "invalid_request"),
    (cassandra.Unauthorized, "unauthorized"),
    (cassandra.ConfigurationException, "config_error"),
    (cassandra.AuthenticationFailed, "authentication"),
    (protocol.SyntaxException, "syntax_error"),
    (protocol.AlreadyExistsException, "already_exists"),
    (protocol.ConfigurationException, "config_error"),
    (protocol.BadCredentials, "authentication"),
    (protocol.OverloadedErrorMessage, "overloaded"),
    (protocol.IsBootstrappingErrorMessage, "bootstrapping"),
    (protocol.TruncateError, "truncate_error"),
    (protocol.ServerError, "server_error"),
    (protocol.ProtocolException, "protocol_error"),
    (ConnectionError, "connection"),
    (OSError, "connection"),
)


def classify_error(exc: BaseException) -> str:
    """The kind of a failed execution.

    "timeout" for client (OperationTimedOut) and server (ReadTimeout, WriteTimeout) timeouts;
    "connection" when no host could take the statement or a connection broke; otherwise the
    CQL protocol's error name ("unavailable", "syntax_error", "invalid_request",
    "unauthorized", "overloaded"...), `cql_<hex code>` for other server errors, "other" for
    anything else (such as an argument the driver cannot encode).
    """
    for error_type, kind in _KINDS:
        if isinstance(exc, error_type):
            return kind
    if isinstance(exc, protocol.ErrorMessage):
        return f"cql_{exc.code:04x}"
    return "other"


def describe_error(exc: BaseException) -> str:
    """A one-line sample: the server's code, summary and message, or the driver's error.

    Neither the driver nor the server puts the password into these texts.
    """
    if isinstance(exc, protocol.ErrorMessage):
        return f"{exc.code:04x} [{exc.summary}] {' '.join(str(exc.message).split())}"
    if isinstance(exc, NoHostAvailable):
        return "no host available: " + _host_errors(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _host_errors(exc: NoHostAvailable) -> str:
    errors = exc.errors
    if isinstance(errors, dict) and errors:
        return "; ".join(f"{host}: {describe_error(error)}" for host, error in errors.items())
    message = exc.args[0] if exc.args else ""
    return str(message) or "no hosts"


def connect_error(exc: BaseException, target: SutTarget) -> SutError | None:
    """A user-facing SutError for a failed session opening (None for cancellation)."""
    key = target.identity.key
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    if isinstance(exc, SutError):
        return exc
    if isinstance(exc, cassandra.UnresolvableContactPoints):
        return SutError(f"cannot reach {key}: host '{target.host}' is unknown")
    if isinstance(exc, TimeoutError | cassandra.OperationTimedOut):
        return SutError(f"cannot reach {key}: no answer within {target.connect_timeout_s:g}s")
    if isinstance(exc, NoHostAvailable):
        message = str(exc.args[0]) if exc.args else ""
        if "using keyspace" in message:
            return _unknown_keyspace(target)
        errors = list(exc.errors.values()) if isinstance(exc.errors, dict) else []
        for error in errors:
            reason = _host_reason(error, target)
            if reason is not None:
                return reason
        if errors:
            return SutError(f"cannot connect to {key}: {describe_error(errors[0])}")
        return SutError(f"cannot connect to {key}: {describe_error(exc)}")
    if isinstance(exc, cassandra.InvalidRequest) and "keyspace" in str(exc).lower():
        return _unknown_keyspace(target)
    reason = _host_reason(exc, target)
    if reason is not None:
        return reason
    return SutError(f"cannot connect to {key}: {describe_error(exc)}")


def _unknown_keyspace(target: SutTarget) -> SutError:
    return SutError(
        f"{target.identity.key}: keyspace '{target.database}' does not exist, or user "
        f"'{target.user}' may not use it"
    )


def _host_reason(error: BaseException, target: SutTarget) -> SutError | None:
    """What one host's connection error means for the user, if it is a known cause."""
    key = target.identity.key
    if isinstance(error, cassandra.AuthenticationFailed | protocol.BadCredentials):
        if not target.password.get_secret_value() and "requires authentication" in str(error):
            return SutError(f"{key}: the server requires a password; the plan sets none")
        return SutError(f"{key}: authentication failed for user '{target.user}' (wrong password?)")
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or error.reason
        return SutError(f"{key}: the server's TLS certificate was not accepted: {reason}")
    if isinstance(error, ssl.SSLError):
        return SutError(f"{key}: the TLS handshake failed: {error.reason or error}")
    if isinstance(error, TimeoutError | cassandra.OperationTimedOut):
        return SutError(f"cannot reach {key}: no answer within {target.connect_timeout_s:g}s")
    if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == (
        errno.ECONNREFUSED
    ):
        return SutError(f"cannot reach {key}: connection refused")
    if isinstance(error, socket.gaierror):
        return SutError(f"cannot reach {key}: host '{target.host}' is unknown")
    if isinstance(error, OSError):
        return SutError(f"cannot reach {key}: {error.strerror or error}")
    if isinstance(error, ConnectionException):
        return SutError(f"cannot connect to {key}: {describe_error(error)}")
    return None


# -- preflight ----------------------------------------------------------------------------------


async def preflight(target: SutTarget, queries: Sequence[WorkloadQuery]) -> None:
    """Prepares every query on the SUT (which checks syntax, tables and columns) without
    running it; reports all rejections at once.

    Raises ValidationError with one Problem per rejected query, located at its workload file and
    line; SutError when the SUT cannot be reached or stops answering.
    """
    handle = await connect(target)
    problems: list[Problem] = []
    try:
        for query in queries:
            try:
                # Not through the shared cache: a preflight checks the text as it is now.
                await prepare_statement(handle.session, query.sql)
            except CassandraDriver.rejections as exc:
                problems.append(_rejection(target, query, exc))
            except (NoHostAvailable, ConnectionException, cassandra.OperationTimedOut) as exc:
                raise SutError(
                    f"{target.identity.key}: the SUT stopped answering during preflight while "
                    f"checking query '{query.name}': {describe_error(exc)}"
                ) from None
    finally:
        await close(handle)
    if problems:
        raise ValidationError(problems)


def _rejection(target: SutTarget, query: WorkloadQuery, exc: BaseException) -> Problem:
    message = f"query '{query.name}' was rejected by {target.identity.key}: {describe_error(exc)}"
    return Problem(Location(query.source, query.line), message, field=query.name)


# -- the driver ---------------------------------------------------------------------------------


class CassandraDriver(SutDriver):
    """Cassandra and ScyllaDB: one shared session per process, prepared `?` statements."""

    sut_types = SUT_TYPES
    workload_types = ("cql",)
    # The server's refusals of a statement (syntax, unknown table or column, permissions):
    # a failed execution of that query, not a lost session.
    rejections = (
        cassandra.InvalidRequest,
        cassandra.Unauthorized,
        cassandra.ConfigurationException,
        protocol.SyntaxException,
        protocol.ConfigurationException,
    )

    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        return render(query)

    async def connect(self, target: SutTarget) -> CqlSession:
        return await connect(target)

    async def prepare(self, session: CqlSession, sql: str) -> Execute:
        return await prepare(session, sql)

    def session_lost(self, session: CqlSession, error: BaseException) -> bool:
        return session_lost(session, error)

    def is_closed(self, session: CqlSession) -> bool:
        return is_closed(session)

    async def close(self, session: CqlSession) -> None:
        await close(session)

    def terminate(self, session: CqlSession) -> None:
        terminate(session)

    def classify_error(self, error: BaseException) -> str:
        return classify_error(error)

    def describe_error(self, error: BaseException) -> str:
        return describe_error(error)

    async def preflight(self, target: SutTarget, queries: Sequence[WorkloadQuery]) -> None:
        await preflight(target, queries)

    async def load_fixture_tables(
        self,
        target: SutTarget,
        storage: Storage,
        loads: Sequence[FixtureTableLoad],
        *,
        run_id: str | None = None,
    ) -> list[TableLoadReport]:
        # Imported here: the loader imports this module for its sessions.
        from crucible_dagster.fixtures import cassandra as fixture_loader

        return await fixture_loader.load_fixture_tables(target, storage, loads, run_id=run_id)
