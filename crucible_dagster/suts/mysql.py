"""MySQL-protocol SUTs through asyncmy: MySQL, MariaDB, Doris and StarRocks.

Statements are sent over the text protocol: queries with parameters carry `%s` placeholders and
asyncmy escapes each value into the statement (client-side parameterisation; Crucible never
splices values into SQL itself). Doris and StarRocks speak the same protocol but differ in their
session variables and in how a query is checked before load; both are marked where they live.
"""

import asyncio
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import asyncmy
from asyncmy import errors as my_errors

from crucible_dagster.errors import Location, Problem, SutError, ValidationError
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.storage import Storage
from crucible_dagster.suts.base import SutIdentity, SutTarget, tls_mismatch
from crucible_dagster.suts.driver import (
    Execute,
    SutDriver,
    WorkloadQuery,
    sample_arguments,
    tls_context,
)
from crucible_dagster.workload import Query

SUT_TYPES = ("mysql", "mariadb", "doris", "starrocks")
# Doris and StarRocks front ends accept the MySQL protocol but not every MySQL statement.
MPP_TYPES = frozenset({"doris", "starrocks"})

# Client error codes (CR_*) and server codes that mean the session is gone: server gone away,
# lost during query, lost during handshake, connection killed, server shutting down, MySQL 8's
# idle disconnect, and asyncmy's own "not connected".
CONNECTION_LOST_CODES = frozenset({0, 1053, 1927, 2006, 2013, 2014, 2055, 4031})
# Codes a connection attempt fails with before any session exists.
CONNECT_FAILED_CODES = frozenset({2002, 2003, 2005})
# MariaDB's max_statement_time (1969) and MySQL's max_execution_time (3024) interruptions.
TIMEOUT_CODES = frozenset({1969, 3024})
# What PREPARE answers for a statement it cannot prepare; such a query is not checked.
UNPREPARABLE_CODE = 1295

_CLOSE_TIMEOUT_S = 2.0
_PREFLIGHT_STATEMENT = "crucible_check"


# -- statements ---------------------------------------------------------------------------------


def render(query: Query) -> tuple[str, tuple[str, ...]]:
    """The query's SQL with one `%s` per parameter occurrence, and the names in that order.

    With parameters, asyncmy formats the statement with `%`, so every literal `%` of the SQL is
    doubled; a query without parameters is returned exactly as written and must run without
    arguments, so its `%` stays literal.
    """
    marker = "\x00p\x00"
    while marker in query.sql:
        marker = "\x00" + marker
    sql, order = query.render(lambda _number: marker, numbered=False)
    if not order:
        return query.sql, ()
    return "%s".join(piece.replace("%", "%%") for piece in sql.split(marker)), order


def native_placeholders(sql: str, has_params: bool) -> str:
    """Rendered SQL in the server's own syntax (`?` placeholders, single `%`), for PREPARE."""
    if not has_params:
        return sql
    out: list[str] = []
    i = 0
    while i < len(sql):
        pair = sql[i : i + 2]
        if pair == "%s":
            out.append("?")
            i += 2
        elif pair == "%%":
            out.append("%")
            i += 2
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def quote_identifier(name: str) -> str:
    """A MySQL identifier in backticks, embedded backticks doubled."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}: empty or containing a NUL character")
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class ServerFlavour:
    """What the server's version string says about its timeout variable."""

    name: str  # "mariadb", "mysql", "doris" or "starrocks"

    def timeout_statement(self, timeout_s: float) -> str | None:
        """The statement setting the session's statement timeout; 0 or less disables it."""
        seconds = max(timeout_s, 0.0)
        if self.name == "mariadb":
            return f"SET SESSION max_statement_time = {seconds:.6g}"
        if self.name == "mysql":
            # MySQL applies max_execution_time to read-only SELECTs only.
            return f"SET SESSION max_execution_time = {round(seconds * 1000)}"
        # Limitation: Doris and StarRocks take whole seconds in query_timeout, and have no
        # "unlimited" value, so 0 becomes a day. Not run against a real server here.
        whole = math.ceil(seconds) if seconds > 0 else 86_400
        return f"SET query_timeout = {whole}"


