"""The MySQL-protocol driver's statements, names and error kinds, without a server."""

import pyarrow as pa
import pytest
from asyncmy import errors as my_errors

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures import mysql as loader
from crucible_dagster.suts import mysql
from crucible_dagster.suts.driver import driver_for
from crucible_dagster.workload import parse_workload


def _query(sql: str, params: str = "") -> object:
    text = f"-- @type: mysql\n-- @name: q\n{params}{sql}\n"
    return parse_workload(text, source="w.sql", workload_id="w").queries[0]


def test_every_mysql_protocol_type_gets_the_mysql_driver() -> None:
    for sut_type in ("mysql", "mariadb", "doris", "starrocks"):
        assert isinstance(driver_for(sut_type), mysql.MysqlDriver)


def test_parameterised_query_gets_one_placeholder_per_occurrence_and_doubled_percent() -> None:
    query = _query(
        "SELECT * FROM t WHERE a = :k AND name LIKE 'x%' AND b = :k AND c = :n",
        "-- @param: k {type: int, range: [1, 5]}\n-- @param: n {type: int, range: [1, 5]}\n",
    )
    sql, order = mysql.render(query)  # type: ignore[arg-type]
    assert sql == "SELECT * FROM t WHERE a = %s AND name LIKE 'x%%' AND b = %s AND c = %s"
    assert order == ("k", "k", "n")


def test_query_without_parameters_is_sent_as_written() -> None:
    query = _query("SELECT count(*) FROM t WHERE name LIKE '%ab%'")
    assert mysql.render(query) == ("SELECT count(*) FROM t WHERE name LIKE '%ab%'", ())  # type: ignore[arg-type]


def test_native_placeholders_turn_format_marks_back_into_server_syntax() -> None:
    assert mysql.native_placeholders("a = %s AND b LIKE 'x%%'", True) == "a = ? AND b LIKE 'x%'"
    assert mysql.native_placeholders("b LIKE 'x%%'", False) == "b LIKE 'x%%'"


def test_mariadb_preflight_prepares_the_text_from_a_user_variable() -> None:
    statements = mysql.preflight_statements("mariadb", "SELECT %s, '%%'", True)
    assert statements == [
        ("SET @crucible_q = %s", ("SELECT ?, '%'",)),
        ("PREPARE crucible_check FROM @crucible_q", None),
        ("DEALLOCATE PREPARE crucible_check", None),
    ]


def test_doris_preflight_explains_the_query_with_sample_arguments() -> None:
    assert mysql.preflight_statements("doris", "SELECT * FROM t WHERE a = %s", True, (3,)) == [
        ("EXPLAIN SELECT * FROM t WHERE a = %s", (3,))
    ]
    assert mysql.preflight_statements("starrocks", "SELECT '%'", False) == [
        ("EXPLAIN SELECT '%'", None)
    ]


def test_statement_timeout_follows_the_server_flavour() -> None:
    mariadb = mysql.server_flavour("mariadb", "5.5.5-10.11.19-MariaDB-0+deb12u1")
    assert mariadb.timeout_statement(0.5) == "SET SESSION max_statement_time = 0.5"
    assert mariadb.timeout_statement(0) == "SET SESSION max_statement_time = 0"
    # A plan may say mysql while the server is MariaDB; the version string decides.
    assert mysql.server_flavour("mysql", "10.6.1-MariaDB").name == "mariadb"
    real_mysql = mysql.server_flavour("mysql", "8.0.36")
    assert real_mysql.timeout_statement(1.25) == "SET SESSION max_execution_time = 1250"
    assert real_mysql.timeout_statement(0) == "SET SESSION max_execution_time = 0"
    assert mysql.server_flavour("doris", "5.7.99").timeout_statement(0.2) == "SET query_timeout = 1"


def test_errors_are_classified_by_code_timeout_and_connection() -> None:
    assert mysql.classify_error(my_errors.ProgrammingError(1146, "Table 't' doesn't exist")) == (
        "1146"
    )
    assert mysql.classify_error(my_errors.OperationalError(1969, "interrupted")) == "timeout"
    assert mysql.classify_error(my_errors.OperationalError(3024, "exceeded")) == "timeout"
    assert mysql.classify_error(TimeoutError()) == "timeout"
    assert mysql.classify_error(my_errors.OperationalError(2013, "Lost connection")) == (
        "connection"
    )
    assert mysql.classify_error(ConnectionResetError()) == "connection"
    assert mysql.classify_error(ValueError("x")) == "other"
    described = mysql.describe_error(my_errors.ProgrammingError(1064, "syntax near 'SELEC'"))
    assert described == "1064: syntax near 'SELEC'"


def test_backticks_in_identifiers_are_doubled_and_bad_names_refused() -> None:
    assert mysql.quote_identifier("we`ird") == "`we``ird`"
    assert loader.quote_ident("c_name") == "`c_name`"
    for bad in ("", "a\x00b", "trailing ", "x" * 65):
        with pytest.raises(FixtureError):
            loader.quote_ident(bad)
    for bad in ("a.b", "a/b", "a\\b"):
        with pytest.raises(FixtureError):
            loader.validate_database_name(bad)


def test_create_table_maps_arrow_types_and_adds_the_primary_key() -> None:
    schema = pa.schema(
        [
            pa.field("c_custkey", pa.int64(), nullable=False),
            pa.field("c_name", pa.string()),
            pa.field("c_acctbal", pa.decimal128(15, 2)),
            pa.field("o_date", pa.date32()),
            pa.field("c_comment", pa.large_string()),
            pa.field("flag", pa.bool_()),
            pa.field("ts", pa.timestamp("us", tz="UTC")),
        ]
    )
    sql = loader.create_table_sql(
        "customer", schema, {"c_name": 25, "c_comment": 5000}, ("c_custkey",)
    )
    assert sql == (
        "CREATE TABLE `customer` (`c_custkey` BIGINT NOT NULL, `c_name` VARCHAR(32), "
        "`c_acctbal` DECIMAL(15,2), `o_date` DATE, `c_comment` TEXT, `flag` BOOLEAN, "
        "`ts` DATETIME(6), PRIMARY KEY (`c_custkey`)) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )


def test_string_columns_are_sized_from_their_longest_value() -> None:
    assert loader.string_type(0) == "VARCHAR(16)"
    assert loader.string_type(117) == "VARCHAR(128)"
    assert loader.string_type(1024) == "VARCHAR(1024)"
    assert loader.string_type(1025) == "TEXT"
    assert loader.string_type(20_000) == "MEDIUMTEXT"


def test_types_without_a_mysql_mapping_are_refused_with_the_column() -> None:
    schema = pa.schema([pa.field("blob", pa.list_(pa.int32()))])
    with pytest.raises(FixtureError, match="column 'blob' of table 't'"):
        loader.create_table_sql("t", schema, {})
    with pytest.raises(FixtureError, match="DECIMAL"):
        loader.mysql_type(pa.decimal256(70, 2))


def test_insert_template_quotes_every_name() -> None:
    assert loader.insert_sql("t`x", ["a", "b`c"]) == (
        "INSERT INTO `t``x` (`a`, `b``c`) VALUES (%s, %s)"
    )
