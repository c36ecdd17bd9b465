"""The Doris/StarRocks load sequence and Stream Load, run against stand-ins written for these
tests (tests/doris_standin.py): no Doris or StarRocks server runs on this platform."""

import asyncio
import hashlib
import os
import re
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from crucible_dagster.errors import FixtureError, SutError
from crucible_dagster.fixtures import doris, stream_load
from crucible_dagster.fixtures import mysql as mysql_loader
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.fixtures.manifest import (
    FixtureColumn,
    FixtureFile,
    FixtureManifest,
    ManifestTable,
    data_version,
)
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.local_postgres import free_port
from crucible_dagster.storage import LocalStorage, S3Storage, Storage
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.doris_standin import StandInCatalog, StreamLoadStandIn

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-canary-" + "doris"
PASSWORD = "canary-fe-password"
ENV = {"AWS_ACCESS_KEY_ID": "AKIA-canary", "AWS_SECRET_ACCESS_KEY": SECRET}
REGION_KEY = "fixtures/tpch/sf0.01/region/part-0.parquet"
REGION_URI = f"s3://fixtures-bucket/crucible/{REGION_KEY}"
NOW = re.compile(r"'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}'")


def _target(sut_type: str = "doris", port: int = 9030) -> SutTarget:
    return SutTarget(
        sut_identity(sut_type, "127.0.0.1", port, "bench"),
        user="loader",
        password=SecretStr(PASSWORD),
        connect_timeout_s=5,
    )


def _manifest(sha: str = "a" * 64, rows: int = 5) -> FixtureManifest:
    columns = [("r_regionkey", "int64"), ("r_name", "string"), ("r_comment", "string")]
    table = ManifestTable(
        files=[FixtureFile(key=REGION_KEY, bytes=100, sha256=sha, rows=rows)],
        rows=rows,
        bytes=100,
        columns=[FixtureColumn(name=n, arrow_type=t) for n, t in columns],
    )
    return FixtureManifest(
        dataset="tpch",
        scale="0.01",
        generator="test",
        created_at=datetime.now(UTC),
        tables={"region": table},
        data_version=data_version([sha]),
    )


def _s3_storage() -> S3Storage:
    # Never contacted: the manifest is passed in and the stand-in reads the "files".
    return S3Storage("fixtures-bucket", "crucible", endpoint_url="http://127.0.0.1:9",
                     access_key="a", secret_key="b")  # fmt: skip


def _load(reload: str = "auto") -> list[FixtureTableLoad]:
    return [FixtureTableLoad(FixtureRef("tpch", "0.01", "region"), "region", reload=reload)]  # type: ignore[arg-type]


def _run(
    catalog: StandInCatalog,
    *,
    sut_type: str = "doris",
    reload: str = "auto",
    manifest: FixtureManifest | None = None,
    storage: Storage | None = None,
    options: doris.DorisLoadOptions | None = None,
) -> list[TableLoadReport]:
    catalog.statements.clear()
    return asyncio.run(
        doris.load_fixture_tables(
            _target(sut_type),
            storage or _s3_storage(),
            _load(reload),
            manifests=[manifest or _manifest()],
            run_id="plan_20240101-0000_abcdef01",
            options=options or doris.DorisLoadOptions(environ=ENV),
            executor=catalog,
        )
    )


def _recorded(catalog: StandInCatalog) -> list[str]:
    return [NOW.sub("'<now>'", s) for s in catalog.statements]


OPEN = [
    "CREATE DATABASE IF NOT EXISTS `bench`",
    "CREATE TABLE IF NOT EXISTS `bench`.`crucible_fixture_state` (`table_name` VARCHAR(256) "
    "NOT NULL, `dataset` VARCHAR(64) NOT NULL, `scale` VARCHAR(32) NOT NULL, `source_table` "
    "VARCHAR(64) NOT NULL, `data_version` VARCHAR(128) NOT NULL, `rows` BIGINT NOT NULL, "
    "`loaded_at` DATETIME(6) NOT NULL, `loaded_by_run` VARCHAR(128) NULL) ENGINE=OLAP "
    "UNIQUE KEY(`table_name`) DISTRIBUTED BY HASH(`table_name`) BUCKETS 1 "
    'PROPERTIES ("replication_num" = "1")',
]
CHECKS = [
    "SELECT `data_version`, `rows` FROM `bench`.`crucible_fixture_state` WHERE `table_name` = "
    "'region'",
    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'bench' AND "
    "table_name = 'region'",
]
FILL = [
    "DROP TABLE IF EXISTS `bench`.`region__crucible_load`",
    "CREATE TABLE `bench`.`region__crucible_load` (`r_regionkey` BIGINT NULL, `r_name` STRING "
    "NULL, `r_comment` STRING NULL) ENGINE=OLAP DUPLICATE KEY(`r_regionkey`) DISTRIBUTED BY "
    'HASH(`r_regionkey`) BUCKETS AUTO PROPERTIES ("replication_num" = "1")',
    'INSERT INTO `bench`.`region__crucible_load` SELECT * FROM S3("uri" = '
    f'"{REGION_URI}", "format" = "parquet", "s3.region" = "us-east-1", "s3.endpoint" = '
    '"http://127.0.0.1:9", "use_path_style" = "true", "s3.access_key" = "AKIA-canary", '
    f'"s3.secret_key" = "{SECRET}")',
    "SELECT COUNT(*) FROM `bench`.`region__crucible_load`",
]


