import pyarrow as pa
import pytest

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures.postgresql import (
    FixtureTableLoad,
    create_table_sql,
    postgres_type,
    quote_ident,
)
from crucible_dagster.fixtures.refs import FixtureRef


@pytest.mark.parametrize(
    ("arrow_type", "expected"),
    [
        (pa.int16(), "smallint"),
        (pa.int32(), "integer"),
        (pa.int64(), "bigint"),
        (pa.uint32(), "bigint"),
        (pa.uint64(), "numeric(20,0)"),
        (pa.decimal128(15, 2), "numeric(15,2)"),
        (pa.decimal256(40, 10), "numeric(40,10)"),
        (pa.date32(), "date"),
        (pa.date64(), "date"),
        (pa.string(), "text"),
        (pa.large_string(), "text"),
        (pa.string_view(), "text"),
        (pa.dictionary(pa.int32(), pa.string()), "text"),
        (pa.float32(), "real"),
        (pa.float64(), "double precision"),
        (pa.bool_(), "boolean"),
        (pa.timestamp("us"), "timestamp without time zone"),
        (pa.timestamp("ns", tz="UTC"), "timestamp with time zone"),
        (pa.time64("us"), "time without time zone"),
    ],
)
def test_arrow_types_map_to_postgresql_types(arrow_type: pa.DataType, expected: str) -> None:
    assert postgres_type(arrow_type) == expected


@pytest.mark.parametrize("arrow_type", [pa.list_(pa.int32()), pa.binary(), pa.struct([])])
def test_types_without_a_mapping_are_fixture_errors(arrow_type: pa.DataType) -> None:
    with pytest.raises(FixtureError, match="no PostgreSQL mapping"):
        postgres_type(arrow_type)


def test_create_table_quotes_every_identifier_and_keeps_not_null() -> None:
    schema = pa.schema(
        [
            pa.field("o_orderkey", pa.int64(), nullable=False),
            pa.field('weird"; drop table x; --', pa.string()),
        ]
    )

    sql = create_table_sql("orders", schema)

    assert sql == (
        'CREATE TABLE "orders" ("o_orderkey" bigint NOT NULL, "weird""; drop table x; --" text)'
    )


def test_unsupported_column_is_named_in_the_error() -> None:
    schema = pa.schema([pa.field("payload", pa.binary())])

    with pytest.raises(FixtureError, match="column 'payload' of table 't'"):
        create_table_sql("t", schema)


def test_quote_ident_refuses_nul() -> None:
    assert quote_ident('a"b') == '"a""b"'
    with pytest.raises(FixtureError):
        quote_ident("a\x00b")


@pytest.mark.parametrize("table", ['orders"; drop', "Orders", "1orders", "", "public.orders"])
def test_target_table_names_are_validated(table: str) -> None:
    with pytest.raises(FixtureError):
        FixtureTableLoad(FixtureRef("tpch", "1", "orders"), table)


def test_reload_policy_is_validated() -> None:
    with pytest.raises(FixtureError, match="reload"):
        FixtureTableLoad(FixtureRef("tpch", "1", "orders"), "orders", reload="never")  # type: ignore[arg-type]
