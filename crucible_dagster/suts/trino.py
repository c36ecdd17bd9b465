"""Trino through the `trino` client (DB-API over Trino's HTTP protocol).

`target_db` names where queries run: `catalog.schema`, or `catalog` alone for its `default`
schema. Both become the session's catalog and schema, so workloads may name tables unqualified.
Trino folds unquoted names to lower case, so the names are sent in lower case.

The client is synchronous: every call runs in the driver's thread pool, which grows with the
number of open sessions, so each session has a thread while the event loop stays free. A
session is one `trino.dbapi.Connection` (one keep-alive HTTP connection pool, no server-side
state); a password is sent as HTTP basic auth and only over HTTPS, because Trino refuses basic
auth over plain HTTP. Every request waits at most `statement_timeout_s` for the server, and the
same limit is set as the session's `query_max_run_time`, so Trino stops a long query itself.

Parameters are `?` placeholders, one per occurrence. The client formats each argument as a
Trino literal and sends `EXECUTE IMMEDIATE '<sql>' USING <literals>` (Trino 418 and later), or
for older servers `PREPARE` / `EXECUTE ... USING` / `DEALLOCATE PREPARE`, three requests per
execution. Which one applies is probed once per server when the first session opens and pinned
on every connection, so the probe never falls inside the measured window.
"""

# Limitation: this driver is tested against a protocol-compatible stand-in server (tests/
# trino_standin.py) running DuckDB, not against a real Trino cluster, which cannot run here.

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import trino.dbapi
from trino import exceptions as trino_errors
from trino.auth import BasicAuthentication

from crucible_dagster.errors import Location, Problem, SutError, ValidationError
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.storage import Storage
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.suts.driver import Execute, SutDriver, WorkloadQuery, sample_arguments
from crucible_dagster.workload import Query

SUT_TYPES = ("trino",)
DEFAULT_SCHEMA = "default"
SOURCE = "crucible"
CLIENT_TAGS = ("crucible",)

# Error names that mean Trino stopped the statement for running too long.
TIMEOUT_ERROR_NAMES = frozenset({"EXCEEDED_TIME_LIMIT", "EXCEEDED_CPU_LIMIT"})
# What an old server answers to EXECUTE IMMEDIATE: it does not parse it.
_NO_IMMEDIATE_NAMES = frozenset({"SYNTAX_ERROR", "NOT_SUPPORTED", "GENERIC_USER_ERROR"})
# The explained query starts on its own line, so Trino's "line N" is N - 1 of the query.
PREFLIGHT_PREFIX = "EXPLAIN (TYPE VALIDATE)\n"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_LOCATION = re.compile(r"^line (\d+):(\d+): ")
_HTTP_STATUS = re.compile(r"^error (\d{3})\b")
_CLOSE_TIMEOUT_S = 2.0
_SPARE_THREADS = 2
_MESSAGE_MAX = 300

T = TypeVar("T")


# -- names and statements -----------------------------------------------------------------------


@dataclass(frozen=True)
class TrinoDatabase:
    """The catalog and schema a target names."""

    catalog: str
    schema: str

    @property
    def qualified(self) -> str:
        return f"{quote_identifier(self.catalog)}.{quote_identifier(self.schema)}"

    def table(self, name: str) -> str:
        """`"catalog"."schema"."name"`, every part quoted."""
        return f"{self.qualified}.{quote_identifier(name)}"


def parse_database(text: str) -> TrinoDatabase:
    """`catalog.schema` or `catalog` (schema `default`); anything else is a SutError."""
    parts = text.split(".")
    if len(parts) > 2 or not all(_NAME.match(p) for p in parts):
        raise SutError(
            f"invalid Trino target_db {text!r}: expected `catalog` or `catalog.schema`, each a "
            "letter or '_' followed by up to 127 letters, digits or '_'"
        )
    catalog = parts[0].lower()
    schema = parts[1].lower() if len(parts) == 2 else DEFAULT_SCHEMA
    return TrinoDatabase(catalog, schema)


