"""Uploading fixture tables to a real S3 server (SeaweedFS): presigned multipart, resume, checks."""

import asyncio
import base64
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import asyncpg
import dagster as dg
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from crucible_dagster.cli import EXIT_INVALID, app
from crucible_dagster.defs.resources import CrucibleResource
from crucible_dagster.defs.uploads import (
    DATA_VERSION_TAG,
    UPLOADS_ASSET_KEY,
    fixture_uploads,
    observe_fixture_uploads,
)
from crucible_dagster.errors import FixtureError, StorageError
from crucible_dagster.fixtures.loading import FixtureTableLoad
from crucible_dagster.fixtures.manifest import data_version, read_manifest
from crucible_dagster.fixtures.postgresql import load_fixture_tables
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.fixtures.upload import (
    MIB,
    PartRefused,
    UploadProgress,
    UploadState,
    UploadStateStore,
    file_sha256,
    send_part,
    upload_fixture,
)
from crucible_dagster.settings import get_settings
from crucible_dagster.storage import S3Storage
from crucible_dagster.suts.base import SutTarget
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration

ORDERS = FixtureRef("shop", "1", "orders")
PART = 5 * MIB
KEY0 = "fixtures/shop/sf1/orders/part-0.parquet"
ROWS = 640_000


class Interrupted(Exception):
    """Raised by a progress callback to stop an upload the way a dying process would."""


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 12 MiB of incompressible Parquet: three parts of 5 MiB."""
    rows = ROWS
    rnd = random.Random(7)
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "value": pa.array([rnd.getrandbits(62) for _ in range(rows)], pa.int64()),
        }
    )
    path = tmp_path_factory.mktemp("upload") / "orders.parquet"
    pq.write_table(table, path, compression="none", row_group_size=100_000)
    assert 12 * MIB < path.stat().st_size < 15 * MIB
    return path


def pending_uploads(s3: S3Server, storage: S3Storage) -> list[str]:
    listed = s3.client().list_multipart_uploads(Bucket=storage.bucket)
    return [u["UploadId"] for u in listed.get("Uploads", [])]


def interrupt_after(parts: int) -> tuple[list[int], Callable[[UploadProgress], None]]:
    sent: list[int] = []

    def progress(update: UploadProgress) -> None:
        if update.part is not None and not update.reused:
            sent.append(update.part)
            if len(sent) >= parts:
                raise Interrupted

    return sent, progress


def test_multipart_upload_through_presigned_urls_lands_byte_identical(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path
) -> None:
    storage = s3_server.storage()
    updates: list[UploadProgress] = []

    report = upload_fixture(
        storage,
        ORDERS,
        [big_parquet],
        state_dir=tmp_path / "state",
        part_size=PART,
        parallel=3,
        progress=updates.append,
    )

    [uploaded] = report.files
    assert uploaded.multipart and uploaded.parts_sent == (1, 2, 3)
    assert sorted(u.part for u in updates if u.part) == [1, 2, 3]
    assert updates[-1].done_bytes == big_parquet.stat().st_size
    [info] = storage.list(ORDERS.prefix)
    assert info.key == KEY0 and info.etag.endswith("-3")
    downloaded = tmp_path / "down.parquet"
    storage.download_file(KEY0, downloaded)
    assert file_sha256(downloaded) == file_sha256(big_parquet)
    # The manifest describes the table as the loaders expect it.
    manifest = read_manifest(storage, "shop", "1")
    assert manifest is not None
    table = manifest.table("orders")
    assert table.rows == ROWS
    assert [(f.key, f.bytes, f.sha256) for f in table.files] == [
        (KEY0, big_parquet.stat().st_size, file_sha256(big_parquet))
    ]
    assert report.table_data_version == data_version([file_sha256(big_parquet)])
    assert manifest.data_version == data_version([file_sha256(big_parquet)])
    assert [(c.name, c.arrow_type) for c in table.columns] == [("id", "int64"), ("value", "int64")]
    assert pending_uploads(s3_server, storage) == []
    assert list((tmp_path / "state").glob("*.json")) == []


def test_small_file_goes_as_one_presigned_put(s3_server: S3Server, tmp_path: Path) -> None:
    storage = s3_server.storage()
    path = tmp_path / "small.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2, 3], pa.int64())}), path)

    report = upload_fixture(storage, ORDERS, [path], state_dir=tmp_path, part_size=PART)

    assert not report.files[0].multipart
    [info] = storage.list(ORDERS.prefix)
    assert info.etag == hashlib.md5(path.read_bytes()).hexdigest()


def test_interrupted_upload_resumes_sending_only_the_missing_parts(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path
) -> None:
    storage = s3_server.storage()
    state_dir = tmp_path / "state"
    sent, progress = interrupt_after(1)

    with pytest.raises(Interrupted):
        upload_fixture(
            storage,
            ORDERS,
            [big_parquet],
            state_dir=state_dir,
            part_size=PART,
            parallel=1,
            progress=progress,
        )

    assert sent == [1]
    assert len(list(state_dir.glob("*.json"))) == 1
    [upload_id] = pending_uploads(s3_server, storage)
    assert [p.number for p in storage.list_parts(KEY0, upload_id) or []] == [1]
    assert storage.list(ORDERS.prefix) == []
    assert read_manifest(storage, "shop", "1") is None

    resumed: list[UploadProgress] = []
    report = upload_fixture(
        storage,
        ORDERS,
        [big_parquet],
        state_dir=state_dir,
        part_size=PART,
        parallel=2,
        progress=resumed.append,
    )

    [uploaded] = report.files
    assert uploaded.parts_reused == (1,)
    assert uploaded.parts_sent == (2, 3)
    assert sorted(u.part for u in resumed if u.part and not u.reused) == [2, 3]
    downloaded = tmp_path / "down.parquet"
    storage.download_file(KEY0, downloaded)
    assert file_sha256(downloaded) == file_sha256(big_parquet)
    assert pending_uploads(s3_server, storage) == []


def test_rerun_after_an_interruption_in_the_second_file_keeps_the_first(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path
) -> None:
    storage = s3_server.storage()
    state_dir = tmp_path / "state"
    second = tmp_path / "second.parquet"
    pq.write_table(pq.read_table(big_parquet).slice(1), second, compression="none")
    sent, progress = interrupt_after(4)

    with pytest.raises(Interrupted):
        upload_fixture(
            storage,
            ORDERS,
            [big_parquet, second],
            state_dir=state_dir,
            part_size=PART,
            parallel=1,
            progress=progress,
        )
    assert sent == [1, 2, 3, 1]

    report = upload_fixture(
        storage, ORDERS, [big_parquet, second], state_dir=state_dir, part_size=PART
    )

    first, rest = report.files
    assert (first.parts_reused, first.parts_sent) == ((1, 2, 3), ())
    assert (rest.parts_reused, rest.parts_sent) == ((1,), (2, 3))
    assert report.table.rows == 2 * ROWS - 1
    assert list(state_dir.glob("*.json")) == []


def test_stale_upload_id_restarts_the_upload_cleanly(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path
) -> None:
    storage = s3_server.storage()
    state_dir = tmp_path / "state"
    stat = big_parquet.stat()
    UploadStateStore(state_dir).save(
        UploadState(
            storage=storage.describe(),
            key=KEY0,
            path=str(big_parquet),
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            sha256=file_sha256(big_parquet),
            part_size=PART,
            upload_id="no-such-upload",
        )
    )

    report = upload_fixture(storage, ORDERS, [big_parquet], state_dir=state_dir, part_size=PART)

    assert report.files[0].parts_sent == (1, 2, 3)
    assert report.files[0].parts_reused == ()
    assert storage.list(ORDERS.prefix)[0].size == stat.st_size


def test_upload_of_another_file_to_the_same_key_aborts_the_foreign_upload(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path
) -> None:
    storage = s3_server.storage()
    state_dir = tmp_path / "state"
    _, progress = interrupt_after(1)
    with pytest.raises(Interrupted):
        upload_fixture(
            storage,
            ORDERS,
            [big_parquet],
            state_dir=state_dir,
            part_size=PART,
            parallel=1,
            progress=progress,
        )
    [foreign] = pending_uploads(s3_server, storage)
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(big_parquet).slice(0, ROWS - 100_000), other, compression="none")

    report = upload_fixture(storage, ORDERS, [other], state_dir=state_dir, part_size=PART)

    assert report.files[0].parts_reused == ()
    assert foreign not in pending_uploads(s3_server, storage)
    assert pending_uploads(s3_server, storage) == []
    manifest = read_manifest(storage, "shop", "1")
    assert manifest is not None and manifest.table("orders").rows == ROWS - 100_000


def test_corrupted_part_is_refused_by_the_servers_checksum(
    s3_server: S3Server, big_parquet: Path
) -> None:
    storage = s3_server.storage()
    upload_id = storage.create_multipart_upload(KEY0)
    body = big_parquet.read_bytes()[:PART]
    content_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    url = storage.presign_upload_part(KEY0, upload_id, 1, content_md5)
    corrupted = bytearray(body)
    corrupted[1234] ^= 0xFF

    with httpx.Client() as http:
        with pytest.raises(PartRefused, match="BadDigest"):
            send_part(http, url, bytes(corrupted), content_md5, "part 1")
        assert storage.list_parts(KEY0, upload_id) == []
        # The same URL takes the intact bytes.
        etag = send_part(http, url, body, content_md5, "part 1")

    assert etag == hashlib.md5(body).hexdigest()
    storage.abort_multipart_upload(KEY0, upload_id)


def test_file_changed_during_upload_aborts_and_records_nothing(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path
) -> None:
    storage = s3_server.storage()
    path = tmp_path / "changing.parquet"
    path.write_bytes(big_parquet.read_bytes())

    def touch_after_first_part(update: UploadProgress) -> None:
        if update.part == 1:
            with path.open("ab") as out:
                out.write(b"more")

    with pytest.raises(FixtureError, match="changed while it was uploaded"):
        upload_fixture(
            storage,
            ORDERS,
            [path],
            state_dir=tmp_path / "state",
            part_size=PART,
            parallel=1,
            progress=touch_after_first_part,
        )

    assert pending_uploads(s3_server, storage) == []
    assert list((tmp_path / "state").glob("*.json")) == []
    assert storage.list() == []


def test_uploaded_table_loads_into_postgresql(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path, pg_target: SutTarget
) -> None:
    storage = s3_server.storage()
    upload_fixture(storage, ORDERS, [big_parquet], state_dir=tmp_path, part_size=PART)

    [report] = asyncio.run(
        load_fixture_tables(pg_target, storage, [FixtureTableLoad(ORDERS, "orders")])
    )

    assert report.action == "loaded"
    assert report.rows == ROWS
    assert report.data_version == data_version([file_sha256(big_parquet)])

    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(
            host=pg_target.host,
            port=pg_target.port,
            user=pg_target.user,
            password=pg_target.password.get_secret_value(),
            database=pg_target.database,
        )
        try:
            row = await conn.fetchrow("SELECT count(*), max(id) FROM orders")
            return int(row[0]), int(row[1])
        finally:
            await conn.close()

    assert asyncio.run(count()) == (ROWS, ROWS - 1)
    # The loaded-state bookkeeping sees the same version: a second load is skipped.
    [again] = asyncio.run(
        load_fixture_tables(pg_target, storage, [FixtureTableLoad(ORDERS, "orders")])
    )
    assert again.action == "skipped"


@pytest.fixture
def s3_settings(
    s3_server: S3Server, crucible_home: Path, monkeypatch: pytest.MonkeyPatch
) -> S3Storage:
    """CRUCIBLE_* and AWS_* pointing at a fresh bucket; the storage the settings name."""
    bucket = s3_server.make_bucket()
    monkeypatch.setenv("CRUCIBLE_STORAGE_URL", f"s3://{bucket}/crucible")
    monkeypatch.setenv("CRUCIBLE_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    get_settings.cache_clear()
    return s3_server.storage(bucket, "crucible")


def test_observation_of_uploads_on_s3_returns_the_metadata(
    s3_settings: S3Storage, big_parquet: Path, tmp_path: Path
) -> None:
    report = upload_fixture(s3_settings, ORDERS, [big_parquet], state_dir=tmp_path, part_size=PART)
    defs = dg.Definitions(
        assets=[fixture_uploads],
        jobs=[observe_fixture_uploads],
        resources={"crucible": CrucibleResource()},
    )

    with dg.instance_for_test() as instance:
        outcome = defs.resolve_job_def("observe_fixture_uploads").execute_in_process(
            instance=instance
        )
        [event] = outcome.get_asset_observation_events()

    observation = event.asset_observation_data.asset_observation
    assert observation.asset_key == UPLOADS_ASSET_KEY
    assert observation.partition == "shop/sf1/orders"
    assert observation.tags[DATA_VERSION_TAG] == report.table_data_version
    assert observation.metadata["rows"].value == ROWS
    assert observation.metadata["bytes"].value == big_parquet.stat().st_size
    assert (
        observation.metadata["uri"].value == f"s3://{s3_settings.bucket}/crucible/{ORDERS.prefix}"
    )


def test_cli_uploads_to_s3_and_a_bad_file_exits_2_with_its_name(
    s3_settings: S3Storage, big_parquet: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(big_parquet.read_bytes()[: 6 * MIB])

    bad = runner.invoke(
        app, ["fixtures", "upload", "shop/sf1/orders", str(big_parquet), str(broken)]
    )

    assert bad.exit_code == EXIT_INVALID
    assert f"{broken}: not a readable Parquet file" in bad.output
    assert s3_settings.list() == []

    good = runner.invoke(
        app,
        ["fixtures", "upload", "shop/sf1/orders", str(big_parquet), "--part-size", "5"],
    )

    assert good.exit_code == 0, good.output
    assert "uploaded shop/sf1/orders: 1 file(s)" in good.output
    assert s3_settings.list(ORDERS.prefix)[0].etag.endswith("-3")
    assert "Traceback" not in bad.output + good.output


def test_wrong_credentials_fail_before_any_part_without_the_secret(
    s3_server: S3Server, big_parquet: Path, tmp_path: Path
) -> None:
    wrong = "wrong-secret-" + "7" * 20
    storage = S3Storage(
        bucket=s3_server.make_bucket(),
        endpoint_url=s3_server.endpoint_url,
        access_key=s3_server.access_key,
        secret_key=wrong,
    )

    with pytest.raises(StorageError) as raised:
        upload_fixture(storage, ORDERS, [big_parquet], state_dir=tmp_path, part_size=PART)

    assert wrong not in str(raised.value)
    assert "credentials were refused" in str(raised.value)
