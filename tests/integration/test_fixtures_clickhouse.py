"""The ClickHouse fixture loader against a real ClickHouse 18.16 and generated TPC-H data."""

import asyncio
import datetime
import decimal
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from crucible_dagster.errors import FixtureError, SutError
from crucible_dagster.fixtures.clickhouse import LOADING_SUFFIX, load_fixture_tables
from crucible_dagster.fixtures.loading import STATE_TABLE, FixtureTableLoad, TableLoadReport
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.storage import LocalStorage, Storage
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests import servers_clickhouse
from tests.servers_clickhouse import CH_PASSWORD, ClickHouseServer

pytestmark = pytest.mark.integration

clickhouse = servers_clickhouse.clickhouse

TABLES = ("region", "nation", "customer", "orders")
ORDERS = FixtureRef("tpch", "0.01", "orders")


@pytest.fixture
def ch_target(clickhouse: ClickHouseServer) -> Iterator[SutTarget]:
    """A target database that does not exist yet (the loader creates it); dropped after."""
    database = "f_" + secrets.token_hex(6)
    identity = sut_identity("clickhouse", clickhouse.host, clickhouse.http_port, database)
    yield SutTarget(identity, clickhouse.user, SecretStr(CH_PASSWORD))
    clickhouse.query(f"DROP DATABASE IF EXISTS {database}")


def _load(
    target: SutTarget, storage: Storage, loads: list[FixtureTableLoad], **kwargs: Any
) -> list[TableLoadReport]:
    return asyncio.run(load_fixture_tables(target, storage, loads, **kwargs))


def _scalar(server: ClickHouseServer, target: SutTarget, sql: str) -> str:
    return server.query(sql, database=target.database).removesuffix("\n")


def _tables(server: ClickHouseServer, target: SutTarget) -> set[str]:
    return set(server.query("SHOW TABLES", database=target.database).split())


def _default_database_exists(server: ClickHouseServer) -> bool:
    return server.query("SELECT count() FROM system.databases WHERE name = 'default'") == "1\n"


def _uploaded(tmp_path: Path, name: str, tables: dict[str, list[pa.Table | bytes]]) -> LocalStorage:
    """An uploaded fixture (no manifest): the given files per table, as written."""
    storage = LocalStorage(tmp_path / name)
    for table, parts in tables.items():
        for number, part in enumerate(parts):
            local = tmp_path / f"{name}-{table}-{number}.parquet"
            if isinstance(part, bytes):
                local.write_bytes(part)
            else:
                pq.write_table(part, local)
            storage.put_file(f"fixtures/tpch/sf0.01/{table}/part-{number}.parquet", local)
    return storage


def _orders(source: LocalStorage, tmp_path: Path) -> pa.Table:
    local = tmp_path / "orders-original.parquet"
    source.download_file(ORDERS.prefix + "part-0.parquet", local)
    return pq.read_table(local)


def test_tpch_tables_load_with_matching_rows_values_and_sorting_key(
    clickhouse: ClickHouseServer,
    ch_target: SutTarget,
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
    tmp_path: Path,
) -> None:
    storage, manifest = tpch_sf001
    loads = [FixtureTableLoad(FixtureRef("tpch", "0.01", t), t) for t in TABLES]

    reports = _load(ch_target, storage, loads, run_id="demo_20260101-0000_0badc0de")

    assert [r.action for r in reports] == ["loaded"] * len(TABLES)
    for table in TABLES:
        count = _scalar(clickhouse, ch_target, f"SELECT count() FROM {table}")
        assert int(count) == manifest.tables[table].rows, table
    orders = _orders(storage, tmp_path)
    total = _scalar(clickhouse, ch_target, "SELECT toString(sum(o_totalprice)) FROM orders")
    assert decimal.Decimal(total) == decimal.Decimal(str(pc.sum(orders["o_totalprice"]).as_py()))
    latest = _scalar(clickhouse, ch_target, "SELECT toString(max(o_orderdate)) FROM orders")
    assert latest == pc.max(orders["o_orderdate"]).as_py().isoformat()
    comment = _scalar(clickhouse, ch_target, "SELECT o_comment FROM orders WHERE o_orderkey = 1")
    expected = orders["o_comment"][pc.index(orders["o_orderkey"], 1).as_py()].as_py()
    assert comment == expected
    create = clickhouse.query("SHOW CREATE TABLE orders", database=ch_target.database)
    assert "ORDER BY o_orderkey" in create.replace("`", "")
    state = json.loads(
        clickhouse.query(
            f"SELECT * FROM {STATE_TABLE} WHERE table_name = 'orders' FORMAT JSONEachRow",
            database=ch_target.database,
        )
    )
    assert (state["rows"], state["source_table"], state["scale"]) == ("15000", "orders", "0.01")
    assert state["loaded_by_run"] == "demo_20260101-0000_0badc0de"
    assert _tables(clickhouse, ch_target) == {*TABLES, STATE_TABLE}


