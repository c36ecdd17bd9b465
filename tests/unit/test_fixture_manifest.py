from datetime import UTC, datetime
from pathlib import Path

import pytest

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures.manifest import (
    FixtureColumn,
    FixtureFile,
    FixtureManifest,
    ManifestTable,
    data_version,
    manifest_key,
    read_manifest,
    write_manifest,
)
from crucible_dagster.storage import LocalStorage


def _manifest(shas: list[str]) -> FixtureManifest:
    files = [
        FixtureFile(key=f"fixtures/tpch/sf1/t/part-{i}.parquet", bytes=10, sha256=s, rows=5)
        for i, s in enumerate(shas)
    ]
    table = ManifestTable(
        files=files,
        rows=5 * len(files),
        bytes=10 * len(files),
        columns=[FixtureColumn(name="id", arrow_type="int64")],
    )
    return FixtureManifest(
        dataset="tpch",
        scale="1",
        generator="tpchgen-cli 4.0.0",
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
        tables={"t": table},
        data_version=data_version(shas),
    )


def test_data_version_depends_on_content_not_order() -> None:
    assert data_version(["b" * 64, "a" * 64]) == data_version(["a" * 64, "b" * 64])
    assert data_version(["a" * 64]) != data_version(["a" * 64, "b" * 64])
    assert len(data_version([])) == 64


def test_data_version_does_not_merge_neighbouring_digests() -> None:
    assert data_version(["ab", "c"]) != data_version(["a", "bc"])


def test_manifest_round_trips_through_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    manifest = _manifest(["a" * 64, "b" * 64])

    key = write_manifest(storage, manifest)

    assert key == manifest_key("tpch", "1") == "fixtures/tpch/sf1/_manifest.json"
    assert read_manifest(storage, "tpch", "1") == manifest


def test_missing_manifest_reads_as_none(tmp_path: Path) -> None:
    assert read_manifest(LocalStorage(tmp_path), "tpch", "0.01") is None


def test_corrupt_manifest_is_a_fixture_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes(manifest_key("tpch", "1"), b'{"dataset": "tpch"')

    with pytest.raises(FixtureError, match="not valid"):
        read_manifest(storage, "tpch", "1")


def test_unknown_table_lists_the_known_ones() -> None:
    with pytest.raises(FixtureError, match=r"no table 'nope' \(tables: t\)"):
        _manifest(["a" * 64]).table("nope")
