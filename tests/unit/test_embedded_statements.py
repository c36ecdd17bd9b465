"""The DuckDB and SQLite drivers' statements, type mappings, paths and error kinds.

The databases are embedded, so the error kinds are taken from real in-memory connections.
"""

import datetime
import decimal
import re
import sqlite3
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from crucible_dagster.errors import FixtureError, SutError
from crucible_dagster.fixtures import duckdb as duck_loader
from crucible_dagster.fixtures import embedded as shared_loader
from crucible_dagster.fixtures import sqlite as lite_loader
from crucible_dagster.suts import duckdb as duck
from crucible_dagster.suts import embedded
from crucible_dagster.suts import sqlite as lite
from crucible_dagster.suts.base import SutTarget, sut_identity
from crucible_dagster.suts.driver import driver_for
from crucible_dagster.workload import parse_workload


def _query(sql: str, params: str = "") -> object:
    text = f"-- @type: sql\n-- @name: q\n{params}{sql}\n"
    return parse_workload(text, source="w.sql", workload_id="w").queries[0]


def _target(sut_type: str, database: str) -> SutTarget:
    return SutTarget(sut_identity(sut_type, "", None, database), "")


_TWO_PARAMS = "-- @param: k {type: int, range: [1, 5]}\n-- @param: n {type: int, range: [1, 5]}\n"


def test_duckdb_and_sqlite_types_get_their_embedded_drivers() -> None:
    assert isinstance(driver_for("duckdb"), duck.DuckDbDriver)
    assert isinstance(driver_for("sqlite"), lite.SqliteDriver)


def test_duckdb_numbers_each_parameter_once_by_first_appearance() -> None:
    query = _query("SELECT * FROM t WHERE a = :k AND b = :n AND c = :k", _TWO_PARAMS)
    assert duck.render(query) == ("SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $1", ("k", "n"))  # type: ignore[arg-type]


def test_sqlite_numbers_each_parameter_once_by_first_appearance() -> None:
    query = _query("SELECT * FROM t WHERE a = :k AND b = :n AND c = :k", _TWO_PARAMS)
    assert lite.render(query) == ("SELECT * FROM t WHERE a = ?1 AND b = ?2 AND c = ?1", ("k", "n"))  # type: ignore[arg-type]


def test_query_without_parameters_is_sent_as_written() -> None:
    query = _query("SELECT '?1', '$1', 100 % 7")
    assert duck.render(query) == ("SELECT '?1', '$1', 100 % 7", ())  # type: ignore[arg-type]
    assert lite.render(query) == ("SELECT '?1', '$1', 100 % 7", ())  # type: ignore[arg-type]


def test_identifiers_are_double_quoted_with_quotes_doubled() -> None:
    assert shared_loader.quote_ident('a"b); DROP TABLE t; --') == '"a""b); DROP TABLE t; --"'
    for bad in ("", "a\x00b", "tab\there", "x" * 256):
        with pytest.raises(FixtureError, match="invalid identifier"):
            shared_loader.quote_ident(bad)


def test_columns_differing_only_in_case_are_refused() -> None:
    schema = pa.schema([("Name", pa.string()), ("name", pa.string())])
    with pytest.raises(FixtureError, match="appears twice"):
        shared_loader.check_columns("t", schema)


def test_create_table_quotes_every_name_and_adds_the_primary_key() -> None:
    schema = pa.schema(
        [pa.field("id", pa.int64(), nullable=True), pa.field('x"y', pa.string(), nullable=False)]
    )
    sql = shared_loader.create_table_sql("t", schema, ["BIGINT", "VARCHAR"], ("id",))
    assert (
        sql
        == 'CREATE TABLE "t" ("id" BIGINT NOT NULL, "x""y" VARCHAR NOT NULL, PRIMARY KEY ("id"))'
    )


def test_arrow_types_map_to_duckdb_types() -> None:
    expected = {
        pa.int8(): "TINYINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.uint64(): "UBIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.decimal128(15, 2): "DECIMAL(15,2)",
        pa.date32(): "DATE",
        pa.timestamp("us"): "TIMESTAMP",
        pa.timestamp("ns"): "TIMESTAMP_NS",
        pa.timestamp("ms", tz="UTC"): "TIMESTAMPTZ",
        pa.time64("us"): "TIME",
        pa.string(): "VARCHAR",
        pa.string_view(): "VARCHAR",
        pa.dictionary(pa.int32(), pa.string()): "VARCHAR",
        pa.binary(): "BLOB",
        pa.bool_(): "BOOLEAN",
    }
    assert {t: duck_loader.duckdb_type(t) for t in expected} == expected
    with pytest.raises(FixtureError, match="wider than DuckDB's DECIMAL"):
        duck_loader.duckdb_type(pa.decimal256(50, 2))
    with pytest.raises(FixtureError, match="no DuckDB mapping"):
        duck_loader.duckdb_type(pa.list_(pa.int32()))