def test_second_load_of_same_data_version_is_skipped(
    clickhouse: ClickHouseServer,
    ch_target: SutTarget,
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
) -> None:
    storage, manifest = tpch_sf001
    loads = [FixtureTableLoad(ORDERS, "orders"), FixtureTableLoad(ORDERS, "orders_copy")]
    first = _load(ch_target, storage, loads)
    states = f"SELECT count() FROM {STATE_TABLE}"

    second = _load(ch_target, storage, loads, manifests=[manifest])

    assert [r.action for r in first] == ["loaded", "loaded"]
    assert [r.action for r in second] == ["skipped", "skipped"]
    assert [r.rows for r in second] == [15000, 15000]
    assert second[0].data_version == first[0].data_version
    assert _scalar(clickhouse, ch_target, states) == "2"


def test_reload_always_replaces_the_table_and_another_version_needs_it(
    clickhouse: ClickHouseServer,
    ch_target: SutTarget,
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
    tmp_path: Path,
) -> None:
    storage, _ = tpch_sf001
    _load(ch_target, storage, [FixtureTableLoad(ORDERS, "orders")])
    smaller = _uploaded(tmp_path, "smaller", {"orders": [_orders(storage, tmp_path).slice(0, 100)]})

    with pytest.raises(FixtureError, match="set reload: always"):
        _load(ch_target, smaller, [FixtureTableLoad(ORDERS, "orders")])
    assert _scalar(clickhouse, ch_target, "SELECT count() FROM orders") == "15000"

    again = _load(ch_target, storage, [FixtureTableLoad(ORDERS, "orders", reload="always")])
    assert again[0].action == "loaded"
    assert again[0].replaced_data_version == again[0].data_version

    replaced = _load(ch_target, smaller, [FixtureTableLoad(ORDERS, "orders", reload="always")])
    assert replaced[0].action == "loaded" and replaced[0].rows == 100
    assert _scalar(clickhouse, ch_target, "SELECT count() FROM orders") == "100"
    assert _tables(clickhouse, ch_target) == {"orders", STATE_TABLE}
    skipped = _load(ch_target, smaller, [FixtureTableLoad(ORDERS, "orders")])
    assert skipped[0].action == "skipped" and skipped[0].rows == 100


def test_table_not_made_by_crucible_is_refused_and_left_untouched(
    clickhouse: ClickHouseServer,
    ch_target: SutTarget,
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
) -> None:
    storage, _ = tpch_sf001
    clickhouse.query(f"CREATE DATABASE {ch_target.database}")
    clickhouse.query(f"CREATE TABLE {ch_target.database}.orders (x UInt8) ENGINE = Memory")
    clickhouse.query(f"INSERT INTO {ch_target.database}.orders VALUES (7)")

    for reload in ("auto", "always"):
        with pytest.raises(FixtureError, match="was not created by Crucible"):
            _load(ch_target, storage, [FixtureTableLoad(ORDERS, "orders", reload=reload)])

    assert _scalar(clickhouse, ch_target, "SELECT x FROM orders") == "7"


def test_load_that_fails_halfway_leaves_no_table_under_the_real_name(
    clickhouse: ClickHouseServer,
    ch_target: SutTarget,
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
    tmp_path: Path,
) -> None:
    storage, _ = tpch_sf001
    broken = _uploaded(
        tmp_path, "broken", {"orders": [_orders(storage, tmp_path), b"this is not parquet"]}
    )

    with pytest.raises(FixtureError, match="is not a readable Parquet file"):
        _load(ch_target, broken, [FixtureTableLoad(ORDERS, "orders")])
    assert _tables(clickhouse, ch_target) == {STATE_TABLE}

    _load(ch_target, storage, [FixtureTableLoad(ORDERS, "orders")])
    with pytest.raises(FixtureError, match="is not a readable Parquet file"):
        _load(ch_target, broken, [FixtureTableLoad(ORDERS, "orders", reload="always")])
    assert _tables(clickhouse, ch_target) == {"orders", STATE_TABLE}
    assert "orders" + LOADING_SUFFIX not in _tables(clickhouse, ch_target)
    assert _scalar(clickhouse, ch_target, "SELECT count() FROM orders") == "15000"


