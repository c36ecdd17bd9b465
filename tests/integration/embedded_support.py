"""Helpers for the DuckDB and SQLite tests: targets on a file, and reading that file back."""

import sqlite3
from pathlib import Path

import duckdb

from crucible_dagster.engine import EngineQuery
from crucible_dagster.engine.model import EngineParam
from crucible_dagster.fixtures.loading import FixtureTableLoad
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.suts.base import SutTarget, sut_identity

EMBEDDED_TYPES = ("duckdb", "sqlite")


def embedded_target(sut_type: str, path: Path, statement_timeout_s: float = 60.0) -> SutTarget:
    """A target on the database file `path`; the user and password mean nothing here."""
    identity = sut_identity(sut_type, "", None, str(path))
    return SutTarget(identity, "ignored", statement_timeout_s=statement_timeout_s)


def read_rows(sut_type: str, path: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:
    """Rows of `sql` on the file, through a connection of the test's own, closed at once."""
    if sut_type == "duckdb":
        connection = duckdb.connect(str(path))
        try:
            return [tuple(r) for r in connection.execute(sql, list(args)).fetchall()]
        finally:
            connection.close()
    lite = sqlite3.connect(path)
    try:
        return [tuple(r) for r in lite.execute(sql, args).fetchall()]
    finally:
        lite.close()


def run_sql(sut_type: str, path: Path, *statements: str) -> None:
    if sut_type == "duckdb":
        connection = duckdb.connect(str(path))
        try:
            for statement in statements:
                connection.execute(statement)
        finally:
            connection.close()
        return
    lite = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            lite.execute(statement)
    finally:
        lite.close()


def tpch_loads(*tables: str, reload: str = "auto") -> list[FixtureTableLoad]:
    return [
        FixtureTableLoad(FixtureRef("tpch", "0.01", t), t, reload=reload)  # type: ignore[arg-type]
        for t in tables
    ]


def workload_query(
    name: str, sql: str, line: int = 1, params: tuple[EngineParam, ...] = ()
) -> EngineQuery:
    return EngineQuery(name, sql, "workloads/embedded.sql", line, params=params)
