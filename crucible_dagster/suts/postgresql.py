"""PostgreSQL through asyncpg: connect, check a workload before load, and classify errors."""

import asyncio
import datetime
import decimal
import random
import socket
import ssl
from collections.abc import Sequence

import asyncpg

from crucible_dagster.errors import Location, Problem, SutError, ValidationError
from crucible_dagster.fixtures import postgresql as fixture_loader
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.params import make_generator
from crucible_dagster.storage import Storage
from crucible_dagster.suts.base import SutIdentity, SutTarget, tls_mismatch
from crucible_dagster.suts.driver import (
    Execute,
    QueryParameter,
    SutDriver,
    WorkloadQuery,
    tls_context,
)
from crucible_dagster.workload import Query


def render(query: Query) -> tuple[str, tuple[str, ...]]:
    """The query's SQL with `$1`, `$2`... for its parameters, and their names in that order."""
    return query.render(lambda number: f"${number}", numbered=True)


_NUMBERS = (int, float, decimal.Decimal)
# The Python values asyncpg encodes for each parameter type a server may infer. Types missing
# here are not checked before the load; a mismatch then shows as errors of the query.
_ACCEPTS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("int2", "int4", "int8", "oid"), (int,)),
    **dict.fromkeys(("numeric", "float4", "float8"), _NUMBERS),
    **dict.fromkeys(("text", "varchar", "bpchar", "name", "char"), (str,)),
    **dict.fromkeys(("date", "timestamp", "timestamptz"), (datetime.date,)),
    "bool": (bool,),
}
_INTEGER_BITS = {"int2": 16, "int4": 32, "int8": 64}
# The cast that makes PostgreSQL infer the type of a parameter's own values.
_CASTS: dict[type, str] = {
    int: "bigint",
    float: "float8",
    decimal.Decimal: "numeric",
    str: "text",
    bool: "boolean",
    datetime.date: "date",
    datetime.datetime: "timestamp",
}
_PYTHON_NAMES = {
    int: "integer",
    float: "float",
    decimal.Decimal: "decimal",
    str: "string",
    bool: "boolean",
    datetime.date: "date",
    datetime.datetime: "timestamp",
}


# SQLSTATEs of a server that ended our session (shutdown, crash recovery, terminated backend):
# the connection is gone, so they count as "connection" like a dropped socket.
_SESSION_ENDED = {"57P01", "57P02", "57P03", "57P04", "57P05"}


async def connect(target: SutTarget, *, database: str | None = None) -> asyncpg.Connection:
    """Opens one session with the target's timeouts; failures become a SutError.

    The server-side `statement_timeout` is set from `target.statement_timeout_s` (0 disables it).
    """
    identity = target.identity
    if database is not None:
        identity = SutIdentity(identity.sut_type, identity.host, identity.port, database)
    timeout_ms = max(int(target.statement_timeout_s * 1000), 0)
    tls = tls_context(target)
    try:
        return await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password.get_secret_value() or None,
            database=identity.database,
            timeout=target.connect_timeout_s,
            ssl=tls,
            server_settings={
                "statement_timeout": str(timeout_ms),
                "application_name": "crucible",
            },
        )
    except BaseException as exc:
        error = connect_error(exc, identity, target.user, target.connect_timeout_s)
        if error is None:
            raise
        raise error from None