def _record(version: str, rows: int) -> str:
    return (
        "INSERT INTO `bench`.`crucible_fixture_state` (`table_name`, `dataset`, `scale`, "
        "`source_table`, `data_version`, `rows`, `loaded_at`, `loaded_by_run`) VALUES ("
        f"'region', 'tpch', '0.01', 'region', '{version}', {rows}, '<now>', "
        "'plan_20240101-0000_abcdef01')"
    )


def test_first_load_fills_the_loading_table_renames_it_and_records_the_version() -> None:
    catalog = StandInCatalog(s3_rows={REGION_URI: 5})
    version = _manifest().data_version
    # The manifest's per-table version is the same function of the file hashes.
    [report] = _run(catalog)

    assert _recorded(catalog) == [
        *OPEN,
        *CHECKS,
        *FILL,
        _record("loading:" + version, 5),
        "ALTER TABLE `bench`.`region__crucible_load` RENAME `region`",
        _record(version, 5),
    ]
    assert (report.action, report.rows, report.data_version) == ("loaded", 5, version)
    assert catalog.tables == {("bench", "crucible_fixture_state"): 0, ("bench", "region"): 5}
    assert catalog.state["region"]["data_version"] == version


def test_same_data_version_is_skipped_without_touching_the_table() -> None:
    catalog = StandInCatalog(s3_rows={REGION_URI: 5})
    _run(catalog)

    [report] = _run(catalog)

    assert _recorded(catalog) == [*OPEN, *CHECKS]
    assert (report.action, report.rows) == ("skipped", 5)


def test_reload_always_replaces_the_table_atomically_on_doris() -> None:
    catalog = StandInCatalog(s3_rows={REGION_URI: 5})
    first = _run(catalog)[0]
    catalog.s3_rows[REGION_URI] = 7

    [report] = _run(catalog, reload="always", manifest=_manifest(rows=7))

    version = _manifest().data_version
    assert _recorded(catalog)[len(OPEN) + len(CHECKS) + len(FILL) :] == [
        _record("loading:" + version, 7),
        "ALTER TABLE `bench`.`region` REPLACE WITH TABLE `region__crucible_load` "
        "PROPERTIES('swap' = 'false')",
        _record(version, 7),
    ]
    assert report.replaced_data_version == first.data_version
    assert catalog.tables[("bench", "region")] == 7
    assert ("bench", "region__crucible_load") not in catalog.tables


def test_reload_always_swaps_and_drops_the_old_data_on_starrocks() -> None:
    catalog = StandInCatalog(s3_rows={REGION_URI: 5})
    _run(catalog, sut_type="starrocks")
    catalog.s3_rows[REGION_URI] = 7

    _run(catalog, sut_type="starrocks", reload="always", manifest=_manifest(rows=7))

    recorded = _recorded(catalog)
    assert recorded[-4:-1] == [
        recorded[-4],  # the marker
        "ALTER TABLE `bench`.`region` SWAP WITH `region__crucible_load`",
        "DROP TABLE `bench`.`region__crucible_load`",
    ]
    assert any(' FROM FILES("path" = ' in s for s in recorded)
    assert catalog.tables[("bench", "region")] == 7
    assert ("bench", "region__crucible_load") not in catalog.tables


