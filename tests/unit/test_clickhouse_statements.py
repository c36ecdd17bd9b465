"""ClickHouse statement text: literals, identifiers, table DDL, error parsing, error kinds."""

import datetime
import decimal

import httpx
import pyarrow as pa
import pytest
from pydantic import SecretStr

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures import clickhouse as loader
from crucible_dagster.suts import clickhouse
from crucible_dagster.suts.base import SutTarget, sut_identity
from crucible_dagster.suts.driver import driver_for
from crucible_dagster.workload import parse_workload


def _target(timeout_s: float) -> SutTarget:
    identity = sut_identity("clickhouse", "127.0.0.1", 8123, "db")
    return SutTarget(identity, "u", SecretStr("secret"), statement_timeout_s=timeout_s)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "NULL"),
        (True, "1"),
        (False, "0"),
        (42, "42"),
        (-7, "-7"),
        (0.1, "0.1"),
        (1e300, "1e+300"),
        (decimal.Decimal("12.50"), "12.50"),
        (datetime.date(1995, 3, 7), "'1995-03-07'"),
        (datetime.datetime(1995, 3, 7, 8, 9, 10), "'1995-03-07 08:09:10'"),
        ("plain", "'plain'"),
        ("it's", "'it\\'s'"),
        ("back\\slash", "'back\\\\slash'"),
        ("'; DROP TABLE x; --", "'\\'; DROP TABLE x; --'"),
        ("nul\x00byte", "'nul\\0byte'"),
    ],
)
def test_values_render_as_escaped_literals(value: object, expected: str) -> None:
    assert clickhouse.literal(value) == expected


def test_unsupported_parameter_type_is_refused() -> None:
    with pytest.raises(TypeError, match="bytes"):
        clickhouse.literal(b"raw")


def test_render_marks_each_occurrence_and_substitute_fills_them_in_order() -> None:
    text = (
        "-- @type: clickhouse\n-- @name: q\n-- @param: a {type: int, range: [1, 5]}\n"
        "-- @param: s {type: choice, values: [x]}\n"
        "SELECT ':not_a_param', :a, :s, :a\n"
    )
    query = parse_workload(text, source="w.sql", workload_id="w").queries[0]

    sql, order = clickhouse.render(query)

    assert order == ("a", "s", "a")
    assert sql.count(clickhouse.MARKER) == 3
    assert clickhouse.substitute(sql, [3, "it's", 4]) == "SELECT ':not_a_param', 3, 'it\\'s', 4"
    with pytest.raises(TypeError, match="takes 3 arguments"):
        clickhouse.substitute(sql, [1])


def test_backtick_identifiers_escape_backticks_and_backslashes() -> None:
    assert loader.quote_ident("orders") == "`orders`"
    assert loader.quote_ident("a`b\\c") == "`a\\`b\\\\c`"
    with pytest.raises(FixtureError, match="NUL"):
        loader.quote_ident("a\x00b")


@pytest.mark.parametrize("name", ["x`; DROP DATABASE default; --", "a.b", "", "1abc", "a b"])
def test_database_names_that_could_inject_sql_are_refused(name: str) -> None:
    with pytest.raises(FixtureError, match="invalid ClickHouse database name"):
        loader.validate_database_name(name)


def test_create_table_maps_arrow_types_and_keeps_key_columns_plain() -> None:
    schema = pa.schema(
        [
            pa.field("o_orderkey", pa.int64(), nullable=True),
            pa.field("small", pa.int8(), nullable=False),
            pa.field("flag", pa.bool_(), nullable=False),
            pa.field("u", pa.uint32(), nullable=False),
            pa.field("f", pa.float32(), nullable=False),
            pa.field("d", pa.float64(), nullable=True),
            pa.field("price", pa.decimal128(15, 2), nullable=False),
            pa.field("day", pa.date32(), nullable=False),
            pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("name", pa.string_view(), nullable=True),
            pa.field("odd`col", pa.string(), nullable=False),
        ]
    )

    sql = loader.create_table_sql("tpch", "orders", schema, ("o_orderkey",))

    assert sql == (
        "CREATE TABLE `tpch`.`orders` (`o_orderkey` Int64, `small` Int8, `flag` UInt8, "
        "`u` UInt32, `f` Float32, `d` Nullable(Float64), `price` Decimal(15, 2), `day` Date, "
        "`at` DateTime('UTC'), `name` Nullable(String), `odd\\`col` String) "
        "ENGINE = MergeTree ORDER BY (`o_orderkey`)"
    )


