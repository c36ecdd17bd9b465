import asyncio
import os
import secrets
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from crucible_dagster.errors import FixtureError, SutError
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.fixtures.postgresql import (
    STATE_TABLE,
    FixtureTableLoad,
    TableLoadReport,
    load_fixture_tables,
)
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.fixtures.tpch import TPCH_TABLES, generate_tpch
from crucible_dagster.local_postgres import LocalPostgres, free_port
from crucible_dagster.storage import LocalStorage, Storage
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.conftest import PG_PASSWORD
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration

ORDERS = FixtureRef("tpch", "0.01", "orders")


def _load(
    target: SutTarget, storage: Storage, loads: list[FixtureTableLoad], **kwargs: Any
) -> list[TableLoadReport]:
    return asyncio.run(load_fixture_tables(target, storage, loads, **kwargs))


def _query(target: SutTarget, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password.get_secret_value(),
            database=target.database,
        )
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def _orders_variant(tmp_path: Path, source: LocalStorage, rows: int, columns: int) -> LocalStorage:
    """An uploaded fixture (no manifest): the first rows and columns of TPC-H orders."""
    original = tmp_path / "orders-original.parquet"
    source.download_file(ORDERS.prefix + "part-0.parquet", original)
    table = pq.read_table(original)
    variant = tmp_path / "orders-variant.parquet"
    pq.write_table(table.slice(0, rows).select(table.column_names[:columns]), variant)
    storage = LocalStorage(tmp_path / f"variant-{rows}-{columns}")
    storage.put_file(ORDERS.prefix + "part-0.parquet", variant)
    return storage