def quote_identifier(name: str) -> str:
    """A Trino identifier in double quotes, embedded quotes doubled."""
    if not name or "\x00" in name or not name.isprintable():
        raise ValueError(f"invalid identifier {name!r}: empty or holding control characters")
    return '"' + name.replace('"', '""') + '"'


def quote_string(text: str) -> str:
    """A Trino string literal: single quotes, embedded quotes doubled (Trino has no backslash
    escapes)."""
    if "\x00" in text:
        raise ValueError("a Trino string literal cannot hold a NUL character")
    return "'" + text.replace("'", "''") + "'"


def render(query: Query) -> tuple[str, tuple[str, ...]]:
    """The query's SQL with one `?` per parameter occurrence, and the names in that order."""
    return query.render(lambda _number: "?", numbered=False)


def session_properties(target: SutTarget) -> dict[str, str]:
    """Trino's own limit on a statement's run time; none when the timeout is 0."""
    if target.statement_timeout_s <= 0:
        return {}
    return {"query_max_run_time": f"{max(round(target.statement_timeout_s * 1000), 1)}ms"}


def request_timeout(target: SutTarget) -> tuple[float, float | None]:
    """(connect, read) limits of every HTTP request; no read limit when the timeout is 0."""
    read_s = target.statement_timeout_s if target.statement_timeout_s > 0 else None
    return (target.connect_timeout_s, read_s)


def preflight_statement(sql: str) -> str:
    return PREFLIGHT_PREFIX + sql


def query_message(message: str) -> str:
    """Trino's message with its `line N:M:` prefix moved to the query's own line numbers."""
    found = _LOCATION.match(message)
    if found is None:
        return message
    line, column = int(found.group(1)) - 1, int(found.group(2))
    rest = message[found.end() :]
    if line < 1:
        return rest
    return f"{rest} (line {line}, column {column} of the query)"


# -- threads and sessions -----------------------------------------------------------------------