def server_flavour(sut_type: str, version: str) -> ServerFlavour:
    """MariaDB says so in its version (`5.5.5-10.11.19-MariaDB`); MPP types keep their name."""
    if sut_type in MPP_TYPES:
        return ServerFlavour(sut_type)
    return ServerFlavour("mariadb" if "mariadb" in version.lower() else "mysql")


def preflight_statements(
    sut_type: str, sql: str, has_params: bool, sample_args: Sequence[object] = ()
) -> list[tuple[str, tuple[object, ...] | None]]:
    """The statements (with their arguments) that check one rendered query without running it.

    MySQL and MariaDB: the text goes into a user variable and is prepared server-side, which
    checks syntax and every table and column without executing. Doris and StarRocks prepare
    nothing over the text protocol, so they get `EXPLAIN` with sample arguments instead.
    """
    if sut_type in MPP_TYPES:
        # Limitation: only the generated statements are tested; no Doris or StarRocks server
        # runs here.
        return [("EXPLAIN " + sql, tuple(sample_args) if has_params else None)]
    return [
        ("SET @crucible_q = %s", (native_placeholders(sql, has_params),)),
        (f"PREPARE {_PREFLIGHT_STATEMENT} FROM @crucible_q", None),
        (f"DEALLOCATE PREPARE {_PREFLIGHT_STATEMENT}", None),
    ]


# -- sessions -----------------------------------------------------------------------------------


async def connect(
    target: SutTarget,
    *,
    database: str | None = None,
    statement_timeout: bool = True,
    statement_cache: int = 0,
) -> asyncmy.Connection:
    """Opens one autocommit session with the target's timeouts; failures become a SutError.

    The server-side statement timeout comes from `target.statement_timeout_s` (0 disables it):
    `max_statement_time` on MariaDB, `max_execution_time` on MySQL, `query_timeout` on
    Doris and StarRocks. `database=""` connects without a default database. A
    `statement_cache` above 0 lets asyncmy prepare parameterised statements server-side.
    """
    identity = target.identity
    name = identity.database if database is None else database
    tls = tls_context(target)
    try:
        conn = await asyncio.wait_for(
            asyncmy.connect(
                host=target.host,
                port=target.port,
                user=target.user,
                password=target.password.get_secret_value(),
                database=name or None,
                connect_timeout=max(1, math.ceil(target.connect_timeout_s)),
                autocommit=True,
                stmt_cache_size=statement_cache,
                program_name="crucible",
                ssl=tls,
            ),
            timeout=target.connect_timeout_s,
        )
    except BaseException as exc:
        shown = SutIdentity(identity.sut_type, identity.host, identity.port, name)
        error = connect_error(exc, shown, target.user, target.connect_timeout_s)
        if error is None:
            raise
        raise error from None

    try:
        flavour = server_flavour(identity.sut_type, conn.get_server_info() or "")
        timeout_s = target.statement_timeout_s if statement_timeout else 0.0
        setting = flavour.timeout_statement(timeout_s)
        if setting is not None:
            async with conn.cursor() as cursor:
                await cursor.execute(setting)
    except my_errors.MySQLError as exc:
        terminate(conn)
        raise SutError(
            f"{identity.key}: cannot set the statement timeout: {describe_error(exc)}"
        ) from None
    except BaseException:
        terminate(conn)
        raise
    return conn


