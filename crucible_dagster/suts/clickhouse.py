"""ClickHouse through its HTTP interface with httpx: connect, check a workload, classify errors.

A session is one `httpx.AsyncClient` holding a single keep-alive connection to the server, with
the credentials sent as HTTP basic auth (never in the URL) and the target database and the
statement timeout as query-string settings of every request. Each execution POSTs the statement
and reads the response to its end in chunks, discarding the rows.
"""

import asyncio
import datetime
import decimal
import math
import re
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from crucible_dagster.errors import Location, Problem, SutError, ValidationError
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.storage import Storage
from crucible_dagster.suts.base import SutTarget, tls_mismatch
from crucible_dagster.suts.driver import (
    Execute,
    SutDriver,
    WorkloadQuery,
    sample_arguments,
    tls_context,
)
from crucible_dagster.workload import Query

# ClickHouse 18.16 has no server-side query parameters (`{name:Type}` came in 19.x), so the
# values are rendered client-side as escaped SQL literals. `render` leaves this marker where each
# argument goes; `prepare` splits on it once, so an execution is a join of precomputed parts.
MARKER = "\x00"

# Server error codes.
TIMEOUT_EXCEEDED = 159
UNKNOWN_DATABASE = 81
READONLY = 164
TOO_BIG_AST = 168
SYNTAX_ERROR = 62
# 192 unknown user, 193 wrong password (18.x), 516 authentication failed (20.x and later).
AUTHENTICATION_FAILED = frozenset({192, 193, 516})

# The end of a response body is kept to find an exception the server appended after it had
# already sent `200 OK` and some rows.
_TAIL_BYTES = 4096
_DESCRIBE_PREFIX = "DESCRIBE TABLE (\n"
# "Code: 62, e.displayText() = DB::Exception: ..." (18.x) or "Code: 62. DB::Exception: ..."
_ERROR = re.compile(
    r"Code: (\d+)[.,] (?:e\.displayText\(\) = )?(?:DB::Exception: )?(.*?)"
    r"(?:, e\.what\(\) = \S+)?(?: \(version [^)]*\))?\s*\Z",
    re.DOTALL,
)
_POSITION = re.compile(r"failed at position (\d+)")
_LEADING_NOISE = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*", re.DOTALL)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_MESSAGE_MAX = 300


class ClickHouseError(Exception):
    """A statement the server refused (syntax, unknown table...): its error code and message."""

    def __init__(self, code: int, message: str, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


def render(query: Query) -> tuple[str, tuple[str, ...]]:
    """The query's SQL with a positional marker for each parameter occurrence, and the
    parameter names in that order."""
    return query.render(lambda _number: MARKER, numbered=False)


def literal(value: object) -> str:
    """A Python value as a ClickHouse SQL literal, escaped so it can only be data."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot send the decimal {value} to ClickHouse")
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        return quote_string(value.strftime("%Y-%m-%d %H:%M:%S"))
    if isinstance(value, datetime.date):
        return quote_string(value.isoformat())
    if isinstance(value, str):
        return quote_string(value)
    raise TypeError(f"cannot send a {type(value).__name__} parameter to ClickHouse")


_STRING_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\x00": "\\0"})


def quote_string(text: str) -> str:
    """A string literal in single quotes with backslashes, quotes and NUL escaped."""
    return "'" + text.translate(_STRING_ESCAPES) + "'"


def substitute(sql: str, args: Sequence[object]) -> str:
    """`sql` from `render` with each marker replaced by the next argument as a literal."""
    parts = sql.split(MARKER)
    if len(parts) - 1 != len(args):
        raise TypeError(f"the statement takes {len(parts) - 1} arguments, {len(args)} given")
    pieces = [parts[0]]
    for value, part in zip(args, parts[1:], strict=True):
        pieces += [literal(value), part]
    return "".join(pieces)


def server_limit_s(target: SutTarget) -> int:
    """`max_execution_time` for the target: 18.16 takes whole seconds, so it is rounded up."""
    if target.statement_timeout_s <= 0:
        return 0
    return max(math.ceil(target.statement_timeout_s), 1)


def parse_error(text: str, http_status: int | None = None) -> ClickHouseError:
    """The server's error text as a ClickHouseError (code 0 when it carries no code)."""
    stripped = text.strip()
    found = _ERROR.search(stripped)
    if found is None:
        return ClickHouseError(0, _one_line(stripped) or f"HTTP {http_status}", http_status)
    return ClickHouseError(int(found.group(1)), _one_line(found.group(2)), http_status)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 3] + "..."