def test_rows_the_server_refuses_fail_the_load_with_its_message(
    clickhouse: ClickHouseServer, ch_target: SutTarget, tmp_path: Path
) -> None:
    # A NULL in the sorting key, which 18.16 keeps non-nullable.
    keys = pa.table({"o_orderkey": pa.array([1, None], pa.int64())})
    bad = _uploaded(tmp_path, "nullkey", {"orders": [keys]})

    with pytest.raises(FixtureError, match=r"inserting .* into 'orders__crucible_load' failed"):
        _load(ch_target, bad, [FixtureTableLoad(ORDERS, "orders")])
    assert _tables(clickhouse, ch_target) == {STATE_TABLE}


def test_types_and_nulls_round_trip_and_odd_column_names_stay_names(
    clickhouse: ClickHouseServer, ch_target: SutTarget, tmp_path: Path
) -> None:
    hostile = "x` String) ENGINE = Memory; DROP DATABASE default; --"
    table = pa.table(
        {
            "n": pa.array([1, None, 3], pa.int32()),
            "flag": pa.array([True, False, None]),
            "price": pa.array(
                [decimal.Decimal("1.25"), None, decimal.Decimal("-3.50")], pa.decimal128(9, 2)
            ),
            "day": pa.array([datetime.date(1995, 1, 2), None, datetime.date(2020, 2, 29)]),
            "at": pa.array(
                [datetime.datetime(2024, 5, 6, 7, 8, 9, 123456), None, None],
                pa.timestamp("us", tz="UTC"),
            ),
            "text": pa.array(['quote " and, comma', "back\\slash\ttab\nline", None]),
            hostile: pa.array(["a", "b", "c"]),
        }
    )
    storage = _uploaded(tmp_path, "types", {"mixed": [table]})

    _load(ch_target, storage, [FixtureTableLoad(FixtureRef("tpch", "0.01", "mixed"), "mixed")])

    rows = clickhouse.query(
        "SELECT n, flag, toString(price) AS price, toString(day) AS day, toString(at) AS at, "
        "text FROM mixed ORDER BY ifNull(n, 2) FORMAT JSONEachRow",
        database=ch_target.database,
    ).splitlines()
    assert [json.loads(r) for r in rows] == [
        {"n": 1, "flag": 1, "price": "1.25", "day": "1995-01-02", "at": "2024-05-06 07:08:09",
         "text": 'quote " and, comma'},
        {"n": None, "flag": 0, "price": None, "day": None, "at": None,
         "text": "back\\slash\ttab\nline"},
        {"n": 3, "flag": None, "price": "-3.50", "day": "2020-02-29", "at": None, "text": None},
    ]  # fmt: skip
    columns = clickhouse.query("DESCRIBE TABLE mixed", database=ch_target.database)
    assert "Nullable(Int32)" in columns
    assert f"{hostile}\tNullable(String)" in columns
    assert _default_database_exists(clickhouse)


def test_database_name_that_could_inject_sql_is_refused(
    clickhouse: ClickHouseServer, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    name = "x`; DROP DATABASE default; --"
    identity = sut_identity("clickhouse", clickhouse.host, clickhouse.http_port, name)
    target = SutTarget(identity, clickhouse.user, SecretStr(CH_PASSWORD))

    with pytest.raises(FixtureError, match="invalid ClickHouse database name"):
        _load(target, storage, [FixtureTableLoad(ORDERS, "orders")])
    assert _default_database_exists(clickhouse)


def test_wrong_password_is_a_sut_error_without_the_password(
    clickhouse: ClickHouseServer,
    ch_target: SutTarget,
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
) -> None:
    storage, _ = tpch_sf001
    wrong = "wrong-" + CH_PASSWORD
    target = SutTarget(ch_target.identity, ch_target.user, SecretStr(wrong))

    with pytest.raises(SutError, match="refused the password of user 'crucible'") as caught:
        _load(target, storage, [FixtureTableLoad(ORDERS, "orders")])
    assert wrong not in str(caught.value) and CH_PASSWORD not in str(caught.value)