def connect_error(
    exc: BaseException, identity: SutIdentity, user: str, timeout_s: float
) -> SutError | None:
    """A user-facing SutError for a failed connection attempt (None for cancellation)."""
    key = identity.key
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return SutError(f"{key}: authentication failed for user '{user}'")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return SutError(f"{key}: database '{identity.database}' does not exist")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return SutError(f"{key}: the server refused user '{user}': {_server_message(exc)}")
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return SutError(f"{key}: the server accepts no more connections: {_server_message(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SutError(f"{key}: the server's TLS certificate was not accepted: "
                        f"{exc.verify_message or exc.reason}")  # fmt: skip
    mismatch = tls_mismatch(exc)
    if mismatch is not None:
        return SutError(f"{key}: {mismatch}")
    if isinstance(exc, ssl.SSLError):
        return SutError(f"{key}: the TLS handshake failed: {exc.reason or exc}")
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return SutError(f"{key}: the server does not accept TLS, which cluster_info.tls asks for")
    if isinstance(exc, TimeoutError):
        return SutError(f"cannot reach {key}: no answer within {timeout_s:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return SutError(f"cannot reach {key}: connection refused")
    if isinstance(exc, socket.gaierror):
        return SutError(f"cannot reach {key}: host '{identity.host}' is unknown")
    if isinstance(exc, OSError):
        return SutError(f"cannot reach {key}: {exc.strerror or exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return SutError(f"{key}: the server refused the connection: {_server_message(exc)}")
    return SutError(f"cannot connect to {key}: {type(exc).__name__}: {exc}")


async def preflight(target: SutTarget, queries: Sequence[WorkloadQuery]) -> None:
    """Prepares every query on the SUT without running it; reports all rejections at once.

    Raises ValidationError with one Problem per rejected query, located at its workload file and
    line and carrying the server's message; raises SutError when the SUT cannot be reached.
    """
    conn = await connect(target)
    problems: list[Problem] = []
    try:
        for query in queries:
            try:
                statement = await conn.prepare(query.sql)
                problems += _argument_problems(query, statement.get_parameters())
            except asyncpg.PostgresError as exc:
                if conn.is_closed():
                    raise SutError(
                        f"{target.identity.key}: the connection was lost during preflight "
                        f"while preparing query '{query.name}': {_server_message(exc)}"
                    ) from None
                problems.append(_rejection(target, query, exc))
    finally:
        await _close(conn)
    if problems:
        raise ValidationError(problems)


def _argument_problems(query: WorkloadQuery, types: Sequence[object]) -> list[Problem]:
    """Parameters whose values the server would refuse for the type it inferred."""
    problems = []
    for param, pg_type in zip(query.params, types, strict=False):
        type_name = getattr(pg_type, "name", "")
        accepted = _ACCEPTS.get(type_name)
        if accepted is None:
            continue
        here = Location(query.source, query.line)
        wrong = [v for v in _sample_values(param) if not _accepts(accepted, v)]
        if wrong:
            given = type(wrong[0])
            cast = _CASTS.get(given, "text")
            message = (
                f"query '{query.name}': parameter :{param.name} gives "
                f"{_PYTHON_NAMES.get(given, given.__name__)} values, but PostgreSQL expects "
                f"{type_name} there; cast it in the SQL (:{param.name}::{cast}) or declare "
                "another parameter type"
            )
            problems.append(Problem(here, message, field=query.name))
            continue
        bits = _INTEGER_BITS.get(type_name)
        span = getattr(param.spec, "range", None)
        if bits is not None and isinstance(span, tuple) and all(isinstance(v, int) for v in span):
            lowest, highest = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            if span[0] < lowest or span[1] > highest:
                message = (
                    f"query '{query.name}': parameter :{param.name} ranges over "
                    f"[{span[0]}, {span[1]}], but PostgreSQL's {type_name} there holds "
                    f"{lowest}..{highest}; narrow the range or cast it (:{param.name}::numeric)"
                )
                problems.append(Problem(here, message, field=query.name))
    return problems


def _sample_values(param: QueryParameter) -> list[object]:
    if param.values:
        return list(param.values[:20])
    choices = getattr(param.spec, "values", None)
    if isinstance(choices, list):
        return choices
    make = make_generator(param.spec, random.Random(0))
    return [make() for _ in range(3)]


def _accepts(accepted: tuple[type, ...], value: object) -> bool:
    if isinstance(value, bool):
        return bool in accepted
    return isinstance(value, accepted)


def classify_error(exc: BaseException) -> str:
    """The kind of a failed execution: a SQLSTATE class ("42", "22"...), "timeout",
    "connection" or "other"."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate == "57014" and "statement timeout" in str(exc):
            return "timeout"
        if sqlstate.startswith("08") or sqlstate in _SESSION_ENDED:
            return "connection"
        return sqlstate[:2] if len(sqlstate) >= 2 else "other"
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return "connection"
    if isinstance(exc, ConnectionError | OSError):
        return "connection"
    return "other"


def describe_error(exc: BaseException) -> str:
    """A one-line sample of an execution error for diagnosis (server messages carry no secrets)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        return f"{sqlstate}: {_server_message(exc)}" if sqlstate else _server_message(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rejection(target: SutTarget, query: WorkloadQuery, exc: asyncpg.PostgresError) -> Problem:
    message = f"query '{query.name}' was rejected by {target.identity.key}: "
    message += _server_message(exc)
    if 'at or near ":"' in message:
        message += " (a ':name' is a parameter only where a '-- @param:' line declares it)"
    position = _error_line(query.sql, getattr(exc, "position", None))
    if position is not None:
        message += f" (line {position} of the query)"
    return Problem(Location(query.source, query.line), message, field=query.name)


def _error_line(sql: str, position: str | None) -> int | None:
    """The 1-based line inside the query text where the server located the error."""
    if not position or not position.isdigit():
        return None
    offset = int(position) - 1
    return sql[: max(offset, 0)].count("\n") + 1


def _server_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    detail = getattr(exc, "detail", None)
    return f"{message} ({detail})" if detail else str(message)


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2.0)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()


class PostgresDriver(SutDriver):
    """PostgreSQL through asyncpg: server-side prepared statements, `$n` placeholders."""

    sut_types = ("postgresql",)
    rejections = (asyncpg.PostgresError,)

    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        return render(query)

    async def connect(self, target: SutTarget) -> asyncpg.Connection:
        return await connect(target)

    async def prepare(self, session: asyncpg.Connection, sql: str) -> Execute:
        statement = await session.prepare(sql)
        return statement.fetch

    def session_lost(self, session: asyncpg.Connection, error: BaseException) -> bool:
        return session.is_closed() or isinstance(error, asyncpg.InternalClientError)

    def is_closed(self, session: asyncpg.Connection) -> bool:
        return bool(session.is_closed())

    async def close(self, session: asyncpg.Connection) -> None:
        await _close(session)

    def terminate(self, session: asyncpg.Connection) -> None:
        session.terminate()

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
        return await fixture_loader.load_fixture_tables(target, storage, loads, run_id=run_id)
