"""Fixture loading into DuckDB and SQLite files, from a local storage and from a real S3 server."""

import asyncio
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crucible_dagster.errors import FixtureError, SutError
from crucible_dagster.fixtures.loading import FixtureTableLoad
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.fixtures.tpch import TPCH_TABLES, generate_tpch
from crucible_dagster.storage import LocalStorage, Storage
from crucible_dagster.suts import duckdb as duck
from crucible_dagster.suts.driver import driver_for
from tests.integration.embedded_support import (
    EMBEDDED_TYPES,
    embedded_target,
    read_rows,
    run_sql,
    tpch_loads,
)
from tests.servers_s3 import S3Server

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("sut_type", EMBEDDED_TYPES)]

EXPECTED_ROWS = {
    "region": 5,
    "nation": 25,
    "supplier": 100,
    "customer": 1500,
    "part": 2000,
    "partsupp": 8000,
    "orders": 15000,
    "lineitem": 60175,
}


def _load(sut_type: str, path: Path, storage: Storage, loads: list[FixtureTableLoad]) -> list:
    driver = driver_for(sut_type)
    target = embedded_target(sut_type, path)
    return asyncio.run(driver.load_fixture_tables(target, storage, loads, run_id="r1"))


def _check_customer_values(sut_type: str, path: Path, parquet: Path) -> None:
    first = pq.read_table(parquet).slice(0, 1).to_pylist()[0]
    (row,) = read_rows(
        sut_type,
        path,
        "SELECT c_name, c_acctbal, c_comment FROM customer WHERE c_custkey = ?",
        (first["c_custkey"],),
    )
    expected_balance = first["c_acctbal"] if sut_type == "duckdb" else float(first["c_acctbal"])
    assert row == (first["c_name"], expected_balance, first["c_comment"])


