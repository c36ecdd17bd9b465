import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg
import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from crucible_dagster.defs.fixtures import add_scale_partition, tpcds_fixture
from crucible_dagster.defs.resources import CrucibleResource
from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures.manifest import FixtureManifest, read_manifest
from crucible_dagster.fixtures.postgresql import FixtureTableLoad, load_fixture_tables
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.fixtures.tpcds import TPCDS_TABLES, generate_tpcds
from crucible_dagster.settings import get_settings
from crucible_dagster.storage import LocalStorage, storage_from_url
from crucible_dagster.suts.base import SutTarget
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration

# What dsdgen makes at scale 0.01 (DuckDB's tpcds extension v1.5.5).
SF001_ROWS = {
    "call_center": 1,
    "catalog_page": 11718,
    "catalog_returns": 1358,
    "catalog_sales": 14313,
    "customer": 1000,
    "customer_address": 500,
    "customer_demographics": 19208,
    "date_dim": 73049,
    "household_demographics": 7200,
    "income_band": 20,
    "inventory": 23490,
    "item": 180,
    "promotion": 3,
    "reason": 1,
    "ship_mode": 20,
    "store": 1,
    "store_returns": 2810,
    "store_sales": 28810,
    "time_dim": 86400,
    "warehouse": 1,
    "web_page": 1,
    "web_returns": 679,
    "web_sales": 7212,
    "web_site": 1,
}

# One aggregate row per table that touches decimals, dates, strings and NULLs; the same SQL
# runs in DuckDB over the Parquet files and in PostgreSQL over the loaded table.
AGGREGATES = {
    "store_sales": (
        "count(*), count(ss_customer_sk), sum(ss_customer_sk), sum(ss_net_profit), "
        "sum(ss_sales_price), min(ss_wholesale_cost), max(ss_ext_tax)"
    ),
    "date_dim": (
        "count(*), count(d_date), min(d_date), max(d_date), sum(d_year), "
        "count(d_holiday), sum(length(d_day_name))"
    ),
    "customer": (
        "count(*), count(c_email_address), count(c_birth_year), sum(c_birth_year), "
        "sum(length(c_first_name)), count(c_first_name), "
        "sum(CASE WHEN c_first_name = '' THEN 1 ELSE 0 END)"
    ),
    "item": (
        "count(*), count(i_current_price), sum(i_current_price), count(i_brand), "
        "min(i_rec_start_date), max(i_rec_end_date), count(i_rec_end_date)"
    ),
}


@pytest.fixture(scope="module")
def tpcds_sf001(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStorage, FixtureManifest]:
    """TPC-DS at scale 0.01, generated once per module into a local storage."""
    storage = LocalStorage(tmp_path_factory.mktemp("tpcds-sf001"))
    return storage, generate_tpcds(storage, "0.01")


def test_tpcds_sf001_has_every_table_with_known_row_counts(
    tpcds_sf001: tuple[LocalStorage, FixtureManifest],
) -> None:
    storage, manifest = tpcds_sf001

    assert manifest.dataset == "tpcds"
    assert manifest.scale == "0.01"
    assert manifest.generator == (
        f"duckdb {duckdb.__version__} dsdgen (tpcds extension v{duckdb.__version__})"
    )
    assert len(manifest.tables) == 24
    assert sorted(manifest.tables) == sorted(TPCDS_TABLES)
    assert {name: t.rows for name, t in manifest.tables.items()} == SF001_ROWS
    columns = {c.name: c.arrow_type for c in manifest.tables["store_sales"].columns}
    assert columns["ss_net_profit"] == "decimal128(7, 2)"
    assert columns["ss_ticket_number"] == "int64"
    date_columns = {c.name: c.arrow_type for c in manifest.tables["date_dim"].columns}
    assert date_columns["d_date"] == "date32[day]"
    assert date_columns["d_day_name"] == "string"
    assert read_manifest(storage, "tpcds", "0.01") == manifest