class WorkerPool:
    """Threads for the blocking client: at least one per open session, grown on demand.

    A grown pool replaces the executor; work already given to the old one finishes there.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._capacity = 0
        self._sessions = 0

    @property
    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._grow(self._sessions + _SPARE_THREADS)
            assert self._executor is not None
            return self._executor

    @property
    def capacity(self) -> int:
        return self._capacity

    def opened(self) -> None:
        with self._lock:
            self._sessions += 1
            if self._sessions + _SPARE_THREADS > self._capacity:
                self._grow(max(2 * self._capacity, self._sessions + _SPARE_THREADS))

    def closed(self) -> None:
        with self._lock:
            self._sessions = max(self._sessions - 1, 0)

    def _grow(self, capacity: int) -> None:
        old = self._executor
        self._executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="trino")
        self._capacity = capacity
        if old is not None:
            old.shutdown(wait=False)

    async def run(self, call: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, call, *args)


@dataclass
class TrinoSession:
    """One open connection, the pool its calls run in, and its statement in flight."""

    conn: trino.dbapi.Connection
    pool: WorkerPool
    key: str
    database: TrinoDatabase
    cursor: Any = None
    closed: bool = False
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool.closed()


# Which servers run EXECUTE IMMEDIATE, by (host, port); probed once per process.
_immediate_by_server: dict[tuple[str, int], bool] = {}
_immediate_lock = threading.Lock()


def _probe_immediate(conn: trino.dbapi.Connection, host: str, port: int) -> bool:
    with _immediate_lock:
        known = _immediate_by_server.get((host, port))
    if known is not None:
        return known
    cursor = conn.cursor()
    try:
        cursor.execute("EXECUTE IMMEDIATE 'SELECT 1'")
        cursor.fetchall()
        supported = True
    except trino_errors.TrinoUserError as exc:
        if exc.error_name not in _NO_IMMEDIATE_NAMES:
            raise
        supported = False
    with _immediate_lock:
        _immediate_by_server[(host, port)] = supported
    return supported


def _schema_exists(conn: trino.dbapi.Connection, database: TrinoDatabase) -> bool:
    cursor = conn.cursor()
    cursor.execute(
        f"SELECT count(*) FROM {quote_identifier(database.catalog)}.information_schema.schemata "
        f"WHERE catalog_name = {quote_string(database.catalog)} "
        f"AND schema_name = {quote_string(database.schema)}"
    )
    rows = cursor.fetchall()
    return bool(rows and rows[0][0])


def open_connection(target: SutTarget, database: TrinoDatabase) -> trino.dbapi.Connection:
    """A client connection for the target (no request sent yet); SutError for settings Trino
    would refuse."""
    identity = target.identity
    password = target.password.get_secret_value()
    tls = target.tls
    if password and tls is None:
        raise SutError(
            f"{identity.key}: a password is set but cluster_info.tls is not: Trino accepts "
            "passwords (HTTP basic auth) only over HTTPS and refuses them over plain HTTP; "
            "enable TLS or remove the password"
        )
    verify: bool | str = True
    http_session: requests.Session | None = None
    if tls is not None:
        verify = tls.ca_file if tls.verify and tls.ca_file else tls.verify
        if verify is not True or tls.cert_file is not None:
            # requests lets REQUESTS_CA_BUNDLE override a session's own CA file, so a session
            # with the target's TLS settings ignores the environment (proxies are passed by
            # the client explicitly anyway).
            http_session = requests.Session()
            http_session.trust_env = False
            http_session.verify = verify
            if tls.cert_file is not None:
                http_session.cert = (tls.cert_file, tls.key_file) if tls.key_file else tls.cert_file
    return trino.dbapi.Connection(
        host=target.host,
        port=target.port,
        user=target.user,
        source=SOURCE,
        catalog=database.catalog,
        schema=database.schema,
        session_properties=session_properties(target),
        http_scheme="https" if tls is not None else "http",
        auth=BasicAuthentication(target.user, password) if password else None,
        verify=verify,
        http_session=http_session,
        client_tags=list(CLIENT_TAGS),
        # Retries would hide failures from the measurement; the engine retries sessions.
        max_attempts=1,
        request_timeout=(target.connect_timeout_s, target.connect_timeout_s),
    )


def _open_checked(target: SutTarget, database: TrinoDatabase, check_schema: bool) -> Any:
    conn = open_connection(target, database)
    try:
        immediate = _probe_immediate(conn, target.host, target.port)
        conn.legacy_prepared_statements = not immediate
        if check_schema and not _schema_exists(conn, database):
            raise SutError(
                f"{target.identity.key}: schema '{database.schema}' does not exist in catalog "
                f"'{database.catalog}'"
            )
    except BaseException:
        conn.close()
        raise
    conn.request_timeout = request_timeout(target)
    return conn


async def connect(
    target: SutTarget, pool: WorkerPool | None = None, *, check_schema: bool = True
) -> TrinoSession:
    """Opens one session and checks that the server answers and the schema exists (unless
    `check_schema` is false); failures become a SutError without the password."""
    database = parse_database(target.database)
    pool = pool or WorkerPool()
    pool.opened()
    try:
        conn = await pool.run(_open_checked, target, database, check_schema)
    except SutError:
        pool.closed()
        raise
    except BaseException as exc:
        pool.closed()
        error = connect_error(exc, target)
        if error is None:
            raise
        raise error from None
    return TrinoSession(conn, pool, target.identity.key, database)


def connect_error(exc: BaseException, target: SutTarget) -> SutError | None:
    """A user-facing SutError for a failed connection attempt (None for cancellation)."""
    key = target.identity.key
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    if isinstance(exc, trino_errors.TrinoQueryError):
        name = exc.error_name or exc.error_type or "error"
        if name == "CATALOG_NOT_FOUND":
            database = parse_database(target.database)
            return SutError(f"{key}: catalog '{database.catalog}' does not exist")
        return SutError(f"{key}: the server refused the session: {describe_error(exc)}")
    status = http_status(exc)
    if status in (401, 403):
        return SutError(f"{key}: access denied for user '{target.user}' (wrong password?)")
    if status is not None:
        return SutError(f"{key}: the server answered HTTP {status}")
    if isinstance(exc, trino_errors.TrinoAuthError):
        return SutError(f"{key}: {exc}")
    cause = _request_cause(exc)
    if cause is not None:
        return SutError(f"cannot reach {key}: {_reach_reason(cause, target)}")
    return SutError(f"cannot connect to {key}: {type(exc).__name__}")


def _request_cause(exc: BaseException) -> requests.RequestException | None:
    """The requests error behind a client error (the client wraps it in a new exception)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.RequestException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _reach_reason(cause: requests.RequestException, target: SutTarget) -> str:
    text = str(cause)
    if isinstance(cause, requests.Timeout) or "timed out" in text.lower():
        return f"no answer within {target.connect_timeout_s:g}s"
    if isinstance(cause, requests.exceptions.SSLError):
        return f"the TLS handshake failed: {_one_line(text)}"
    if "refused" in text.lower():
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return f"host '{target.identity.host}' is unknown"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the server closed the connection"
    return _one_line(text)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a non-2xx answer the client turned into an HttpError (or, during a
    fetch, an OperationalError carrying its text)."""
    if isinstance(exc, trino_errors.HttpError | trino_errors.OperationalError) and not isinstance(
        exc, trino_errors.TrinoQueryError
    ):
        found = _HTTP_STATUS.match(str(exc))
        if found:
            return int(found.group(1))
    return None


def is_closed(session: TrinoSession) -> bool:
    return session.closed


def session_lost(session: TrinoSession, error: BaseException) -> bool:
    """Whether the session must be replaced: it was closed, the server could not be reached,
    or it answered that it is unavailable. A refused statement leaves the session usable."""
    if session.closed:
        return True
    if isinstance(error, trino_errors.TrinoQueryError):
        return False
    if isinstance(error, trino_errors.TrinoConnectionError | requests.RequestException):
        return True
    status = http_status(error)
    return status in (401, 403, 502, 503, 504)


def _close_blocking(session: TrinoSession) -> None:
    cursor = session.cursor
    if cursor is not None:
        with contextlib.suppress(Exception):
            cursor.cancel()  # a DELETE of the statement still running, if any
    session.conn.close()


async def close(session: TrinoSession) -> None:
    if session.closed:
        return
    session.closed = True
    try:
        await asyncio.wait_for(session.pool.run(_close_blocking, session), _CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError, trino_errors.Error, requests.RequestException):
        session.conn.close()
    finally:
        session.release()


def terminate(session: TrinoSession) -> None:
    """Drops the session's HTTP connections at once; a statement in flight fails in its thread."""
    session.closed = True
    with contextlib.suppress(Exception):
        session.conn.close()
    session.release()


