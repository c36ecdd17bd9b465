"""SQLite, embedded, through the standard library's sqlite3.

Each session is its own connection in autocommit mode on a database file in WAL journal mode,
so readers never wait for a writer and writers wait for each other up to the statement timeout.
Queries take `?1`, `?2`... parameters; nothing is spliced into SQL. Dates and timestamps are
sent as ISO text and decimals as floats, the forms the fixture loader stores them in.
"""

import datetime
import decimal
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crucible_dagster.errors import SutError
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.storage import Storage
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.suts.embedded import (
    EmbeddedDriver,
    Rejected,
    StatementTimeout,
    first_line,
)
from crucible_dagster.workload import Query

SUT_TYPES = ("sqlite",)
_FETCH_ROWS = 1024
# How long a writer waits for another writer's lock when no statement timeout is set.
_BUSY_WAIT_S = 3600.0


def render(query: Query) -> tuple[str, tuple[str, ...]]:
    """The query's SQL with `?1`, `?2`... for its parameters, and their names in that order."""
    return query.render(lambda number: f"?{number}", numbered=True)


class _Nulls(dict[str, None]):
    """Binds NULL to every parameter of a statement that is only compiled, never run."""

    def __missing__(self, key: str) -> None:
        return None


def connect_file(path: Path, *, busy_timeout_s: float, create: bool = False) -> sqlite3.Connection:
    """An autocommit connection to the file in WAL mode; `create` allows a new file."""
    mode = "rwc" if create else "rw"
    connection = sqlite3.connect(
        f"{path.as_uri()}?mode={mode}",
        uri=True,
        timeout=busy_timeout_s,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        # Reads the header too, so a file that is not a database fails here.
        connection.execute("PRAGMA journal_mode = WAL").fetchall()
    except BaseException:
        connection.close()
        raise
    return connection


def open_session(target: SutTarget, path: Path) -> sqlite3.Connection:
    timeout_s = target.statement_timeout_s if target.statement_timeout_s > 0 else _BUSY_WAIT_S
    try:
        return connect_file(path, busy_timeout_s=timeout_s)
    except sqlite3.Error as exc:
        raise SutError(f"sqlite: cannot open database file {path}: {describe_error(exc)}") from None


def check(connection: sqlite3.Connection, sql: str) -> None:
    """Compiles `sql` with EXPLAIN, which checks syntax, tables and columns without running it;
    sqlite3 refuses more than one statement."""
    connection.execute("EXPLAIN " + sql, _Nulls()).fetchall()


def _value(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def execute(connection: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> int:
    """Runs `sql`, stepping through its rows in chunks; returns the number of rows."""
    cursor = connection.execute(sql, [_value(a) for a in args])
    rows = 0
    while chunk := cursor.fetchmany(_FETCH_ROWS):
        rows += len(chunk)
    cursor.close()
    return rows


def _closed(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc)


def classify_error(exc: BaseException) -> str:
    """ "timeout" for the statement timeout; "connection" for a closed connection; otherwise
    SQLite's extended result code name ("SQLITE_ERROR", "SQLITE_BUSY",
    "SQLITE_CONSTRAINT_PRIMARYKEY"...); "other" for anything else."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if _closed(exc):
        return "connection"
    if isinstance(exc, Rejected):
        return "rejected"
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorname", None) or "other"
    return "other"


def describe_error(exc: BaseException) -> str:
    """`<result code name>: <message>`; SQLite's messages carry no secrets."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        return f"{name}: {first_line(exc)}" if name else first_line(exc)
    if isinstance(exc, StatementTimeout | Rejected):
        return first_line(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SqliteDriver(EmbeddedDriver):
    """SQLite files opened in-process; `target.database` is the file's absolute path."""

    sut_types = SUT_TYPES
    # OperationalError carries refusals (syntax, unknown table) and lock timeouts alike; all
    # are failures of the statement, not of the connection.
    rejections = (
        sqlite3.OperationalError,
        sqlite3.ProgrammingError,
        sqlite3.IntegrityError,
        sqlite3.DataError,
        sqlite3.NotSupportedError,
        Rejected,
    )
    interrupted = (sqlite3.OperationalError,)
    lost = ()

    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        return render(query)

    def session_lost(self, session: Any, error: BaseException) -> bool:
        return super().session_lost(session, error) or _closed(error)

    def _open(self, target: SutTarget, path: Path) -> sqlite3.Connection:
        return open_session(target, path)

    def _close_connection(self, connection: Any) -> None:
        connection.close()

    def _check(self, connection: Any, sql: str) -> None:
        check(connection, sql)

    def _execute(self, connection: Any, sql: str, args: tuple[object, ...]) -> int:
        return execute(connection, sql, args)

    def classify_error(self, error: BaseException) -> str:
        return classify_error(error)

    def describe_error(self, error: BaseException) -> str:
        return describe_error(error)

    async def load_fixture_tables(
        self,
        target: SutTarget,
        storage: Storage,
        loads: Sequence[FixtureTableLoad],
        *,
        run_id: str | None = None,
    ) -> list[TableLoadReport]:
        from crucible_dagster.fixtures import sqlite as fixture_loader

        return await fixture_loader.load_fixture_tables(target, storage, loads, run_id=run_id)
