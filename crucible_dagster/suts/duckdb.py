"""DuckDB, embedded: sessions are cursors of one shared connection per database file.

A DuckDB file can be open read-write in one process only, so each process keeps one connection
per file and hands every session a cursor of it; the connection closes with its last cursor, so
the process that loads fixtures and checks the workload lets go of the file before the shard
process opens it. Queries take `$1`, `$2`... parameters; nothing is spliced into SQL.
"""

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

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

SUT_TYPES = ("duckdb",)
# Result rows are drained as Arrow batches of this many rows: cheap, and memory stays flat.
_BATCH_ROWS = 8192
_CHECK_STATEMENT = "crucible_check"
# Only these statements can be prepared by DuckDB; the others are checked by parsing alone.
_PREPARABLE = frozenset(
    {
        duckdb.StatementType.SELECT,
        duckdb.StatementType.INSERT,
        duckdb.StatementType.UPDATE,
        duckdb.StatementType.DELETE,
        duckdb.StatementType.MERGE_INTO,
    }
)
# A run must not reach the network to fetch an extension a query happens to name.
_CONFIG = {"autoinstall_known_extensions": False}


def render(query: Query) -> tuple[str, tuple[str, ...]]:
    """The query's SQL with `$1`, `$2`... for its parameters, and their names in that order."""
    return query.render(lambda number: f"${number}", numbered=True)


# -- the shared connection ----------------------------------------------------------------------


@dataclass
class _Shared:
    connection: duckdb.DuckDBPyConnection
    users: int = 0


@dataclass
class SharedCursor:
    """A session's cursor and the database file whose shared connection it belongs to."""

    cursor: duckdb.DuckDBPyConnection
    path: Path
    released: bool = field(default=False)

    def interrupt(self) -> None:
        self.cursor.interrupt()


_shared_lock = threading.Lock()
_shared: dict[Path, _Shared] = {}


def open_cursor(target: SutTarget, path: Path) -> SharedCursor:
    """A cursor of this process's connection to `path`, opening it (and the file) if needed."""
    key = path.resolve()
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            try:
                connection = duckdb.connect(str(key), config=_CONFIG)  # type: ignore[arg-type]
            except duckdb.Error as exc:
                raise _open_error(target, key, exc) from None
            entry = _shared[key] = _Shared(connection)
        cursor = entry.connection.cursor()
        entry.users += 1
    return SharedCursor(cursor, key)


def close_cursor(shared: SharedCursor) -> None:
    """Closes a cursor; the last one of a file closes the connection and releases the file."""
    with _shared_lock:
        if shared.released:
            return
        shared.released = True
        shared.cursor.close()
        entry = _shared.get(shared.path)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del _shared[shared.path]
            entry.connection.close()


def open_files() -> list[Path]:
    """The database files this process holds open."""
    with _shared_lock:
        return sorted(_shared)


def _open_error(target: SutTarget, path: Path, exc: duckdb.Error) -> SutError:
    message = first_line(exc)
    key = target.identity.sut_type
    if _is_sqlite_file(path):
        # DuckDB would reach for its sqlite extension and report that it is missing.
        return SutError(
            f"{key}: {path} is a SQLite database, not a DuckDB one; use component_spec.type "
            "sqlite for it, or another target_db"
        )
    if "lock" in message.lower():
        return SutError(f"{key}: database file {path} is in use by another process: {message}")
    return SutError(f"{key}: cannot open database file {path}: {message}")


def _is_sqlite_file(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


# -- statements ---------------------------------------------------------------------------------


def check(cursor: SharedCursor, sql: str) -> None:
    """Parses `sql`, then prepares it where DuckDB can, which binds every table and column
    without running anything."""
    statements = cursor.cursor.extract_statements(sql)
    if len(statements) != 1:
        raise Rejected(f"a query must hold exactly one statement; found {len(statements)}")
    if statements[0].type not in _PREPARABLE:
        return
    cursor.cursor.execute(f"PREPARE {_CHECK_STATEMENT} AS {sql}")
    cursor.cursor.execute(f"DEALLOCATE {_CHECK_STATEMENT}")


def execute(cursor: SharedCursor, sql: str, args: tuple[object, ...]) -> int:
    """Runs `sql` and drains its result as Arrow batches; returns the number of rows."""
    if args:
        cursor.cursor.execute(sql, list(args))
    else:
        cursor.cursor.execute(sql)
    return sum(batch.num_rows for batch in cursor.cursor.to_arrow_reader(_BATCH_ROWS))


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def classify_error(exc: BaseException) -> str:
    """ "timeout" for the statement timeout; "connection" for a closed connection; otherwise
    DuckDB's error type as its messages name it ("catalog", "binder", "parser", "constraint",
    "conversion", "transaction"...); "other" for anything else."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, duckdb.ConnectionException | duckdb.FatalException):
        return "connection"
    if isinstance(exc, Rejected):
        return "rejected"
    if isinstance(exc, duckdb.Error):
        name = type(exc).__name__
        for suffix in ("Exception", "Error"):
            name = name.removesuffix(suffix)
        return _snake(name) or "other"
    return "other"


def describe_error(exc: BaseException) -> str:
    """DuckDB's message, first line only (it carries no secrets)."""
    if isinstance(exc, duckdb.Error | StatementTimeout | Rejected):
        return first_line(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- the driver ---------------------------------------------------------------------------------


class DuckDbDriver(EmbeddedDriver):
    """DuckDB files opened in-process; `target.database` is the file's absolute path."""

    sut_types = SUT_TYPES
    rejections = (
        duckdb.ProgrammingError,
        duckdb.DataError,
        duckdb.IntegrityError,
        duckdb.NotSupportedError,
        Rejected,
    )
    interrupted = (duckdb.InterruptException,)
    lost = (duckdb.ConnectionException, duckdb.FatalException)

    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        return render(query)

    def _open(self, target: SutTarget, path: Path) -> SharedCursor:
        return open_cursor(target, path)

    def _close_connection(self, connection: Any) -> None:
        close_cursor(connection)

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
        # Imported here: the loader imports this module for its connection.
        from crucible_dagster.fixtures import duckdb as fixture_loader

        return await fixture_loader.load_fixture_tables(target, storage, loads, run_id=run_id)
