import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import SecretStr

from crucible_dagster.errors import StorageError
from crucible_dagster.local_postgres import free_port
from crucible_dagster.settings import Settings
from crucible_dagster.storage import S3Storage, storage_from_url
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration


def test_s3_round_trips_bytes_and_lists_sorted_under_prefix(s3_server: S3Server) -> None:
    storage = s3_server.storage(prefix="team/a")
    for key in ["fixtures/tpch/b", "fixtures/tpch/a", "plans/p.yaml"]:
        storage.put_bytes(key, key.encode())

    listed = storage.list("fixtures/")

    assert [o.key for o in listed] == ["fixtures/tpch/a", "fixtures/tpch/b"]
    assert listed[0].size == len(b"fixtures/tpch/a")
    assert listed[0].etag == hashlib.md5(b"fixtures/tpch/a").hexdigest()
    assert storage.get_bytes("plans/p.yaml") == b"plans/p.yaml"
    with storage.open_read("plans/p.yaml") as stream:
        assert stream.read() == b"plans/p.yaml"
    assert storage.exists("plans/p.yaml")
    assert not storage.exists("plans/q.yaml")
    assert storage.uri("plans/p.yaml") == f"s3://{storage.bucket}/team/a/plans/p.yaml"
    # The prefix keeps each storage inside its own part of the bucket.
    assert [o.key for o in s3_server.storage(storage.bucket, "team/b").list()] == []


def test_s3_listing_pages_through_more_than_one_page(s3_server: S3Server) -> None:
    storage = s3_server.storage()
    keys = [f"results/r/{i:04d}.ndjson" for i in range(1005)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: storage.put_bytes(key, b"x"), keys))

    assert [o.key for o in storage.list("results/")] == keys


def test_s3_delete_removes_and_tolerates_missing(s3_server: S3Server) -> None:
    storage = s3_server.storage()
    storage.put_bytes("a/b", b"x")

    storage.delete("a/b")
    storage.delete("a/b")

    assert not storage.exists("a/b")


def test_large_file_goes_up_in_parts_and_comes_back_intact(
    s3_server: S3Server, tmp_path: Path
) -> None:
    storage = s3_server.storage()
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(20 * 1024 * 1024 + 123))

    storage.put_file("fixtures/big/part-0.parquet", source)
    target = tmp_path / "down" / "big.bin"
    storage.download_file("fixtures/big/part-0.parquet", target)

    info = storage.list("fixtures/big/")[0]
    assert info.size == source.stat().st_size
    assert info.etag.endswith("-3")  # three 8 MiB parts: a multipart upload
    assert hashlib.sha256(target.read_bytes()).digest() == (
        hashlib.sha256(source.read_bytes()).digest()
    )
    assert [p.name for p in target.parent.iterdir()] == ["big.bin"]


def test_missing_object_error_names_key_and_storage(s3_server: S3Server, tmp_path: Path) -> None:
    storage = s3_server.storage()

    with pytest.raises(StorageError, match=r"reading 'nope/x'.*s3://.*object not found"):
        storage.get_bytes("nope/x")
    with pytest.raises(StorageError, match="object not found"):
        storage.download_file("nope/x", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_wrong_credentials_are_a_storage_error_without_the_secret(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    wrong_secret = "wrong-secret-" + "9" * 20
    storage = S3Storage(
        bucket=bucket,
        endpoint_url=s3_server.endpoint_url,
        access_key=s3_server.access_key,
        secret_key=wrong_secret,
    )

    with pytest.raises(StorageError, match="credentials were refused") as raised:
        storage.put_bytes("a", b"x")
    assert wrong_secret not in str(raised.value)
    with pytest.raises(StorageError, match="credentials were refused"):
        storage.list()


def test_unreachable_endpoint_is_a_clear_storage_error() -> None:
    storage = S3Storage(
        bucket="crucible",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key="a",
        secret_key="b",
    )

    with pytest.raises(StorageError, match="unreachable"):
        storage.exists("a")


def test_missing_bucket_is_reported_and_ensure_bucket_creates_it(s3_server: S3Server) -> None:
    storage = s3_server.storage(bucket="crucible-" + os.urandom(4).hex())

    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.put_bytes("a", b"x")
    storage.ensure_bucket()
    storage.ensure_bucket()
    storage.put_bytes("a", b"x")

    assert storage.get_bytes("a") == b"x"


def test_s3_url_with_settings_reaches_the_server(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    settings = Settings(
        storage_url=f"s3://{bucket}/crucible",
        s3_endpoint_url=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=SecretStr(s3_server.secret_key),
    )

    storage = storage_from_url(settings.storage_url, settings)
    storage.put_bytes("plans/demo.yaml", b"x")

    assert [o.key for o in s3_server.storage(bucket).list()] == ["crucible/plans/demo.yaml"]
    assert s3_server.secret_key not in storage.describe()