def test_tpcds_objects_match_their_manifest_entries(
    tpcds_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    storage, manifest = tpcds_sf001
    store_sales = manifest.tables["store_sales"]

    assert [f.key for f in store_sales.files] == [
        "fixtures/tpcds/sf0.01/store_sales/part-0.parquet"
    ]
    local = tmp_path / "store_sales.parquet"
    storage.download_file(store_sales.files[0].key, local)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == store_sales.files[0].sha256
    assert local.stat().st_size == store_sales.bytes
    assert pq.ParquetFile(local).metadata.num_rows == 28810
    keys = [o.key for o in storage.list("fixtures/tpcds/sf0.01/")]
    assert keys[0] == "fixtures/tpcds/sf0.01/_manifest.json"
    assert len(keys) == 1 + 24


def test_tpcds_into_s3_gives_the_same_data_version_as_locally(
    s3_server: S3Server, tpcds_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    _, local_manifest = tpcds_sf001
    storage = s3_server.storage(prefix="crucible")

    manifest = generate_tpcds(storage, "0.01", work_dir=tmp_path)

    assert manifest.data_version == local_manifest.data_version
    assert {name: t.rows for name, t in manifest.tables.items()} == SF001_ROWS
    stored = json.loads(storage.get_bytes("fixtures/tpcds/sf0.01/_manifest.json"))
    assert stored["data_version"] == manifest.data_version
    assert len(storage.list("fixtures/tpcds/sf0.01/")) == 1 + 24
    assert list(tmp_path.iterdir()) == []  # the scratch database and spill files are gone
    # The extension was loaded from its file, not installed into the user's DuckDB directory.
    assert not any((Path.home() / ".duckdb" / "extensions").rglob("tpcds*"))


def test_large_tables_are_split_into_bounded_parts_and_old_parts_removed(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("fixtures/tpcds/sf0.1/store_sales/part-9.parquet", b"left over")
    part_bytes = 2 * 1024 * 1024

    manifest = generate_tpcds(storage, "0.1", part_bytes=part_bytes, memory_limit="128MB")

    store_sales = manifest.tables["store_sales"]
    assert store_sales.rows == 288464
    assert len(store_sales.files) > 1
    assert [f.key for f in store_sales.files] == [
        f"fixtures/tpcds/sf0.1/store_sales/part-{n}.parquet" for n in range(len(store_sales.files))
    ]
    assert sum(f.rows for f in store_sales.files) == store_sales.rows
    # A file closes after the row group that passes the bound; DuckDB's row groups here are
    # at most 122,880 rows, about 6 MB of store_sales.
    assert all(f.bytes < part_bytes + 8 * 1024 * 1024 for f in store_sales.files)
    assert [o.key for o in storage.list("fixtures/tpcds/sf0.1/store_sales/")] == [
        f.key for f in store_sales.files
    ]
    # Small tables stay in one file.
    assert len(manifest.tables["call_center"].files) == 1


def test_same_scale_generates_the_same_data_version_twice(
    tpcds_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    _, first = tpcds_sf001

    second = generate_tpcds(LocalStorage(tmp_path), "0.01", memory_limit="64MB")

    assert second.data_version == first.data_version


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_limit": "lots"}, "invalid memory limit 'lots'"),
        ({"part_bytes": 1000}, "invalid part size 1000 bytes"),
    ],
)
def test_invalid_generation_settings_are_fixture_errors(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(FixtureError, match=message):
        generate_tpcds(LocalStorage(tmp_path), "0.01", **kwargs)

    assert list(tmp_path.iterdir()) == []


def _pg_row(target: SutTarget, sql: str) -> tuple[Any, ...]:
    async def run() -> tuple[Any, ...]:
        conn = await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password.get_secret_value(),
            database=target.database,
        )
        try:
            row = await conn.fetchrow(sql)
        finally:
            await conn.close()
        assert row is not None
        return tuple(row.values())

    return asyncio.run(run())


def _duckdb_aggregate(storage: LocalStorage, manifest: FixtureManifest, table: str) -> tuple:
    paths = [str(storage.root / f.key) for f in manifest.tables[table].files]
    with duckdb.connect() as con:
        row = con.execute(f"SELECT {AGGREGATES[table]} FROM read_parquet(?)", [paths]).fetchone()
    assert row is not None
    return tuple(row)


def test_tpcds_tables_load_into_postgresql_with_decimals_dates_and_nulls_intact(
    pg_target: SutTarget, tpcds_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, manifest = tpcds_sf001
    loads = [FixtureTableLoad(FixtureRef("tpcds", "0.01", t), t) for t in AGGREGATES]

    reports = asyncio.run(load_fixture_tables(pg_target, storage, loads, manifests=[manifest]))

    assert [(r.table, r.action, r.rows) for r in reports] == [
        (t, "loaded", SF001_ROWS[t]) for t in AGGREGATES
    ]
    for table, expressions in AGGREGATES.items():
        expected = _duckdb_aggregate(storage, manifest, table)
        assert _pg_row(pg_target, f'SELECT {expressions} FROM "{table}"') == expected, table
    # The data has NULLs to lose: if they became zeros or empty strings the counts would differ.
    customers, emails = _duckdb_aggregate(storage, manifest, "customer")[:2]
    assert emails < customers
    types = _pg_row(
        pg_target,
        "SELECT string_agg(column_name || ':' || data_type || coalesce('(' || numeric_precision "
        "|| ',' || numeric_scale || ')', ''), ' ' ORDER BY column_name) "
        "FROM information_schema.columns WHERE table_schema = 'public' AND column_name IN "
        "('ss_net_profit', 'd_date', 'c_email_address', 'ss_ticket_number')",
    )[0]
    assert types == (
        "c_email_address:text d_date:date ss_net_profit:numeric(7,2) ss_ticket_number:bigint(64,0)"
    )


def test_tpcds_asset_partition_materializes_the_manifest_into_crucible_storage(
    crucible_home: Path, tpcds_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    _, expected = tpcds_sf001
    with dg.instance_for_test() as instance:
        add_scale_partition(instance, "tpcds", "0.01")
        result = dg.materialize(
            [tpcds_fixture],
            partition_key="0.01",
            resources={"crucible": CrucibleResource()},
            instance=instance,
        )

    assert result.success
    (materialization,) = result.asset_materializations_for_node("fixtures__tpcds")
    assert materialization.asset_key == dg.AssetKey(["fixtures", "tpcds"])
    assert materialization.metadata["tables"].value == 24
    assert materialization.metadata["rows"].value == sum(SF001_ROWS.values())
    assert materialization.metadata["data_version"].value == expected.data_version
    settings = get_settings()
    stored = read_manifest(storage_from_url(settings.storage_url, settings), "tpcds", "0.01")
    assert stored is not None
    assert stored.data_version == expected.data_version