def _tail_error(tail: bytes) -> ClickHouseError | None:
    """An exception the server appended to a `200 OK` body, if the body ends with one."""
    start = tail.rfind(b"Code: ")
    if start < 0 or (start > 0 and tail[start - 1 : start] != b"\n"):
        return None
    text = tail[start:].decode(errors="replace")
    if _ERROR.fullmatch(text.strip()) is None or "Exception" not in text:
        return None
    return parse_error(text)


async def run_statement(
    client: httpx.AsyncClient,
    body: bytes | AsyncIterable[bytes],
    params: dict[str, str] | None = None,
) -> bytes:
    """POSTs one statement and reads the whole response; returns its last bytes.

    With `params={"query": ...}` the body is the statement's data, streamed as it is produced.

    Rows are read in chunks and dropped, so memory does not grow with the result's size.
    """
    async with client.stream("POST", "/", content=body, params=params) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise parse_error(text, response.status_code)
        previous = last = b""
        async for chunk in response.aiter_raw():
            if chunk:
                previous, last = last, chunk
    tail = (previous[-_TAIL_BYTES:] + last)[-_TAIL_BYTES:]
    error = _tail_error(tail)
    if error is not None:
        raise error
    return tail


def make_client(
    target: SutTarget,
    *,
    database: str | None,
    limit_s: int,
    read_timeout_s: float | None,
    max_connections: int = 1,
) -> httpx.AsyncClient:
    """A client for the target's HTTP interface; the password goes only into basic auth."""
    params = {"max_execution_time": str(limit_s)}
    if database is not None:
        params["database"] = database
    timeout = httpx.Timeout(
        connect=target.connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=None
    )
    # With TLS the interface is HTTPS (ClickHouse's https_port), checked like any TLS server.
    scheme = "https" if target.tls is not None else "http"
    return httpx.AsyncClient(
        base_url=f"{scheme}://{_url_host(target.host)}:{target.port}",
        verify=tls_context(target) or True,
        auth=httpx.BasicAuth(target.user, target.password.get_secret_value()),
        params=params,
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=1),
        headers={"User-Agent": "crucible"},
        trust_env=False,
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def connect(target: SutTarget, *, database: str | None = None) -> httpx.AsyncClient:
    """Opens one session and checks the server answers `SELECT 1`; failures become a SutError.

    `max_execution_time` is set from `target.statement_timeout_s` (0 disables it); the client
    waits a little longer than that for an answer.
    """
    limit_s = server_limit_s(target)
    read_timeout_s = limit_s + 1.5 if limit_s else None
    name = target.database if database is None else database
    client = make_client(target, database=name, limit_s=limit_s, read_timeout_s=read_timeout_s)
    try:
        await run_statement(client, b"SELECT 1")
    except BaseException as exc:
        await client.aclose()
        error = connect_error(exc, target, name)
        if error is None:
            raise
        raise error from None
    return client