def test_arrow_types_map_to_sqlite_declared_types() -> None:
    expected = {
        pa.int64(): "INTEGER",
        pa.uint8(): "INTEGER",
        pa.float64(): "REAL",
        pa.decimal128(15, 2): "DECIMAL(15,2)",
        pa.date32(): "TEXT",
        pa.timestamp("us", tz="UTC"): "TEXT",
        pa.string_view(): "TEXT",
        pa.binary(): "BLOB",
        pa.bool_(): "BOOLEAN",
    }
    assert {t: lite_loader.sqlite_type(t) for t in expected} == expected
    with pytest.raises(FixtureError, match="no SQLite mapping"):
        lite_loader.sqlite_type(pa.struct([("a", pa.int32())]))


def test_sqlite_gets_decimals_and_temporal_values_as_iso_text() -> None:
    batch = pa.record_batch(
        {
            "price": pa.array([decimal.Decimal("12345678901.25"), None], pa.decimal128(15, 2)),
            "day": pa.array([datetime.date(1995, 3, 15), None]),
            "at": pa.array(
                [datetime.datetime(2020, 1, 2, 3, 4, 5, 123456), None], pa.timestamp("us", "UTC")
            ),
            "flag": pa.array([True, False]),
            "kind": pa.array(["a", "b"]).dictionary_encode(),
        }
    )
    rows = lite_loader.python_rows(batch)
    assert rows == [
        ("12345678901.25", "1995-03-15", "2020-01-02 03:04:05.123456", True, "a"),
        (None, None, None, False, "b"),
    ]


def test_sqlite_insert_numbers_its_placeholders() -> None:
    assert lite_loader.insert_sql("t", ["a", "b"]) == 'INSERT INTO "t" ("a", "b") VALUES (?1, ?2)'


def test_duckdb_insert_selects_named_columns_from_the_source() -> None:
    sql = duck_loader.insert_select_sql("t", ["a", 'b"'], "read_parquet(?)")
    assert sql == 'INSERT INTO "t" ("a", "b""") SELECT "a", "b""" FROM read_parquet(?)'


def test_target_db_must_be_an_absolute_path(tmp_path: Path) -> None:
    with pytest.raises(SutError, match=r"absolute path of the database file, got 'tpch\.db'"):
        embedded.database_file(_target("sqlite", "tpch.db"))
    missing = tmp_path / "nothing.duckdb"
    with pytest.raises(
        SutError, match=re.escape(f"database file {missing} does not exist; load a fixture")
    ):
        embedded.existing_database_file(_target("duckdb", str(missing)))
    with pytest.raises(SutError, match=r"folder .* does not exist"):
        embedded.new_database_file(_target("sqlite", str(tmp_path / "no" / "x.db")))
    assert embedded.new_database_file(_target("sqlite", str(missing))) == missing


def _sqlite_error(sql: str) -> sqlite3.Error:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    connection.execute("INSERT INTO t VALUES (1)")
    try:
        connection.execute(sql)
    except sqlite3.Error as exc:
        return exc
    finally:
        connection.close()
    raise AssertionError(f"{sql} did not fail")


def test_sqlite_errors_are_kinded_by_their_result_code() -> None:
    syntax = _sqlite_error("SELEC 1")
    duplicate = _sqlite_error("INSERT INTO t VALUES (1)")
    assert lite.classify_error(syntax) == "SQLITE_ERROR"
    assert lite.describe_error(syntax) == 'SQLITE_ERROR: near "SELEC": syntax error'
    assert lite.classify_error(duplicate) == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert lite.classify_error(embedded.StatementTimeout(0.5)) == "timeout"
    closed = sqlite3.connect(":memory:")
    closed.close()
    with pytest.raises(sqlite3.ProgrammingError) as error:
        closed.execute("SELECT 1")
    assert lite.classify_error(error.value) == "connection"


def _duckdb_error(sql: str) -> duckdb.Error:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    connection.execute("INSERT INTO t VALUES (1)")
    try:
        connection.execute(sql)
    except duckdb.Error as exc:
        return exc
    finally:
        connection.close()
    raise AssertionError(f"{sql} did not fail")


def test_duckdb_errors_are_kinded_by_their_error_type_on_one_line() -> None:
    assert duck.classify_error(_duckdb_error("SELECT * FROM missing")) == "catalog"
    assert duck.classify_error(_duckdb_error("SELECT nope FROM t")) == "binder"
    assert duck.classify_error(_duckdb_error("SELEC 1")) == "parser"
    assert duck.classify_error(_duckdb_error("INSERT INTO t VALUES (1)")) == "constraint"
    assert duck.classify_error(_duckdb_error("SELECT 'x'::INTEGER")) == "conversion"
    assert duck.classify_error(embedded.StatementTimeout(1.0)) == "timeout"
    described = duck.describe_error(_duckdb_error("SELEC 1"))
    assert described == 'Parser Error: syntax error at or near "SELEC"'


def test_duckdb_check_refuses_several_statements_without_running_any() -> None:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE t (id INTEGER)")
    cursor = duck.SharedCursor(connection.cursor(), Path("/unused"))
    with pytest.raises(embedded.Rejected, match="exactly one statement; found 2"):
        duck.check(cursor, "SELECT 1; INSERT INTO t VALUES (1)")
    duck.check(cursor, "INSERT INTO t VALUES ($1)")
    assert connection.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
