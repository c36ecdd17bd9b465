"""What the embedded SUTs (DuckDB and SQLite) share: the database file, sessions on threads,
statement timeouts by interruption, and the preflight.

An embedded database runs inside the generator's process, and its calls block. Each session is
one connection with one thread of its own, so `concurrency` sessions execute at once and a
connection is only ever used by one thread at a time. `target.database` is the absolute path of
the database file; the host, port, user and password of the target mean nothing here.
"""

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from crucible_dagster.errors import Location, Problem, SutError, ValidationError
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.suts.driver import Execute, SutDriver, WorkloadQuery

T = TypeVar("T")


class StatementTimeout(TimeoutError):
    """An execution interrupted because it ran past the target's statement timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"statement interrupted after the {timeout_s:g}s statement timeout")


class Rejected(Exception):
    """A statement the driver refuses before the database sees it (several statements in one
    query)."""


def database_file(target: SutTarget) -> Path:
    """The target's database file; SutError unless `target.database` is an absolute path."""
    name = target.database
    if not name or "\x00" in name or not Path(name).is_absolute():
        raise SutError(
            f"{target.identity.sut_type}: target_db must be the absolute path of the database "
            f"file, got {name!r}"
        )
    return Path(name)


def describe_target(target: SutTarget) -> str:
    """The SUT as messages name it: its type and database file."""
    return f"{target.identity.sut_type} database {target.database}"


def existing_database_file(target: SutTarget) -> Path:
    """The database file, which must exist (sessions and the preflight never create it)."""
    path = database_file(target)
    if not path.exists():
        raise SutError(
            f"{target.identity.sut_type}: database file {path} does not exist; load a fixture "
            "first or check target_db"
        )
    if not path.is_file():
        raise SutError(f"{target.identity.sut_type}: {path} is not a database file")
    return path


def new_database_file(target: SutTarget) -> Path:
    """The database file a fixture load may create: its folder must exist."""
    path = database_file(target)
    if not path.parent.is_dir():
        raise SutError(
            f"{target.identity.sut_type}: cannot create database file {path}: folder "
            f"{path.parent} does not exist"
        )
    if path.exists() and not path.is_file():
        raise SutError(f"{target.identity.sut_type}: {path} is not a database file")
    return path


def quote_identifier(name: str) -> str:
    """An identifier in double quotes, embedded quotes doubled (DuckDB and SQLite alike)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}: empty or containing a NUL character")
    return '"' + name.replace('"', '""') + '"'


def first_line(exc: BaseException) -> str:
    """An error's message on one line: DuckDB adds the statement and a caret below it."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class EmbeddedSession:
    """One connection with its own thread; executions past `timeout_s` are interrupted."""

    def __init__(self, connection: Any, executor: ThreadPoolExecutor, timeout_s: float) -> None:
        self.connection = connection
        self.executor = executor
        self.timeout_s = timeout_s
        self.closed = False
        self._running: object | None = None

    async def call(self, function: Callable[..., T], *args: object) -> T:
        """Runs `function(*args)` on the session's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, function, *args)

    async def run(
        self,
        function: Callable[..., T],
        *args: object,
        interrupted: tuple[type[BaseException], ...],
    ) -> T:
        """Runs one execution on the session's thread, interrupting it at the timeout.

        The timer lives on the event loop, which also starts and ends each execution, so it can
        only interrupt the execution it was set for. An execution cancelled by the engine is
        interrupted too, so its thread does not go on working for nobody.
        """
        loop = asyncio.get_running_loop()
        token = self._running = object()
        fired = False

        def expire() -> None:
            nonlocal fired
            if self._running is token:
                fired = True
                self.interrupt()

        handle = loop.call_later(self.timeout_s, expire) if self.timeout_s > 0 else None
        try:
            return await loop.run_in_executor(self.executor, function, *args)
        except asyncio.CancelledError:
            self.interrupt()
            raise
        except interrupted as exc:
            if fired:
                raise StatementTimeout(self.timeout_s) from exc
            raise
        finally:
            self._running = None
            if handle is not None:
                handle.cancel()

    def interrupt(self) -> None:
        # Both libraries allow interrupting a connection from another thread.
        with contextlib.suppress(Exception):
            self.connection.interrupt()


class EmbeddedDriver(SutDriver):
    """The session, prepare and preflight flow both embedded SUTs share."""

    # The exceptions an interrupted execution raises.
    interrupted: ClassVar[tuple[type[BaseException], ...]]
    # The exceptions that mean the connection itself is gone.
    lost: ClassVar[tuple[type[BaseException], ...]]

    @abstractmethod
    def _open(self, target: SutTarget, path: Path) -> Any:
        """Opens a connection on the session's thread; raises SutError saying why not."""

    @abstractmethod
    def _close_connection(self, connection: Any) -> None:
        """Closes a connection on the session's thread."""

    @abstractmethod
    def _check(self, connection: Any, sql: str) -> None:
        """Compiles `sql` without running it; raises the database's error when it is refused."""

    @abstractmethod
    def _execute(self, connection: Any, sql: str, args: tuple[object, ...]) -> int:
        """Runs `sql` to its last row, discarding rows as they come; returns the row count."""

    async def connect(self, target: SutTarget) -> EmbeddedSession:
        path = existing_database_file(target)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"crucible-{self.name}")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(executor, self._open, target, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return EmbeddedSession(connection, executor, target.statement_timeout_s)

    async def prepare(self, session: EmbeddedSession, sql: str) -> Execute:
        """Checks `sql` on the session (a refusal raises one of `rejections`) and returns an
        awaitable that runs it to its last row and returns the row count."""
        await session.call(self._check, session.connection, sql)
        run, execute, interrupted = session.run, self._execute, self.interrupted
        connection = session.connection

        async def statement(*args: object) -> object:
            return await run(execute, connection, sql, args, interrupted=interrupted)

        return statement

    def session_lost(self, session: EmbeddedSession, error: BaseException) -> bool:
        return session.closed or isinstance(error, self.lost)

    def is_closed(self, session: EmbeddedSession) -> bool:
        return session.closed

    async def close(self, session: EmbeddedSession) -> None:
        if session.closed:
            return
        await asyncio.wrap_future(self._release(session))

    def terminate(self, session: EmbeddedSession) -> None:
        if not session.closed:
            self._release(session)

    def _release(self, session: EmbeddedSession) -> "Future[None]":
        """Closes the connection on its thread, behind an execution that is interrupted first
        (sessions close only once the engine stopped issuing)."""
        session.closed = True
        session.interrupt()
        closing = session.executor.submit(self._close_connection, session.connection)
        session.executor.shutdown(wait=False)
        return closing

    async def preflight(self, target: SutTarget, queries: Sequence[WorkloadQuery]) -> None:
        """Compiles every query on the database file without running it; reports every
        rejection at once, located at its workload file and line."""
        session = await self.connect(target)
        problems: list[Problem] = []
        try:
            for query in queries:
                try:
                    await session.call(self._check, session.connection, query.sql)
                except self.rejections as exc:
                    message = (
                        f"query '{query.name}' was rejected by {describe_target(target)}: "
                        f"{self.describe_error(exc)}"
                    )
                    problems.append(
                        Problem(Location(query.source, query.line), message, field=query.name)
                    )
        finally:
            await self.close(session)
        if problems:
            raise ValidationError(problems)

    @property
    def name(self) -> str:
        return self.sut_types[0]