def test_tpch_tables_load_with_matching_rows_and_values(
    pg_target: SutTarget, tpch_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    storage, manifest = tpch_sf001
    loads = [FixtureTableLoad(FixtureRef("tpch", "0.01", t), t) for t in TPCH_TABLES]

    reports = _load(pg_target, storage, loads, run_id="demo_20260101-0000_0badc0de")

    assert [r.action for r in reports] == ["loaded"] * len(TPCH_TABLES)
    for table in TPCH_TABLES:
        count = _query(pg_target, f'SELECT count(*) AS n FROM "{table}"')[0]["n"]
        assert count == manifest.tables[table].rows, table
    lineitem = tmp_path / "lineitem.parquet"
    storage.download_file(manifest.tables["lineitem"].files[0].key, lineitem)
    expected = pq.read_table(lineitem, columns=["l_extendedprice", "l_shipdate"])
    row = _query(pg_target, "SELECT sum(l_extendedprice) AS s, max(l_shipdate) AS d FROM lineitem")[
        0
    ]
    assert row["s"] == Decimal(str(pc.sum(expected["l_extendedprice"]).as_py()))
    assert row["d"] == pc.max(expected["l_shipdate"]).as_py()
    state = _query(pg_target, f"SELECT * FROM {STATE_TABLE} WHERE table_name = 'lineitem'")[0]
    assert state["rows"] == 60175
    assert state["source_table"] == "lineitem"
    assert state["scale"] == "0.01"
    assert state["loaded_by_run"] == "demo_20260101-0000_0badc0de"
    primary_key = _query(
        pg_target,
        "SELECT count(*) AS n FROM pg_constraint WHERE conrelid = 'lineitem'::regclass "
        "AND contype = 'p'",
    )[0]["n"]
    assert primary_key == 1


def test_second_load_of_same_data_version_is_skipped(
    pg_target: SutTarget, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, manifest = tpch_sf001
    loads = [FixtureTableLoad(ORDERS, "orders"), FixtureTableLoad(ORDERS, "orders_copy")]
    first = _load(pg_target, storage, loads)
    loaded_at = _query(pg_target, f"SELECT loaded_at FROM {STATE_TABLE} ORDER BY table_name")

    second = _load(pg_target, storage, loads, manifests=[manifest])

    assert [r.action for r in first] == ["loaded", "loaded"]
    assert [r.action for r in second] == ["skipped", "skipped"]
    assert [r.rows for r in second] == [15000, 15000]
    assert second[0].data_version == first[0].data_version
    assert _query(pg_target, f"SELECT loaded_at FROM {STATE_TABLE} ORDER BY table_name") == (
        loaded_at
    )


def test_existing_table_not_made_by_crucible_is_refused_and_left_untouched(
    pg_target: SutTarget, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    _query(pg_target, "CREATE TABLE orders (note text)")
    _query(pg_target, "INSERT INTO orders VALUES ('keep me')")

    with pytest.raises(FixtureError, match="already exists and was not created by Crucible"):
        _load(pg_target, storage, [FixtureTableLoad(ORDERS, "orders", reload="always")])

    assert [r["note"] for r in _query(pg_target, "SELECT note FROM orders")] == ["keep me"]
    assert _query(pg_target, f"SELECT * FROM {STATE_TABLE}") == []


def test_other_data_version_needs_reload_always_then_replaces_the_table(
    pg_target: SutTarget, tpch_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    storage, _ = tpch_sf001
    first = _load(pg_target, storage, [FixtureTableLoad(ORDERS, "orders")])
    smaller = _orders_variant(tmp_path, storage, rows=100, columns=9)

    with pytest.raises(FixtureError, match="reload: always"):
        _load(pg_target, smaller, [FixtureTableLoad(ORDERS, "orders")])
    assert _query(pg_target, "SELECT count(*) AS n FROM orders")[0]["n"] == 15000

    reports = _load(pg_target, smaller, [FixtureTableLoad(ORDERS, "orders", reload="always")])

    assert reports[0].action == "loaded"
    assert reports[0].rows == 100
    assert reports[0].replaced_data_version == first[0].data_version
    assert _query(pg_target, "SELECT count(*) AS n FROM orders")[0]["n"] == 100
    state = _query(pg_target, f"SELECT data_version, rows FROM {STATE_TABLE}")[0]
    assert (state["data_version"], state["rows"]) == (reports[0].data_version, 100)


def test_reload_with_changed_columns_rebuilds_the_crucible_table(
    pg_target: SutTarget, tpch_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    storage, _ = tpch_sf001
    _load(pg_target, storage, [FixtureTableLoad(ORDERS, "orders")])
    narrower = _orders_variant(tmp_path, storage, rows=10, columns=3)

    _load(pg_target, narrower, [FixtureTableLoad(ORDERS, "orders", reload="always")])

    columns = _query(
        pg_target,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' "
        "ORDER BY ordinal_position",
    )
    assert [c["column_name"] for c in columns] == ["o_orderkey", "o_custkey", "o_orderstatus"]
    assert _query(pg_target, "SELECT count(*) AS n FROM orders")[0]["n"] == 10


def test_failed_load_leaves_neither_table_nor_state(pg_target: SutTarget, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "broken")
    storage.put_bytes(ORDERS.prefix + "part-0.parquet", b"not parquet at all")

    with pytest.raises(FixtureError, match="not a readable Parquet file"):
        _load(pg_target, storage, [FixtureTableLoad(ORDERS, "orders")])

    assert _query(pg_target, "SELECT to_regclass('orders') AS t")[0]["t"] is None
    assert _query(pg_target, f"SELECT * FROM {STATE_TABLE}") == []


def test_missing_fixture_says_what_to_materialize(pg_target: SutTarget, tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match=r"materialize fixtures/tpch partition 0.01"):
        _load(pg_target, LocalStorage(tmp_path), [FixtureTableLoad(ORDERS, "orders")])


def test_missing_database_is_created_with_a_quoted_name(
    postgres: LocalPostgres, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    database = f'crucible new"db {secrets.token_hex(3)}'
    identity = sut_identity("postgresql", postgres.host, postgres.port, database)
    target = SutTarget(identity=identity, user="postgres", password=SecretStr(PG_PASSWORD))
    region = FixtureRef("tpch", "0.01", "region")
    try:
        reports = _load(target, storage, [FixtureTableLoad(region, "region")])

        assert reports[0].rows == 5
        assert _query(target, "SELECT count(*) AS n FROM region")[0]["n"] == 5
    finally:
        admin = SutTarget(
            identity=sut_identity("postgresql", postgres.host, postgres.port, "postgres"),
            user="postgres",
            password=SecretStr(PG_PASSWORD),
        )
        quoted = '"' + database.replace('"', '""') + '"'
        _query(admin, f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")


def test_wrong_password_is_a_sut_error_without_the_password(
    pg_target: SutTarget, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    wrong = "wrong-" + secrets.token_hex(8)
    target = SutTarget(identity=pg_target.identity, user="postgres", password=SecretStr(wrong))

    with pytest.raises(SutError) as raised:
        _load(target, storage, [FixtureTableLoad(ORDERS, "orders")])

    message = str(raised.value)
    assert pg_target.identity.key in message
    assert "refused the password" in message
    assert wrong not in message
    assert PG_PASSWORD not in message


def test_unreachable_server_is_a_sut_error_naming_the_sut(
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
) -> None:
    storage, _ = tpch_sf001
    identity = sut_identity("postgresql", "127.0.0.1", free_port(), "tpch")
    target = SutTarget(identity=identity, user="postgres", password=SecretStr(PG_PASSWORD))

    with pytest.raises(SutError, match="unreachable") as raised:
        _load(target, storage, [FixtureTableLoad(ORDERS, "orders")])

    assert identity.key in str(raised.value)
    assert PG_PASSWORD not in str(raised.value)


def test_fixture_loads_from_s3_storage(
    pg_target: SutTarget,
    s3_server: S3Server,
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
    tmp_path: Path,
) -> None:
    local, manifest = tpch_sf001
    storage = s3_server.storage(prefix="crucible")
    for obj in local.list("fixtures/tpch/sf0.01/"):
        local.download_file(obj.key, tmp_path / "obj")
        storage.put_file(obj.key, tmp_path / "obj")

    reports = _load(pg_target, storage, [FixtureTableLoad(ORDERS, "orders")])

    assert reports[0].rows == manifest.tables["orders"].rows
    assert _query(pg_target, "SELECT count(*) AS n FROM orders")[0]["n"] == 15000


_MEASURE_LOAD = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from pydantic import SecretStr
    from crucible_dagster.fixtures.postgresql import FixtureTableLoad, load_fixture_tables
    from crucible_dagster.fixtures.refs import FixtureRef
    from crucible_dagster.storage import LocalStorage
    from crucible_dagster.suts.base import SutTarget, sut_identity

    root, scale, port, database = sys.argv[1:5]
    target = SutTarget(
        sut_identity("postgresql", "127.0.0.1", int(port), database),
        user="postgres",
        password=SecretStr(os.environ["MEASURE_PG_PASSWORD"]),
    )
    ref = FixtureRef("tpch", scale, "lineitem")
    table = "lineitem_sf" + scale.replace(".", "_")
    loads = [FixtureTableLoad(ref, table)]
    asyncio.run(load_fixture_tables(target, LocalStorage(Path(root)), loads))
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak over exec into ru_maxrss.
    status = Path("/proc/self/status").read_text()
    print(int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024)
    """
)


def _peak_rss_loading(storage: LocalStorage, scale: str, target: SutTarget) -> int:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE_LOAD,
            str(storage.root),
            scale,
            str(target.port),
            target.database,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MEASURE_PG_PASSWORD": target.password.get_secret_value()},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])


def test_loading_three_times_more_rows_does_not_grow_memory_with_size(
    pg_target: SutTarget, tmp_path: Path
) -> None:
    # Both scales are large enough for full-size row groups: below that, a smaller peak only
    # shows smaller row groups, not a loader that holds less.
    storage = LocalStorage(tmp_path / "store")
    small = generate_tpch(storage, "0.1")
    large = generate_tpch(storage, "0.3")
    large_file = tmp_path / "lineitem-sf03.parquet"
    storage.download_file(large.tables["lineitem"].files[0].key, large_file)
    small_file = tmp_path / "lineitem-sf01.parquet"
    storage.download_file(small.tables["lineitem"].files[0].key, small_file)
    # What holding the extra rows in memory as Arrow would cost (about 260 MB).
    extra_bytes = pq.read_table(large_file).nbytes - pq.read_table(small_file).nbytes

    small_rss = _peak_rss_loading(storage, "0.1", pg_target)
    large_rss = _peak_rss_loading(storage, "0.3", pg_target)

    loaded = _query(pg_target, "SELECT count(*) AS n FROM lineitem_sf0_3")[0]["n"]
    assert loaded == large.tables["lineitem"].rows > 2.9 * small.tables["lineitem"].rows
    growth = large_rss - small_rss
    print(f"\npeak RSS sf0.1 {small_rss / 2**20:.0f} MiB, sf0.3 {large_rss / 2**20:.0f} MiB")
    assert growth < extra_bytes / 5, f"peak RSS grew {growth} bytes for {extra_bytes} more"
