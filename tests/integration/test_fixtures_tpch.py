import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crucible_dagster.fixtures.manifest import FixtureManifest, read_manifest
from crucible_dagster.fixtures.tpch import TPCH_TABLES, generate_tpch
from crucible_dagster.storage import LocalStorage
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration


def test_tpch_sf001_manifest_counts_rows_and_describes_every_table(
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
) -> None:
    storage, manifest = tpch_sf001

    assert manifest.dataset == "tpch"
    assert manifest.scale == "0.01"
    assert manifest.generator == "tpchgen-cli 4.0.0"
    assert sorted(manifest.tables) == sorted(TPCH_TABLES)
    assert manifest.tables["lineitem"].rows == 60175
    assert manifest.tables["orders"].rows == 15000
    assert manifest.tables["region"].rows == 5
    columns = {c.name: c.arrow_type for c in manifest.tables["lineitem"].columns}
    assert columns["l_quantity"] == "decimal128(15, 2)"
    assert columns["l_shipdate"] == "date32[day]"
    assert read_manifest(storage, "tpch", "0.01") == manifest


def test_tpch_objects_match_their_manifest_entries(
    tpch_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    storage, manifest = tpch_sf001
    orders = manifest.tables["orders"]

    assert [f.key for f in orders.files] == ["fixtures/tpch/sf0.01/orders/part-0.parquet"]
    local = tmp_path / "orders.parquet"
    storage.download_file(orders.files[0].key, local)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == orders.files[0].sha256
    assert local.stat().st_size == orders.bytes
    assert pq.ParquetFile(local).metadata.num_rows == 15000
    keys = [o.key for o in storage.list("fixtures/tpch/sf0.01/")]
    assert keys[0] == "fixtures/tpch/sf0.01/_manifest.json"
    assert len(keys) == 1 + len(TPCH_TABLES)


def test_tpch_into_s3_gives_the_same_data_version_as_locally(
    s3_server: S3Server, tpch_sf001: tuple[LocalStorage, FixtureManifest], tmp_path: Path
) -> None:
    _, local_manifest = tpch_sf001
    storage = s3_server.storage(prefix="crucible")

    manifest = generate_tpch(storage, "0.01", work_dir=tmp_path)

    assert manifest.data_version == local_manifest.data_version
    assert manifest.tables["lineitem"].rows == 60175
    assert manifest.tables["orders"].rows == 15000
    stored = json.loads(storage.get_bytes("fixtures/tpch/sf0.01/_manifest.json"))
    assert stored["data_version"] == manifest.data_version
    assert storage.exists("fixtures/tpch/sf0.01/lineitem/part-0.parquet")
    assert list(tmp_path.iterdir()) == []  # the generator's scratch files are gone


def test_tpch_parts_are_stored_as_numbered_files_and_old_parts_removed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("fixtures/tpch/sf0.01/orders/part-7.parquet", b"left over")

    manifest = generate_tpch(storage, "0.01", parts=2)

    orders = manifest.tables["orders"]
    assert [f.key for f in orders.files] == [
        "fixtures/tpch/sf0.01/orders/part-0.parquet",
        "fixtures/tpch/sf0.01/orders/part-1.parquet",
    ]
    assert orders.rows == 15000
    assert [o.key for o in storage.list("fixtures/tpch/sf0.01/orders/")] == [
        f.key for f in orders.files
    ]