def test_starrocks_first_load_reads_the_files_with_its_files_function() -> None:
    catalog = StandInCatalog(s3_rows={REGION_URI: 5})

    [report] = _run(catalog, sut_type="starrocks")

    [insert] = [s for s in catalog.statements if "FILES(" in s]
    assert insert == (
        'INSERT INTO `bench`.`region__crucible_load` SELECT * FROM FILES("path" = '
        f'"{REGION_URI}", "format" = "parquet", "aws.s3.access_key" = "AKIA-canary", '
        f'"aws.s3.secret_key" = "{SECRET}", "aws.s3.region" = "us-east-1", "aws.s3.endpoint" '
        '= "http://127.0.0.1:9", "aws.s3.enable_path_style_access" = "true")'
    )
    assert "`loaded_at` DATETIME NOT NULL" in catalog.statements[1]
    assert report.rows == 5


def test_table_crucible_did_not_create_is_refused_and_left_alone() -> None:
    catalog = StandInCatalog(databases={"bench"}, tables={("bench", "region"): 42})

    with pytest.raises(FixtureError, match="not created by Crucible"):
        _run(catalog)

    assert _recorded(catalog) == [*OPEN, *CHECKS]
    assert catalog.tables[("bench", "region")] == 42


def test_new_data_version_without_reload_always_is_refused() -> None:
    catalog = StandInCatalog(s3_rows={REGION_URI: 5})
    _run(catalog)

    with pytest.raises(FixtureError, match="set reload: always"):
        _run(catalog, manifest=_manifest(sha="b" * 64))

    assert _recorded(catalog) == [*OPEN, *CHECKS]


def test_failed_insert_drops_the_loading_table_and_never_shows_the_key() -> None:
    catalog = StandInCatalog(s3_rows={REGION_URI: 5}, fail_on="FROM S3(")

    with pytest.raises(FixtureError) as caught:
        _run(catalog)

    message = str(caught.value)
    assert SECRET not in message and "AKIA-canary" not in message
    assert '"s3.secret_key" = "***"' in message
    assert catalog.statements[-1] == "DROP TABLE IF EXISTS `bench`.`region__crucible_load`"
    assert ("bench", "region") not in catalog.tables
    assert "region" not in catalog.state


def test_starrocks_refuses_storage_it_cannot_read(tmp_path: Path) -> None:
    catalog = StandInCatalog()

    with pytest.raises(FixtureError, match="StarRocks loads fixtures from S3 only"):
        _run(catalog, sut_type="starrocks", storage=LocalStorage(tmp_path))


def test_mysql_loader_hands_doris_targets_to_the_doris_loader(tmp_path: Path) -> None:
    # Nothing listens on the port: the Doris loader's connection attempt is what fails.
    target = _target("doris", free_port())
    with pytest.raises(SutError, match="cannot reach") as caught:
        asyncio.run(
            mysql_loader.load_fixture_tables(
                target, LocalStorage(tmp_path), _load(), manifests=[_manifest()]
            )
        )
    assert PASSWORD not in str(caught.value)


# -- Stream Load --------------------------------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[StreamLoadStandIn]:
    server = StreamLoadStandIn("loader", PASSWORD)
    yield server
    server.stop()