def connect_error(
    exc: BaseException, identity: SutIdentity, user: str, timeout_s: float
) -> SutError | None:
    """A user-facing SutError for a failed connection attempt (None for cancellation)."""
    key = identity.key
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    if isinstance(exc, TimeoutError):
        return SutError(f"cannot reach {key}: no answer within {timeout_s:g}s")
    mismatch = tls_mismatch(exc)
    if mismatch is not None:
        return SutError(f"{key}: {mismatch}")
    if isinstance(exc, my_errors.MySQLError):
        code = error_code(exc)
        message = server_message(exc)
        if code in (1045, 1698):
            return SutError(f"{key}: access denied for user '{user}' (wrong password?)")
        if code == 1049:
            return SutError(f"{key}: database '{identity.database}' does not exist")
        if code in (1044, 1130, 1251):
            return SutError(f"{key}: the server refused user '{user}': {message}")
        if code == 1040:
            return SutError(f"{key}: the server accepts no more connections: {message}")
        if code in CONNECT_FAILED_CODES:
            return SutError(f"cannot reach {key}: {_reach_reason(exc, identity, timeout_s)}")
        if code in CONNECTION_LOST_CODES:
            return SutError(f"cannot connect to {key}: the server closed the connection")
        return SutError(f"{key}: the server refused the connection: {code}: {message}")
    if isinstance(exc, ConnectionRefusedError):
        return SutError(f"cannot reach {key}: connection refused")
    if isinstance(exc, socket.gaierror):
        return SutError(f"cannot reach {key}: host '{identity.host}' is unknown")
    if isinstance(exc, OSError):
        return SutError(f"cannot reach {key}: {exc.strerror or exc}")
    return SutError(f"cannot connect to {key}: {type(exc).__name__}")


def _reach_reason(exc: BaseException, identity: SutIdentity, timeout_s: float) -> str:
    text = server_message(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ConnectionRefusedError) or "Errno 111" in text or "refused" in text:
        return "connection refused"
    if isinstance(cause, socket.gaierror) or "Name or service not known" in text:
        return f"host '{identity.host}' is unknown"
    if isinstance(cause, TimeoutError) or "timed out" in text.lower():
        return f"no answer within {timeout_s:g}s"
    return text


def is_closed(session: asyncmy.Connection) -> bool:
    # `connected` stays true after the server dropped the socket, so the stream is checked too.
    return not session.connected or bool(getattr(session, "_stream_broken", False))


def session_lost(session: asyncmy.Connection, error: BaseException) -> bool:
    """Whether `error` left the session unusable: a connection-loss code, a broken stream or a
    socket error."""
    if isinstance(error, my_errors.MySQLError) and error_code(error) in CONNECTION_LOST_CODES:
        return True
    if isinstance(error, my_errors.InterfaceError | ConnectionError):
        return True
    return is_closed(session)


async def close(session: asyncmy.Connection) -> None:
    try:
        await asyncio.wait_for(session.ensure_closed(), timeout=_CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError, my_errors.MySQLError):
        terminate(session)


def terminate(session: asyncmy.Connection) -> None:
    session.close()


async def prepare(session: asyncmy.Connection, sql: str) -> Execute:
    """An awaitable that runs `sql` on the session to its last row.

    Statements are client-side parameterised: asyncmy escapes each argument into the `%s`
    placeholders (Crucible never splices values itself); nothing is prepared on the server.
    A query without arguments is sent as written, without formatting.
    """

    async def execute(*args: object) -> object:
        # A buffered cursor reads every row during execute(); creating one costs an object.
        cursor = session.cursor()
        await cursor.execute(sql, args if args else None)
        return await cursor.fetchall()

    return execute


# -- errors -------------------------------------------------------------------------------------


