import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from crucible_dagster.errors import StorageError
from crucible_dagster.settings import Settings
from crucible_dagster.storage import (
    LocalStorage,
    S3Storage,
    storage_from_url,
    validate_key,
    validate_prefix,
)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "fixtures/../../outside",
        "fixtures/./x",
        "fixtures//x",
        "fixtures/x/",
        "fixtures\\x",
        "fixtures/x\x00y",
        "fixtures/x\ny",
        "..",
    ],
)
def test_keys_that_could_escape_or_confuse_are_rejected(key: str) -> None:
    with pytest.raises(StorageError, match="invalid object key"):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "fixtures/tpch/sf0.01/lineitem/part-0.parquet", "a/.b/c"])
def test_ordinary_keys_are_accepted(key: str) -> None:
    assert validate_key(key) == key


def test_prefixes_may_end_with_a_slash_or_stop_mid_segment() -> None:
    assert validate_prefix("") == ""
    assert validate_prefix("fixtures/") == "fixtures/"
    assert validate_prefix("fixtures/tp") == "fixtures/tp"
    with pytest.raises(StorageError):
        validate_prefix("../")


def test_local_storage_round_trips_bytes_and_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    storage.put_bytes("plans/demo.yaml", b"name: demo\n")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    storage.put_file("fixtures/x/part-0.parquet", source)

    assert storage.get_bytes("plans/demo.yaml") == b"name: demo\n"
    with storage.open_read("fixtures/x/part-0.parquet") as stream:
        assert stream.read() == source.read_bytes()
    target = tmp_path / "out" / "copy.bin"
    storage.download_file("fixtures/x/part-0.parquet", target)
    assert target.read_bytes() == source.read_bytes()
    assert storage.exists("plans/demo.yaml")
    assert not storage.exists("plans/other.yaml")


def test_local_storage_replaces_objects_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("a/b", b"one")
    storage.put_bytes("a/b", b"two")

    assert storage.get_bytes("a/b") == b"two"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


def test_local_listing_is_sorted_filtered_by_prefix_and_sized(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for key in ["fixtures/tpch/b", "fixtures/tpch/a", "fixtures/tpcds/a", "plans/p.yaml"]:
        storage.put_bytes(key, key.encode())

    assert [o.key for o in storage.list("fixtures/tpch/")] == ["fixtures/tpch/a", "fixtures/tpch/b"]
    assert [o.key for o in storage.list("fixtures/tpc")] == [
        "fixtures/tpcds/a",
        "fixtures/tpch/a",
        "fixtures/tpch/b",
    ]
    assert len(storage.list()) == 4
    assert storage.list("nothing/") == []
    info = storage.list("plans/")[0]
    assert info.size == len(b"plans/p.yaml")
    assert info.last_modified.tzinfo is not None


def test_missing_local_object_names_key_and_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)

    with pytest.raises(StorageError, match=r"'results/x.json' not found in local storage"):
        storage.get_bytes("results/x.json")
    with pytest.raises(StorageError, match="not found"):
        storage.download_file("results/x.json", tmp_path / "x")


def test_local_delete_is_idempotent_and_prunes_empty_folders(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    storage.put_bytes("a/b/c", b"x")
    storage.put_bytes("a/keep", b"x")

    storage.delete("a/b/c")
    storage.delete("a/b/c")

    assert not (tmp_path / "root" / "a" / "b").exists()
    assert storage.exists("a/keep")


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    storage = LocalStorage(root)

    with pytest.raises(StorageError, match="outside"):
        storage.get_bytes("link/secret")
    with pytest.raises(StorageError, match="outside"):
        storage.put_bytes("link/new", b"x")
    assert not (outside / "new").exists()


def test_local_uri_is_a_file_url(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.uri("a/b.json") == (tmp_path / "a" / "b.json").as_uri()


def test_file_urls_and_plain_paths_give_local_storage(tmp_path: Path) -> None:
    from_url = storage_from_url(tmp_path.as_uri())
    from_path = storage_from_url(str(tmp_path))

    assert isinstance(from_url, LocalStorage)
    assert isinstance(from_path, LocalStorage)
    assert from_url.root == from_path.root == tmp_path.resolve()


def test_s3_url_takes_endpoint_and_credentials_from_settings() -> None:
    settings = Settings(
        storage_url="s3://crucible-data/team/a",
        s3_endpoint_url="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
        AWS_SECRET_ACCESS_KEY=SecretStr("very-secret-value"),
        AWS_REGION="eu-west-1",
    )

    storage = storage_from_url(settings.storage_url, settings)

    assert isinstance(storage, S3Storage)
    assert storage.uri("results/r/result.json") == (
        "s3://crucible-data/team/a/results/r/result.json"
    )
    assert "very-secret-value" not in storage.describe()
    assert "http://127.0.0.1:9" in storage.describe()


@pytest.mark.parametrize("url", ["ftp://host/x", "http://127.0.0.1/x", "s3://B_ad/x", ""])
def test_unsupported_storage_urls_are_errors(url: str) -> None:
    with pytest.raises(StorageError):
        storage_from_url(url, Settings(storage_url="file:///tmp"))


def test_listing_through_a_symlink_out_of_the_root_shows_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)

    assert LocalStorage(root).list("link/") == []


def test_storing_a_missing_local_file_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such file"):
        LocalStorage(tmp_path / "root").put_file("a", tmp_path / "missing.bin")
