"""What the native engine needs of a SUT family, and which family serves which SUT type.

A driver opens sessions, prepares statements and says what a failure means. The engine holds
sessions and statements as opaque objects: a prepared statement is an awaitable callable that
takes the query's arguments and runs it to its last row, so the hot loop makes one call per
execution whatever the SUT.
"""

import importlib
import random
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Protocol

from crucible_dagster.errors import SutError
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.params import ParamSpec, make_generator
from crucible_dagster.storage import Storage
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.workload import Query

Execute = Callable[..., Awaitable[object]]


class QueryParameter(Protocol):
    """What a preflight needs of a parameter (the engine's EngineParam has these fields)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> ParamSpec: ...
    @property
    def values(self) -> tuple[object, ...] | None: ...


class WorkloadQuery(Protocol):
    """What a preflight needs of a query (the engine's EngineQuery has these fields)."""

    @property
    def name(self) -> str: ...
    @property
    def sql(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def params(self) -> Sequence[QueryParameter]: ...
    @property
    def positions(self) -> tuple[int, ...] | None: ...


def sample_arguments(query: WorkloadQuery) -> list[object]:
    """One plausible argument list for a query, for checks that must send values: a column
    parameter's first value, a choice's first value, else the first value of a fixed seed."""
    values = [_sample_value(param) for param in query.params]
    if query.positions is None:
        return values
    return [values[index] for index in query.positions]


def _sample_value(param: QueryParameter) -> object:
    if param.values:
        return param.values[0]
    choices = getattr(param.spec, "values", None)
    if isinstance(choices, list) and choices:
        return choices[0]
    return make_generator(param.spec, random.Random(0))()


class SutDriver(ABC):
    """One SUT family's native driver."""

    sut_types: ClassVar[tuple[str, ...]]
    workload_types: ClassVar[tuple[str, ...]] = ("sql",)
    # Exceptions by which the SUT refuses a statement (syntax, unknown table...): a failed
    # execution of that query, not a lost session.
    rejections: ClassVar[tuple[type[BaseException], ...]]

    @abstractmethod
    def render(self, query: Query) -> tuple[str, tuple[str, ...]]:
        """The query's SQL in the driver's placeholder syntax, and the parameter names in
        argument order."""

    @abstractmethod
    async def connect(self, target: SutTarget) -> Any:
        """Opens one session; raises SutError saying why it could not."""

    @abstractmethod
    async def prepare(self, session: Any, sql: str) -> Execute:
        """Prepares `sql` on the session where the SUT supports it."""

    @abstractmethod
    def session_lost(self, session: Any, error: BaseException) -> bool:
        """Whether `error` left the session unusable, so that it must be replaced."""

    @abstractmethod
    def is_closed(self, session: Any) -> bool: ...

    @abstractmethod
    async def close(self, session: Any) -> None:
        """Closes the session politely, or abruptly when that does not finish at once."""

    @abstractmethod
    def terminate(self, session: Any) -> None:
        """Drops the session at once, without waiting for the SUT."""

    @abstractmethod
    def classify_error(self, error: BaseException) -> str:
        """The kind of a failed execution: a SQLSTATE class or the SUT's code family,
        "timeout", "connection" or "other"."""

    @abstractmethod
    def describe_error(self, error: BaseException) -> str:
        """A one-line sample of a failed execution, without secrets."""

    @abstractmethod
    async def preflight(self, target: SutTarget, queries: Sequence[Any]) -> None:
        """Checks every query on the SUT without running it; raises ValidationError with
        every rejected query located in its workload, or SutError if the SUT is unreachable."""

    @abstractmethod
    async def load_fixture_tables(
        self,
        target: SutTarget,
        storage: Storage,
        loads: Sequence[FixtureTableLoad],
        *,
        run_id: str | None = None,
    ) -> list[TableLoadReport]:
        """Loads fixture tables from storage in bounded memory, creating the target database if
        it is missing; skips tables already holding the same data version (see
        `fixtures.loading`)."""


def tls_context(target: SutTarget) -> ssl.SSLContext | None:
    """The TLS context the target asks for; a CA or certificate file that cannot be read is a
    SutError naming it."""
    if target.tls is None:
        return None
    try:
        return target.tls.context()
    except (OSError, ssl.SSLError) as exc:
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise SutError(
            f"{target.identity.key}: cannot use the TLS files of cluster_info.tls "
            f"({target.tls.ca_file or target.tls.cert_file}): {detail}"
        ) from None


def driver_for(sut_type: str) -> SutDriver:
    """The native driver of a SUT type; SutError names the supported ones otherwise."""
    drivers = _drivers()
    driver = drivers.get(sut_type)
    if driver is None:
        raise SutError(
            f"the native engine has no driver for {sut_type} yet; it drives "
            f"{', '.join(sorted(drivers))}"
        )
    return driver


def supported_sut_types() -> tuple[str, ...]:
    return tuple(sorted(_drivers()))


# Each family's driver as (module, class). Imported on first use: each module imports its client
# library, which only a run needs.
DRIVER_CLASSES: tuple[tuple[str, str], ...] = (
    ("crucible_dagster.suts.postgresql", "PostgresDriver"),
    ("crucible_dagster.suts.mysql", "MysqlDriver"),
    ("crucible_dagster.suts.clickhouse", "ClickHouseDriver"),
    ("crucible_dagster.suts.cassandra", "CassandraDriver"),
    ("crucible_dagster.suts.trino", "TrinoDriver"),
    ("crucible_dagster.suts.duckdb", "DuckDbDriver"),
    ("crucible_dagster.suts.sqlite", "SqliteDriver"),
)


def _drivers() -> dict[str, SutDriver]:
    found: dict[str, SutDriver] = {}
    for module_name, class_name in DRIVER_CLASSES:
        driver = getattr(importlib.import_module(module_name), class_name)()
        found.update(dict.fromkeys(driver.sut_types, driver))
    return found
