"""Fixture loading into a real MariaDB, and a whole plan run against it through Dagster."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crucible_dagster.defs import build_definitions
from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures import mysql as loader
from crucible_dagster.fixtures.loading import FixtureTableLoad
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.run import RUN_ID_TAG, mint_run_id
from crucible_dagster.settings import get_settings
from crucible_dagster.storage import LocalStorage, storage_from_url
from tests.integration import test_plan_job as plan_job_tests
from tests.servers_mariadb import MARIADB_PASSWORD, MariaDB, mariadb, my_database
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration
__all__ = ["mariadb", "my_database"]  # fixtures used by name below

TABLES = ("region", "nation", "customer")


def _loads(*tables: str, reload: str = "auto") -> list[FixtureTableLoad]:
    return [
        FixtureTableLoad(FixtureRef("tpch", "0.01", t), t, reload=reload)  # type: ignore[arg-type]
        for t in tables
    ]


def test_tpch_tables_load_with_their_row_counts_and_keys(
    mariadb: MariaDB, my_database: str, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    target = mariadb.target(my_database)

    reports = asyncio.run(loader.load_fixture_tables(target, storage, _loads(*TABLES), run_id="r1"))

    assert {r.table: (r.action, r.rows) for r in reports} == {
        "region": ("loaded", 5),
        "nation": ("loaded", 25),
        "customer": ("loaded", 1500),
    }
    for table, rows in (("region", 5), ("nation", 25), ("customer", 1500)):
        assert mariadb.query(f"SELECT COUNT(*) FROM `{my_database}`.`{table}`") == [(rows,)]
    keys = mariadb.query(
        "SELECT column_name FROM information_schema.key_column_usage "
        "WHERE table_schema = %s AND table_name = 'customer' AND constraint_name = 'PRIMARY'",
        (my_database,),
    )
    assert keys == [("c_custkey",)]
    state = mariadb.query(
        f"SELECT table_name, `rows`, loaded_by_run FROM `{my_database}`.crucible_fixture_state "
        "ORDER BY table_name"
    )
    assert state == [("customer", 1500, "r1"), ("nation", 25, "r1"), ("region", 5, "r1")]
    # Decimals and dates come back exactly as generated.
    expected = pq.read_table(storage.root / "fixtures/tpch/sf0.01/customer/part-0.parquet")
    first = expected.slice(0, 1).to_pylist()[0]
    (row,) = mariadb.query(
        f"SELECT c_name, c_acctbal, c_comment FROM `{my_database}`.customer WHERE c_custkey = %s",
        (first["c_custkey"],),
    )
    assert row == (first["c_name"], first["c_acctbal"], first["c_comment"])


def test_second_load_skips_and_reload_always_replaces(
    mariadb: MariaDB, my_database: str, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    target = mariadb.target(my_database)
    first = asyncio.run(loader.load_fixture_tables(target, storage, _loads("region", "nation")))
    mariadb.query(f"DELETE FROM `{my_database}`.nation WHERE n_nationkey < 5")

    again = asyncio.run(loader.load_fixture_tables(target, storage, _loads("region", "nation")))
    assert [(r.action, r.rows) for r in again] == [("skipped", 5), ("skipped", 25)]
    assert mariadb.query(f"SELECT COUNT(*) FROM `{my_database}`.nation") == [(20,)]

    replaced = asyncio.run(
        loader.load_fixture_tables(target, storage, _loads("nation", reload="always"))
    )
    assert [(r.action, r.rows) for r in replaced] == [("loaded", 25)]
    assert replaced[0].replaced_data_version == first[1].data_version
    assert mariadb.query(f"SELECT COUNT(*) FROM `{my_database}`.nation") == [(25,)]


def test_table_crucible_did_not_create_is_refused_and_untouched(
    mariadb: MariaDB, my_database: str, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage, _ = tpch_sf001
    mariadb.query(f"CREATE DATABASE `{my_database}`")
    mariadb.query(f"CREATE TABLE `{my_database}`.region (mine INT)")
    mariadb.query(f"INSERT INTO `{my_database}`.region VALUES (42)")

    for reload in ("auto", "always"):
        with pytest.raises(FixtureError, match="not created by Crucible"):
            asyncio.run(
                loader.load_fixture_tables(
                    mariadb.target(my_database), storage, _loads("region", reload=reload)
                )
            )
    assert mariadb.query(f"SELECT * FROM `{my_database}`.region") == [(42,)]


def test_names_and_values_cannot_inject_sql(
    mariadb: MariaDB, tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    storage = LocalStorage(tmp_path / "store")
    weird = {
        "id": pa.array([1, 2, 3], pa.int64()),
        "a`b); DROP TABLE victim; --": pa.array(["x", "y", None]),
        "note": pa.array(["it's", 'say "hi"', "back\\slash %s 100%"]),
    }
    local = tmp_path / "weird.parquet"
    pq.write_table(pa.table(weird), local)
    storage.put_file("fixtures/custom/sf1/odd/part-0.parquet", local)
    database = "t_`evil`; DROP DATABASE mysql; --"
    mariadb.query("CREATE DATABASE IF NOT EXISTS victim_db")
    mariadb.query("CREATE TABLE IF NOT EXISTS victim_db.victim (x INT)")
    load = FixtureTableLoad(FixtureRef("custom", "1", "odd"), "odd")

    try:
        (report,) = asyncio.run(
            loader.load_fixture_tables(mariadb.target(database), storage, [load])
        )
        rows = mariadb.query(f"SELECT * FROM `{database.replace('`', '``')}`.odd ORDER BY id")
    finally:
        mariadb.query(f"DROP DATABASE IF EXISTS `{database.replace('`', '``')}`")

    assert report.rows == 3
    assert rows == [(1, "x", "it's"), (2, "y", 'say "hi"'), (3, None, "back\\slash %s 100%")]
    assert mariadb.query("SELECT COUNT(*) FROM victim_db.victim") == [(0,)]
    assert mariadb.query("SELECT COUNT(*) FROM mysql.user") != [(0,)]
    with pytest.raises(FixtureError):
        FixtureTableLoad(FixtureRef("custom", "1", "odd"), "odd`; DROP TABLE victim; --")
    mariadb.query("DROP DATABASE victim_db")


def test_small_batches_keep_memory_bounded_and_rows_exact(
    mariadb: MariaDB, my_database: str, tpch_sf001: tuple[LocalStorage, FixtureManifest]
) -> None:
    # Memory is bounded by the batch: each batch of Parquet rows becomes Python rows and is sent
    # before the next is decoded. Here 1500 rows go in batches of 64, both ways of sending.
    storage, _ = tpch_sf001
    for method in ("auto", "insert"):
        (report,) = asyncio.run(
            loader.load_fixture_tables(
                mariadb.target(my_database),
                storage,
                _loads("customer", reload="always"),
                batch_rows=64,
                method=method,
            )
        )
        assert report.rows == 1500
        assert mariadb.query(f"SELECT COUNT(*) FROM `{my_database}`.customer") == [(1500,)]


# -- a whole plan through its Dagster job -------------------------------------------------------

WORKLOAD = """\
-- @type: mysql
-- @name: nations_per_region
SELECT r_name, count(*) FROM region JOIN nation ON n_regionkey = r_regionkey GROUP BY r_name;
-- @name: one_nation
-- @param: key {type: int, range: [0, 24]}
SELECT n_name FROM nation WHERE n_nationkey = :key AND n_name LIKE '%';
"""


def write_plan(folder: Path, name: str, *, port: int, database: str) -> Path:
    return plan_job_tests.write_plan(
        folder, name, port=port, database=database, workload=WORKLOAD, sut_type="mariadb",
        username="root", password_env="CRUCIBLE_TEST_MARIADB_PASSWORD",
    )  # fmt: skip


@pytest.fixture
def instance(crucible_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    monkeypatch.setenv("CRUCIBLE_TEST_MARIADB_PASSWORD", MARIADB_PASSWORD)
    with dg.instance_for_test() as instance:
        yield instance


def test_plan_on_mariadb_loads_fixtures_from_s3_and_passes(
    mariadb: MariaDB,
    my_database: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    plan = write_plan(tmp_path / "plans", "maria", port=mariadb.port, database=my_database)
    run_id = mint_run_id("maria")

    outcome = (
        build_definitions(plan.parent)
        .resolve_job_def("maria")
        .execute_in_process(instance=instance, tags={RUN_ID_TAG: run_id}, raise_on_error=False)
    )

    assert outcome.success
    settings = get_settings()
    storage = storage_from_url(settings.storage_url, settings)
    result = json.loads(storage.get_bytes(f"results/{run_id}/result.json"))
    assert result["status"] == "completed"
    assert result["verdict"] == "passed"
    assert {f["table"]: f["rows"] for f in result["fixtures"]} == {"region": 5, "nation": 25}
    assert [q["name"] for q in result["queries"]] == ["nations_per_region", "one_nation"]
    for query in result["queries"]:
        assert query["count"] > 0
        assert query["errors"] == 0
    assert MARIADB_PASSWORD not in json.dumps(result)
    keys = {info.key for info in s3_server.storage(s3_bucket, "crucible").list("")}
    assert "fixtures/tpch/sf0.01/_manifest.json" in keys
    assert f"results/{run_id}/result.json" in keys
    for run in instance.get_runs():
        assert all(MARIADB_PASSWORD not in str(r) for r in instance.all_logs(run.run_id))