def connect_error(exc: BaseException, target: SutTarget, database: str) -> SutError | None:
    """A user-facing SutError for a failed connection attempt (None for cancellation)."""
    key = target.identity.key
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    if isinstance(exc, ClickHouseError):
        if exc.code in AUTHENTICATION_FAILED or exc.http_status in (401, 403):
            return SutError(f"{key}: authentication failed for user '{target.user}'")
        if exc.code == UNKNOWN_DATABASE:
            return SutError(f"{key}: database '{database}' does not exist")
        return SutError(f"{key}: the server refused the connection: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        hint = ""
        if target.tls is not None:
            # A plain HTTP port may wait for the end of a request line that a TLS hello never
            # sends, so the mismatch can show as silence rather than as a plain-text answer.
            hint = "; cluster_info.tls is on: is TLS served on this port?"
        return SutError(f"cannot reach {key}: no answer within {target.connect_timeout_s:g}s{hint}")
    mismatch = tls_mismatch(exc)
    if mismatch is not None:
        return SutError(f"{key}: {mismatch}")
    if isinstance(exc, httpx.ConnectError):
        if "refused" in str(exc).lower() or _refused(exc):
            return SutError(f"cannot reach {key}: connection refused")
        return SutError(f"cannot reach {key}: {exc or type(exc).__name__}")
    if isinstance(exc, httpx.TransportError):
        return SutError(f"cannot reach {key}: {type(exc).__name__}: {exc}")
    return SutError(f"cannot connect to {key}: {type(exc).__name__}: {exc}")


def _refused(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


async def prepare(client: httpx.AsyncClient, sql: str) -> Execute:
    """An async callable that runs `sql` with its arguments rendered as literals."""
    parts = sql.split(MARKER)
    if len(parts) == 1:
        body = sql.encode()

        async def run_plain() -> bytes:
            return await run_statement(client, body)

        return run_plain

    head, rest = parts[0], parts[1:]
    count = len(rest)

    async def run_with(*args: object) -> bytes:
        if len(args) != count:
            raise TypeError(f"the statement takes {count} arguments, {len(args)} given")
        pieces = [head]
        for value, part in zip(args, rest, strict=True):
            pieces += [literal(value), part]
        return await run_statement(client, "".join(pieces).encode())

    return run_with


def session_lost(client: httpx.AsyncClient, error: BaseException) -> bool:
    """Whether the client must be replaced: it is closed, or the transport failed.

    A client timeout is not a lost session: httpx drops the timed-out connection itself and
    opens a fresh one for the next request.
    """
    if client.is_closed:
        return True
    return isinstance(error, httpx.TransportError) and not isinstance(error, httpx.TimeoutException)


def classify_error(exc: BaseException) -> str:
    """The kind of a failed execution: the ClickHouse code ("60", "62"...), "timeout",
    "connection" or "other"."""
    if isinstance(exc, ClickHouseError):
        if exc.code == TIMEOUT_EXCEEDED:
            return "timeout"
        return str(exc.code) if exc.code else "other"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return "connection"
    return "other"


def describe_error(exc: BaseException) -> str:
    """A one-line sample of a failed execution (server messages carry no secrets)."""
    if isinstance(exc, ClickHouseError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, httpx.TimeoutException):
        # httpx's own text is empty or the socket's; the read timeout is the statement timeout.
        return f"no reply within the statement timeout ({type(exc).__name__})"
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class _Check:
    statement: str
    offset: int  # characters of wrapping before the query's own text


async def preflight(target: SutTarget, queries: Sequence[WorkloadQuery]) -> None:
    """Checks every query on the SUT without running it; reports all rejections at once.

    18.16 has no EXPLAIN. Every query is first parsed by the server under `readonly=2` with
    `max_ast_elements=1`: the server parses it, then refuses it as too big (or as a write in
    read-only mode) before anything runs, so that step checks syntax only. A SELECT (or WITH)
    is then described as `DESCRIBE TABLE (<query>)`, which resolves its tables, columns and
    types without reading data. Parameters are filled with a sample value of each.

    Limitation: statements other than SELECT are checked for syntax only; an INSERT into a
    missing table passes preflight and fails during the load.
    """
    client = await connect(target)
    problems: list[Problem] = []
    try:
        for query in queries:
            try:
                sql = substitute(query.sql, sample_arguments(query))
            except (TypeError, ValueError) as exc:
                problems.append(_problem(query, f"its parameters cannot be sent: {exc}"))
                continue
            problem = await _check_query(client, target, query, sql)
            if problem is not None:
                problems.append(problem)
    finally:
        await client.aclose()
    if problems:
        raise ValidationError(problems)


async def _check_query(
    client: httpx.AsyncClient, target: SutTarget, query: WorkloadQuery, sql: str
) -> Problem | None:
    probe = {"readonly": "2", "max_ast_elements": "1"}
    try:
        await run_statement(client, sql.encode(), probe)
    except ClickHouseError as exc:
        if exc.code not in (TOO_BIG_AST, READONLY):
            return _rejection(target, query, exc, _Check(sql, 0))
    except httpx.TransportError as exc:
        raise SutError(
            f"{target.identity.key}: the connection failed during preflight while checking "
            f"query '{query.name}': {describe_error(exc)}"
        ) from None
    if not _is_select(sql):
        return None

    check = _Check(_DESCRIBE_PREFIX + sql.rstrip().rstrip(";") + "\n)", len(_DESCRIBE_PREFIX))
    try:
        await run_statement(client, check.statement.encode(), {"readonly": "2"})
    except ClickHouseError as exc:
        if exc.code == SYNTAX_ERROR:
            # The query parsed on its own, so only the wrapping failed (a trailing FORMAT or
            # SETTINGS clause); its syntax is checked, its tables are not.
            return None
        return _rejection(target, query, exc, check)
    except httpx.TransportError as exc:
        raise SutError(
            f"{target.identity.key}: the connection failed during preflight while describing "
            f"query '{query.name}': {describe_error(exc)}"
        ) from None
    return None


def _is_select(sql: str) -> bool:
    rest = sql[_LEADING_NOISE.match(sql).end() :]  # type: ignore[union-attr]
    word = _FIRST_WORD.match(rest)
    return word is not None and word.group(0).upper() in ("SELECT", "WITH")


def _problem(query: WorkloadQuery, message: str) -> Problem:
    return Problem(
        Location(query.source, query.line), f"query '{query.name}' {message}", query.name
    )


def _rejection(
    target: SutTarget, query: WorkloadQuery, exc: ClickHouseError, check: _Check
) -> Problem:
    message = f"was rejected by {target.identity.key}: {exc.code}: {exc.message}"
    line = _error_line(check, exc.message)
    if line is not None:
        message += f" (line {line} of the query)"
    return _problem(query, message)


def _error_line(check: _Check, message: str) -> int | None:
    """The 1-based line inside the query where a syntax error sits ("failed at position N",
    a 1-based byte offset into the statement sent)."""
    found = _POSITION.search(message)
    if found is None:
        return None
    offset = int(found.group(1)) - 1
    before = check.statement.encode()[:offset].decode(errors="ignore")[check.offset :]
    return before.count("\n") + 1


def _terminate(client: httpx.AsyncClient) -> None:
    if client.is_closed:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop left to close it on; the sockets go with the process
    task = loop.create_task(client.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


class ClickHouseDriver(SutDriver):
    """ClickHouse over HTTP with httpx: one keep-alive connection per session, parameters
    rendered client-side as escaped literals."""

    sut_types = ("clickhouse",)
    rejections = (ClickHouseError,)

    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        return render(query)

    async def connect(self, target: SutTarget) -> httpx.AsyncClient:
        return await connect(target)

    async def prepare(self, session: httpx.AsyncClient, sql: str) -> Execute:
        return await prepare(session, sql)

    def session_lost(self, session: httpx.AsyncClient, error: BaseException) -> bool:
        return session_lost(session, error)

    def is_closed(self, session: httpx.AsyncClient) -> bool:
        return bool(session.is_closed)

    async def close(self, session: httpx.AsyncClient) -> None:
        await session.aclose()

    def terminate(self, session: httpx.AsyncClient) -> None:
        _terminate(session)

    def classify_error(self, error: BaseException) -> str:
        return classify_error(error)

    def describe_error(self, error: BaseException) -> str:
        return describe_error(error)

    async def preflight(self, target: SutTarget, queries: Sequence[Any]) -> None:
        await preflight(target, queries)

    async def load_fixture_tables(
        self,
        target: SutTarget,
        storage: Storage,
        loads: Sequence[FixtureTableLoad],
        *,
        run_id: str | None = None,
    ) -> list[TableLoadReport]:
        # Imported here: the loader builds on this module's HTTP helpers.
        from crucible_dagster.fixtures import clickhouse as fixture_loader

        return await fixture_loader.load_fixture_tables(target, storage, loads, run_id=run_id)