def run_statement(
    session: TrinoSession, sql: str, args: Sequence[object] = ()
) -> list[list[object]]:
    """Runs one statement in the calling thread and reads every row (every page)."""
    if session.closed:
        raise trino_errors.TrinoConnectionError(f"the session to {session.key} is closed")
    cursor = session.conn.cursor()
    session.cursor = cursor
    cursor.execute(sql, list(args) if args else None)
    rows = cursor.fetchall()
    session.cursor = None
    return rows


async def prepare(session: TrinoSession, sql: str) -> Execute:
    """An awaitable that runs `sql` with its arguments in the session's thread pool and reads
    every row. Nothing is sent now: the client prepares with each execution (see the module)."""
    pool = session.pool

    async def execute(*args: object) -> object:
        return await pool.run(run_statement, session, sql, args)

    return execute


# -- errors -------------------------------------------------------------------------------------


def classify_error(exc: BaseException) -> str:
    """The kind of a failed execution.

    Trino's error name ("SYNTAX_ERROR", "TABLE_NOT_FOUND", "EXCEEDED_GLOBAL_MEMORY_LIMIT"...;
    its type, USER_ERROR, INSUFFICIENT_RESOURCES, EXTERNAL or INTERNAL_ERROR, is in the sample),
    except "timeout" for Trino's time limits and for requests that got no answer in time, and
    "connection" when the server could not be reached or answered 502/503/504. "http_<status>"
    for other refusals such as 401, "other" for anything else.
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, trino_errors.TrinoQueryError):
        if exc.error_name in TIMEOUT_ERROR_NAMES:
            return "timeout"
        return exc.error_name or (exc.error_type or "other").lower()
    status = http_status(exc)
    if status in (502, 503, 504):
        return "connection"
    if status is not None:
        return f"http_{status}"
    cause = _request_cause(exc)
    if cause is not None:
        return "timeout" if isinstance(cause, requests.Timeout) else "connection"
    if isinstance(exc, trino_errors.TrinoConnectionError | ConnectionError):
        return "connection"
    return "other"


def describe_error(exc: BaseException) -> str:
    """`<ERROR_NAME> (<ERROR_TYPE>): <message>`; Trino's messages carry no secrets."""
    if isinstance(exc, trino_errors.TrinoQueryError):
        name = exc.error_name or "ERROR"
        kind = f" ({exc.error_type})" if exc.error_type else ""
        return f"{name}{kind}: {_one_line(exc.message)}"
    cause = _request_cause(exc)
    if cause is not None:
        return f"{type(cause).__name__}: {_one_line(str(cause))}"
    text = _one_line(str(exc).strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 3] + "..."