def error_code(exc: BaseException) -> int | None:
    args: tuple[object, ...] = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def server_message(exc: BaseException) -> str:
    args: tuple[object, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    return str(exc)


def classify_error(exc: BaseException) -> str:
    """The kind of a failed execution.

    "timeout" for statements stopped by the server-side timeout (MariaDB 1969, MySQL 3024) and
    for client timeouts; "connection" for a lost session; otherwise the server's MySQL error
    code as a string ("1146" unknown table, "1064" syntax error...). MySQL's SQLSTATE classes
    are too coarse to tell failures apart (syntax errors and unknown databases are both 42000),
    while its error codes are stable and documented. "other" for anything without a code.
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, my_errors.MySQLError):
        code = error_code(exc)
        if code in TIMEOUT_CODES:
            return "timeout"
        if code in CONNECTION_LOST_CODES or code in CONNECT_FAILED_CODES:
            return "connection"
        if isinstance(exc, my_errors.InterfaceError):
            return "connection"
        return str(code) if code else "other"
    if isinstance(exc, ConnectionError | OSError):
        return "connection"
    return "other"


def describe_error(exc: BaseException) -> str:
    """`<code>: <server message>`; server messages carry no secrets."""
    if isinstance(exc, my_errors.MySQLError):
        code = error_code(exc)
        message = server_message(exc)
        return f"{code}: {message}" if code is not None else message
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- preflight ----------------------------------------------------------------------------------


async def preflight(target: SutTarget, queries: Sequence[WorkloadQuery]) -> None:
    """Checks every query on the SUT without running it; reports all rejections at once.

    Raises ValidationError with one Problem per rejected query, located at its workload file and
    line and carrying the server's message; raises SutError when the SUT cannot be reached.
    """
    conn = await connect(target)
    problems: list[Problem] = []
    sut_type = target.identity.sut_type
    try:
        for query in queries:
            samples = _sample_args(query) if sut_type in MPP_TYPES else ()
            statements = preflight_statements(sut_type, query.sql, bool(query.params), samples)
            try:
                async with conn.cursor() as cursor:
                    for sql, args in statements:
                        await cursor.execute(sql, args)
                        await cursor.fetchall()
            except my_errors.MySQLError as exc:
                if session_lost(conn, exc):
                    raise SutError(
                        f"{target.identity.key}: the connection was lost during preflight "
                        f"while checking query '{query.name}': {describe_error(exc)}"
                    ) from None
                if error_code(exc) == UNPREPARABLE_CODE:
                    continue  # not checkable by PREPARE; the run counts its errors if any
                problems.append(_rejection(target, query, exc))
    finally:
        await close(conn)
    if problems:
        raise ValidationError(problems)


def _sample_args(query: WorkloadQuery) -> tuple[object, ...]:
    return tuple(sample_arguments(query))


def _rejection(target: SutTarget, query: WorkloadQuery, exc: BaseException) -> Problem:
    message = f"query '{query.name}' was rejected by {target.identity.key}: {describe_error(exc)}"
    return Problem(Location(query.source, query.line), message, field=query.name)


# -- the driver ---------------------------------------------------------------------------------


class MysqlDriver(SutDriver):
    """MySQL-protocol SUTs through asyncmy: text protocol, client-side `%s` parameters."""

    sut_types = SUT_TYPES
    # The statement refusals that have their own exception classes. OperationalError carries
    # both server refusals (1054 unknown column, 1969 timeout) and lost connections, so it is
    # told apart by its code in session_lost rather than listed here.
    rejections = (
        my_errors.ProgrammingError,
        my_errors.DataError,
        my_errors.IntegrityError,
        my_errors.NotSupportedError,
    )

    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        return render(query)

    async def connect(self, target: SutTarget) -> asyncmy.Connection:
        return await connect(target)

    async def prepare(self, session: asyncmy.Connection, sql: str) -> Execute:
        return await prepare(session, sql)

    def session_lost(self, session: asyncmy.Connection, error: BaseException) -> bool:
        return session_lost(session, error)

    def is_closed(self, session: asyncmy.Connection) -> bool:
        return is_closed(session)

    async def close(self, session: asyncmy.Connection) -> None:
        await close(session)

    def terminate(self, session: asyncmy.Connection) -> None:
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
        from crucible_dagster.fixtures import mysql as fixture_loader

        return await fixture_loader.load_fixture_tables(target, storage, loads, run_id=run_id)