def _parquet(path: Path, rows: int, payload_bytes: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "blob": pa.array([os.urandom(payload_bytes // 2).hex() for _ in range(rows)]),
        }
    )
    pq.write_table(table, path, compression="none")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _request(
    standin: StreamLoadStandIn, label: str, size: int, password: str = PASSWORD
) -> stream_load.StreamLoadRequest:
    return stream_load.stream_load_request(
        "127.0.0.1", standin.fe_port, "bench", "region__crucible_load", label=label,
        size_bytes=size, user="loader", password=SecretStr(password),
    )  # fmt: skip


def _send(
    standin: StreamLoadStandIn,
    storage: LocalStorage,
    key: str,
    label: str,
    password: str = PASSWORD,
) -> stream_load.StreamLoadResult:
    size = (storage.root / key).stat().st_size
    return asyncio.run(
        stream_load.stream_load(
            _request(standin, label, size, password),
            lambda: stream_load.storage_chunks(storage, key),
            where=storage.uri(key),
        )
    )


def test_stream_load_follows_the_fe_redirect_with_credentials_and_sends_the_file_once(
    standin: StreamLoadStandIn, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    path = _parquet(tmp_path / "t/part-0.parquet", rows=1000)

    result = _send(standin, storage, "t/part-0.parquet", "crucible_t_1_0")

    assert (result.status, result.loaded_rows, result.already_loaded) == ("Success", 1000, False)
    [load] = standin.loads
    assert (load.database, load.table, load.label) == ("bench", "region__crucible_load",
                                                       "crucible_t_1_0")  # fmt: skip
    assert (load.size_bytes, load.sha256) == (path.stat().st_size, _sha(path))
    assert load.headers["format"] == "parquet" and load.headers["Expect"] == "100-continue"
    assert standin.fe_requests[0]["Expect"] == "100-continue"
    # The FE only redirected: not one byte of the body went to it.
    assert standin.fe_body_bytes == 0


def test_label_already_used_counts_as_already_loaded(
    standin: StreamLoadStandIn, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    _parquet(tmp_path / "t/part-0.parquet", rows=10)
    _send(standin, storage, "t/part-0.parquet", "crucible_t_2_0")

    again = _send(standin, storage, "t/part-0.parquet", "crucible_t_2_0")

    assert (again.status, again.already_loaded) == ("Label Already Exists", True)
    assert len(standin.loads) == 1


def test_lost_answer_is_retried_with_the_same_label_and_loads_once(
    standin: StreamLoadStandIn, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    _parquet(tmp_path / "t/part-0.parquet", rows=10)
    standin.drop_next_answer = True

    result = _send(standin, storage, "t/part-0.parquet", "crucible_t_3_0")

    assert result.already_loaded
    assert len(standin.loads) == 1 and standin.be_requests == 2


def test_failed_stream_load_reports_the_message_and_error_url(
    standin: StreamLoadStandIn, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    _parquet(tmp_path / "t/part-0.parquet", rows=10)
    error_url = f"http://127.0.0.1:{standin.be_port}/api/_load_error_log?file=__shard_1/err"
    standin.fail_next = {"Status": "Fail", "Message": "too many filtered rows",
                         "ErrorURL": error_url}  # fmt: skip

    with pytest.raises(FixtureError) as caught:
        _send(standin, storage, "t/part-0.parquet", "crucible_t_4_0")

    message = str(caught.value)
    assert "too many filtered rows" in message and error_url in message
    assert "crucible_t_4_0" in message and PASSWORD not in message


def test_wrong_password_is_refused_without_showing_it(
    standin: StreamLoadStandIn, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    _parquet(tmp_path / "t/part-0.parquet", rows=10)

    with pytest.raises(FixtureError, match="HTTP 401") as caught:
        _send(standin, storage, "t/part-0.parquet", "crucible_t_5_0", password="wrong-canary")

    assert "wrong-canary" not in str(caught.value)
    assert standin.loads == [] and standin.fe_body_bytes == 0


def test_stream_load_memory_stays_bounded_for_a_large_file(
    standin: StreamLoadStandIn, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    path = _parquet(tmp_path / "big/part-0.parquet", rows=600, payload_bytes=64 * 1024)
    size = path.stat().st_size
    assert size > 36 * 1024 * 1024

    tracemalloc.start()
    try:
        result = _send(standin, storage, "big/part-0.parquet", "crucible_big_0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.loaded_rows == 600
    assert standin.loads[0].sha256 == _sha(path)
    # Client and stand-ins together hold a few chunks, not the 37 MiB file.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"


def test_local_storage_doris_load_streams_every_file_and_records_it(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    root = storage.root
    paths = [
        _parquet(root / f"fixtures/tpch/sf0.01/region/part-{n}.parquet", rows=3 + n)
        for n in range(2)
    ]
    catalog = StandInCatalog()
    standin = StreamLoadStandIn("loader", PASSWORD, catalog)
    try:
        options = doris.DorisLoadOptions(http_port=standin.fe_port, continue_wait_s=1.0)
        reports = asyncio.run(
            doris.load_fixture_tables(
                _target(),
                storage,
                _load(),
                run_id="plan_20240101-0000_abcdef01",
                options=options,
                executor=catalog,
            )
        )
    finally:
        standin.stop()

    [report] = reports
    assert (report.action, report.rows) == ("loaded", 7)
    assert [load.sha256 for load in standin.loads] == [_sha(p) for p in paths]
    labels = [load.label for load in standin.loads]
    assert len(set(labels)) == 2 and all(label.startswith("crucible_region__") for label in labels)
    # Without a manifest the schema comes from the first file's footer.
    create = next(s for s in catalog.statements if s.startswith("CREATE TABLE `bench`.`region"))
    assert create.startswith(
        "CREATE TABLE `bench`.`region__crucible_load` (`id` BIGINT NULL, `blob` STRING NULL) "
        "ENGINE=OLAP DUPLICATE KEY(`id`)"
    )
    assert catalog.tables[("bench", "region")] == 7
    assert standin.fe_body_bytes == 0