def test_tables_outside_tpch_have_no_sorting_key() -> None:
    schema = pa.schema([pa.field("o_orderkey", pa.int64())])
    assert loader.order_key("tpch", "orders", schema) == ("o_orderkey",)
    assert loader.order_key("uploads", "orders", schema) == ()
    sql = loader.create_table_sql("db", "t", schema)
    assert sql.endswith("ENGINE = MergeTree ORDER BY tuple()")


def test_unmappable_column_type_names_column_and_table() -> None:
    schema = pa.schema([pa.field("blob", pa.binary())])
    with pytest.raises(FixtureError, match=r"column 'blob' of table 't'.*binary"):
        loader.create_table_sql("db", "t", schema)


def test_s3_insert_statement_quotes_every_argument() -> None:
    sql = loader.s3_insert_sql(
        "tpch", "orders", "https://s3.example/b/fixtures/tpch/sf1/orders/*.parquet", "AK", "S'K"
    )
    assert sql == (
        "INSERT INTO `tpch`.`orders` SELECT * FROM s3("
        "'https://s3.example/b/fixtures/tpch/sf1/orders/*.parquet', 'AK', 'S\\'K', 'Parquet')"
    )


def test_server_error_text_is_parsed_into_code_and_one_line_message() -> None:
    text = (
        "Code: 60, e.displayText() = DB::Exception: Table default.nope doesn't exist., "
        "e.what() = DB::Exception\n"
    )
    error = clickhouse.parse_error(text, 404)
    assert (error.code, error.message, error.http_status) == (
        60,
        "Table default.nope doesn't exist.",
        404,
    )
    newer = clickhouse.parse_error("Code: 62. DB::Exception: Syntax error: x. (SYNTAX_ERROR) ")
    assert newer.code == 62
    assert clickhouse.parse_error("<html>proxy error</html>", 502).code == 0


def test_exception_appended_to_a_streamed_body_is_found() -> None:
    tail = b"1\n2\n3\nCode: 159, e.displayText() = DB::Exception: Timeout exceeded: elapsed 1 s"
    tail += b", e.what() = DB::Exception\n"
    error = clickhouse._tail_error(tail)
    assert error is not None and error.code == 159
    assert clickhouse._tail_error(b"1\n2\n3\n") is None
    assert clickhouse._tail_error(b"row with Code: 5, e.displayText() = text\n") is None


def test_error_kinds_and_samples() -> None:
    driver = driver_for("clickhouse")
    timeout = clickhouse.ClickHouseError(159, "Timeout exceeded")
    syntax = clickhouse.ClickHouseError(62, "Syntax error")
    assert driver.classify_error(timeout) == "timeout"
    assert driver.classify_error(syntax) == "62"
    assert driver.classify_error(httpx.ReadTimeout("slow")) == "timeout"
    assert driver.classify_error(httpx.RemoteProtocolError("gone")) == "connection"
    assert driver.classify_error(ValueError("x")) == "other"
    assert driver.describe_error(syntax) == "62: Syntax error"
    assert driver.describe_error(httpx.ConnectError("line one\nline two")) == (
        "ConnectError: line one line two"
    )
    assert driver.describe_error(httpx.ReadTimeout("")) == (
        "no reply within the statement timeout (ReadTimeout)"
    )


def test_statement_timeout_rounds_up_to_whole_seconds_and_zero_disables_it() -> None:
    assert clickhouse.server_limit_s(_target(0.5)) == 1
    assert clickhouse.server_limit_s(_target(60)) == 60
    assert clickhouse.server_limit_s(_target(2.1)) == 3
    assert clickhouse.server_limit_s(_target(0)) == 0


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", True),
        ("  -- leading comment\n/* block */ (select 1)", True),
        ("WITH 1 AS x SELECT x", True),
        ("INSERT INTO t SELECT 1", False),
        ("SYSTEM FLUSH LOGS", False),
    ],
)
def test_selects_are_told_apart_from_other_statements(sql: str, expected: bool) -> None:
    assert clickhouse._is_select(sql) is expected


def test_syntax_error_position_becomes_a_line_of_the_query() -> None:
    check = clickhouse._Check(clickhouse._DESCRIBE_PREFIX + "SELECT 1\nFROM\nWHERE\n)", 17)
    offset = len(check.statement.encode()) - len("WHERE\n)") + 1
    assert clickhouse._error_line(check, f"Syntax error: failed at position {offset}") == 3