def test_every_tpch_table_loads_with_its_row_count_and_state(
    sut_type: str, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    path = tmp_path / f"tpch.{sut_type}"

    reports = _load(sut_type, path, storage, tpch_loads(*TPCH_TABLES))

    assert {r.table: (r.action, r.rows) for r in reports} == {
        t: ("loaded", n) for t, n in EXPECTED_ROWS.items()
    }
    for table, rows in EXPECTED_ROWS.items():
        assert read_rows(sut_type, path, f"SELECT COUNT(*) FROM {table}") == [(rows,)]
    state = read_rows(
        sut_type,
        path,
        'SELECT table_name, "rows", loaded_by_run FROM crucible_fixture_state ORDER BY table_name',
    )
    assert state == sorted((t, n, "r1") for t, n in EXPECTED_ROWS.items())
    _check_customer_values(
        sut_type, path, storage.root / "fixtures/tpch/sf0.01/customer/part-0.parquet"
    )
    # Dates compare as dates (DuckDB) or as ISO text (SQLite), so range predicates work.
    (shipped,) = read_rows(
        sut_type, path, "SELECT COUNT(*) FROM lineitem WHERE l_shipdate <= '1998-09-02'"
    )
    assert 0 < shipped[0] < 60175
    assert not any(t.startswith("crucible_loading_") for t in _tables(sut_type, path))
    assert duck.open_files() == []


def _tables(sut_type: str, path: Path) -> list[str]:
    if sut_type == "duckdb":
        sql = "SELECT table_name FROM information_schema.tables"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return [r[0] for r in read_rows(sut_type, path, sql)]


def test_primary_keys_are_added_to_tpch_tables(
    sut_type: str, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    path = tmp_path / f"keys.{sut_type}"
    _load(sut_type, path, storage, tpch_loads("region"))

    with pytest.raises(Exception, match=r"(?i)constraint|unique|duplicate"):
        run_sql(sut_type, path, "INSERT INTO region SELECT * FROM region LIMIT 1")


def test_second_load_skips_and_reload_always_replaces(
    sut_type: str, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    path = tmp_path / f"again.{sut_type}"
    first = _load(sut_type, path, storage, tpch_loads("region", "nation"))
    run_sql(sut_type, path, "DELETE FROM nation WHERE n_nationkey < 5")

    again = _load(sut_type, path, storage, tpch_loads("region", "nation"))
    assert [(r.action, r.rows) for r in again] == [("skipped", 5), ("skipped", 25)]
    assert read_rows(sut_type, path, "SELECT COUNT(*) FROM nation") == [(20,)]

    replaced = _load(sut_type, path, storage, tpch_loads("nation", reload="always"))
    assert [(r.action, r.rows) for r in replaced] == [("loaded", 25)]
    assert replaced[0].replaced_data_version == first[1].data_version
    assert read_rows(sut_type, path, "SELECT COUNT(*) FROM nation") == [(25,)]


def test_another_data_version_needs_reload_always(
    sut_type: str, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    path = tmp_path / f"version.{sut_type}"
    _load(sut_type, path, storage, tpch_loads("region"))
    run_sql(sut_type, path, "UPDATE crucible_fixture_state SET data_version = 'older'")

    with pytest.raises(FixtureError, match="set reload: always"):
        _load(sut_type, path, storage, tpch_loads("region"))
    assert read_rows(sut_type, path, "SELECT COUNT(*) FROM region") == [(5,)]


def test_table_crucible_did_not_create_is_refused_and_untouched(
    sut_type: str, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    path = tmp_path / f"mine.{sut_type}"
    run_sql(sut_type, path, "CREATE TABLE Region (mine INTEGER)", "INSERT INTO Region VALUES (42)")

    for reload in ("auto", "always"):
        with pytest.raises(FixtureError, match="not created by Crucible"):
            _load(sut_type, path, storage, tpch_loads("region", reload=reload))
    assert read_rows(sut_type, path, "SELECT * FROM region") == [(42,)]


def test_failed_load_leaves_no_half_table_and_keeps_the_old_one(
    sut_type: str, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage = LocalStorage(tmp_path / "store")
    good = pa.table({"id": pa.array([1, 2], pa.int64())})
    pq.write_table(good, tmp_path / "good.parquet")
    storage.put_file("fixtures/custom/sf1/t/part-0.parquet", tmp_path / "good.parquet")
    path = tmp_path / f"half.{sut_type}"
    load = FixtureTableLoad(FixtureRef("custom", "1", "t"), "t", reload="always")
    _load(sut_type, path, storage, [load])
    # A second file with other columns makes the reload fail after the first file went in.
    pq.write_table(pa.table({"other": pa.array([3])}), tmp_path / "bad.parquet")
    storage.put_file("fixtures/custom/sf1/t/part-1.parquet", tmp_path / "bad.parquet")

    with pytest.raises(FixtureError, match="t"):
        _load(sut_type, path, storage, [load])

    assert read_rows(sut_type, path, "SELECT id FROM t ORDER BY id") == [(1,), (2,)]
    assert "crucible_loading_t" not in _tables(sut_type, path)


def test_names_and_values_cannot_inject_sql(sut_type: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    weird = {
        "id": pa.array([1, 2, 3], pa.int64()),
        'a"b); DROP TABLE victim; --': pa.array(["x", "y", None]),
        "note": pa.array(["it's", 'say "hi"', "'); DROP TABLE victim; --"]),
    }
    pq.write_table(pa.table(weird), tmp_path / "weird.parquet")
    storage.put_file("fixtures/custom/sf1/odd/part-0.parquet", tmp_path / "weird.parquet")
    path = tmp_path / f'it\'s "odd"; DROP.{sut_type}'
    run_sql(sut_type, path, "CREATE TABLE victim (x INTEGER)", "INSERT INTO victim VALUES (7)")

    (report,) = _load(
        sut_type, path, storage, [FixtureTableLoad(FixtureRef("custom", "1", "odd"), "odd")]
    )

    assert report.rows == 3
    assert read_rows(
        sut_type, path, 'SELECT id, "a""b); DROP TABLE victim; --", note FROM odd ORDER BY id'
    ) == [
        (1, "x", "it's"),
        (2, "y", 'say "hi"'),
        (3, None, "'); DROP TABLE victim; --"),
    ]
    assert read_rows(sut_type, path, "SELECT x FROM victim") == [(7,)]
    with pytest.raises(FixtureError):
        FixtureTableLoad(FixtureRef("custom", "1", "odd"), 'odd"; DROP TABLE victim; --')


def test_missing_folder_of_the_database_file_is_a_clear_error(
    sut_type: str, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    path = tmp_path / "no_such_folder" / f"x.{sut_type}"

    with pytest.raises(SutError, match=r"folder .*no_such_folder does not exist"):
        _load(sut_type, path, storage, tpch_loads("region"))
    assert not path.parent.exists()


def test_tables_stream_from_s3_in_several_files(
    sut_type: str, tmp_path: Path, s3_server: S3Server
) -> None:
    storage = s3_server.storage()
    manifest = generate_tpch(storage, "0.01", work_dir=tmp_path, parts=2)
    assert len(manifest.table("orders").files) == 2
    path = tmp_path / f"s3.{sut_type}"

    reports = _load(sut_type, path, storage, tpch_loads("region", "orders", "lineitem"))

    assert [(r.table, r.rows) for r in reports] == [
        ("region", 5),
        ("orders", 15000),
        ("lineitem", 60175),
    ]
    (total,) = read_rows(sut_type, path, "SELECT SUM(o_totalprice) FROM orders")
    local = LocalStorage(tmp_path / "local")
    generate_tpch(local, "0.01", work_dir=tmp_path)
    orders = pq.read_table(local.root / "fixtures/tpch/sf0.01/orders/part-0.parquet")
    expected = sum(orders.column("o_totalprice").to_pylist(), Decimal(0))
    assert Decimal(str(total[0])).quantize(Decimal("0.01")) == expected