# -- preflight ----------------------------------------------------------------------------------


def _check_all(
    session: TrinoSession, queries: Sequence[WorkloadQuery]
) -> list[tuple[WorkloadQuery, BaseException]]:
    rejected: list[tuple[WorkloadQuery, BaseException]] = []
    for query in queries:
        args = sample_arguments(query) if query.params else []
        try:
            run_statement(session, preflight_statement(query.sql), args)
        except (trino_errors.TrinoQueryError, trino_errors.NotSupportedError) as exc:
            # NotSupportedError: a sample argument the client cannot send.
            rejected.append((query, exc))
    return rejected


async def preflight(target: SutTarget, queries: Sequence[WorkloadQuery]) -> None:
    """Runs `EXPLAIN (TYPE VALIDATE)` for every query (with sample arguments where it has
    parameters): Trino parses and analyses it, checking tables, columns and types, without
    running it. Raises ValidationError listing every rejected query at its workload file and
    line; SutError when the SUT cannot be reached."""
    session = await connect(target)
    try:
        try:
            rejected = await session.pool.run(_check_all, session, queries)
        except Exception as exc:
            raise SutError(
                f"{target.identity.key}: preflight failed: {describe_error(exc)}"
            ) from None
    finally:
        await close(session)
    if rejected:
        raise ValidationError([_rejection(target, query, exc) for query, exc in rejected])


def _rejection(target: SutTarget, query: WorkloadQuery, exc: BaseException) -> Problem:
    if isinstance(exc, trino_errors.TrinoQueryError):
        name = exc.error_name or "ERROR"
        kind = f" ({exc.error_type})" if exc.error_type else ""
        detail = f"{name}{kind}: {_one_line(query_message(exc.message))}"
    else:
        detail = describe_error(exc)
    message = f"query '{query.name}' was rejected by {target.identity.key}: {detail}"
    return Problem(Location(query.source, query.line), message, field=query.name)


# -- the driver ---------------------------------------------------------------------------------


class TrinoDriver(SutDriver):
    """Trino through the `trino` DB-API client in a thread pool: `?` parameters."""

    sut_types = SUT_TYPES
    # Statements are only sent when executed, so prepare() raises nothing of Trino's; a
    # refused statement at execution is a TrinoUserError and leaves the session usable.
    rejections = (trino_errors.TrinoUserError,)

    def __init__(self) -> None:
        self.pool = WorkerPool()

    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        return render(query)

    async def connect(self, target: SutTarget) -> TrinoSession:
        return await connect(target, self.pool)

    async def prepare(self, session: TrinoSession, sql: str) -> Execute:
        return await prepare(session, sql)

    def session_lost(self, session: TrinoSession, error: BaseException) -> bool:
        return session_lost(session, error)

    def is_closed(self, session: TrinoSession) -> bool:
        return is_closed(session)

    async def close(self, session: TrinoSession) -> None:
        await close(session)

    def terminate(self, session: TrinoSession) -> None:
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
        from crucible_dagster.fixtures import trino as fixture_loader

        return await fixture_loader.load_fixture_tables(target, storage, loads, run_id=run_id)
