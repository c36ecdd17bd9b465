"""The uploaded-fixture source asset: observations with metadata and data version per table."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG as DAGSTER_DATA_VERSION_TAG

from crucible_dagster.defs.resources import CrucibleResource
from crucible_dagster.defs.uploads import (
    DATA_VERSION_TAG,
    UPLOADS_ASSET_KEY,
    UPLOADS_PARTITIONS_NAME,
    fixture_uploads,
    fixture_uploads_sensor,
    last_observed_version,
    observe_fixture_uploads,
    record_upload,
    upload_definitions,
)
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.fixtures.upload import UploadReport, upload_fixture
from crucible_dagster.storage import LocalStorage

ORDERS = FixtureRef("shop", "1", "orders")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def upload(storage: LocalStorage, tmp_path: Path, ref: FixtureRef, rows: int) -> UploadReport:
    path = tmp_path / f"{ref.table}-{rows}.parquet"
    pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64())}), path)
    return upload_fixture(storage, ref, [path], state_dir=tmp_path / "state")


def latest(instance: dg.DagsterInstance, partition: str) -> dg.AssetObservation:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=UPLOADS_ASSET_KEY, asset_partitions=[partition]), limit=1
    ).records
    observation = records[0].event_log_entry.asset_observation
    assert observation is not None
    return observation


def test_the_data_version_tag_is_the_one_dagster_reads() -> None:
    assert DATA_VERSION_TAG == DAGSTER_DATA_VERSION_TAG


def test_upload_definitions_load() -> None:
    dg.Definitions.validate_loadable(upload_definitions())


def test_observing_reads_manifests_adds_partitions_and_records_metadata(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    orders = upload(storage, tmp_path, ORDERS, 12)
    upload(storage, tmp_path, FixtureRef("shop", "1", "items"), 3)
    defs = dg.Definitions(
        assets=[fixture_uploads],
        jobs=[observe_fixture_uploads],
        resources={"crucible": CrucibleResource(storage_url=storage.root.as_uri())},
    )

    outcome = defs.resolve_job_def("observe_fixture_uploads").execute_in_process(instance=instance)

    assert outcome.success
    assert sorted(instance.get_dynamic_partitions(UPLOADS_PARTITIONS_NAME)) == [
        "shop/sf1/items",
        "shop/sf1/orders",
    ]
    observation = latest(instance, "shop/sf1/orders")
    assert observation.tags[DATA_VERSION_TAG] == orders.table_data_version
    metadata = observation.metadata
    assert metadata["rows"].value == 12
    assert metadata["files"].value == 1
    assert metadata["bytes"].value == orders.table.bytes
    assert metadata["data_version"].value == orders.table_data_version
    assert [c.name for c in metadata["dagster/column_schema"].value.columns] == ["id"]
    assert metadata["file_list"].value == [
        {"key": f.key, "bytes": f.bytes, "sha256": f.sha256, "rows": f.rows}
        for f in orders.table.files
    ]
    assert metadata["uri"].value == storage.uri(ORDERS.prefix)
    # Dagster sees the version as the source partition's current data version.
    record = instance.get_latest_data_version_record(
        UPLOADS_ASSET_KEY, is_source=True, partition_key="shop/sf1/orders"
    )
    assert record is not None
    assert record.asset_observation is not None
    assert record.asset_observation.tags[DATA_VERSION_TAG] == orders.table_data_version


def test_observing_one_partition_records_only_that_table(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    upload(storage, tmp_path, ORDERS, 12)
    upload(storage, tmp_path, FixtureRef("shop", "1", "items"), 3)
    instance.add_dynamic_partitions(UPLOADS_PARTITIONS_NAME, ["shop/sf1/items"])
    defs = dg.Definitions(
        assets=[fixture_uploads],
        jobs=[observe_fixture_uploads],
        resources={"crucible": CrucibleResource(storage_url=storage.root.as_uri())},
    )

    outcome = defs.resolve_job_def("observe_fixture_uploads").execute_in_process(
        instance=instance, partition_key="shop/sf1/items"
    )

    observed = [
        e.asset_observation_data.asset_observation for e in outcome.get_asset_observation_events()
    ]
    assert [o.partition for o in observed] == ["shop/sf1/items"]
    assert observed[0].metadata["rows"].value == 3


def test_recording_an_upload_adds_its_partition_and_observation(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    report = upload(storage, tmp_path, ORDERS, 5)

    record_upload(instance, storage, report)
    record_upload(instance, storage, report)

    assert instance.get_dynamic_partitions(UPLOADS_PARTITIONS_NAME) == ["shop/sf1/orders"]
    assert last_observed_version(instance, "shop/sf1/orders") == report.table_data_version
    assert latest(instance, "shop/sf1/orders").metadata["rows"].value == 5


def test_sensor_reports_new_and_changed_uploads_only(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    resources = {"crucible": CrucibleResource(storage_url=storage.root.as_uri())}
    recorded = upload(storage, tmp_path, ORDERS, 5)
    record_upload(instance, storage, recorded)
    upload(storage, tmp_path, FixtureRef("shop", "1", "items"), 3)

    result = fixture_uploads_sensor(dg.build_sensor_context(instance=instance, resources=resources))

    assert isinstance(result, dg.SensorResult)
    assert [e.partition for e in result.asset_events] == ["shop/sf1/items"]
    [request] = result.dynamic_partitions_requests
    assert isinstance(request, dg.AddDynamicPartitionsRequest)
    assert list(request.partition_keys) == ["shop/sf1/items"]

    changed = upload(storage, tmp_path, ORDERS, 9)
    instance.add_dynamic_partitions(UPLOADS_PARTITIONS_NAME, ["shop/sf1/items"])
    for event in result.asset_events:
        instance.report_runless_asset_event(event)

    again = fixture_uploads_sensor(dg.build_sensor_context(instance=instance, resources=resources))

    assert isinstance(again, dg.SensorResult)
    assert [e.partition for e in again.asset_events] == ["shop/sf1/orders"]
    assert again.asset_events[0].tags[DATA_VERSION_TAG] == changed.table_data_version
    assert again.dynamic_partitions_requests == []


def test_sensor_skips_when_nothing_changed(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    record_upload(instance, storage, upload(storage, tmp_path, ORDERS, 5))
    resources = {"crucible": CrucibleResource(storage_url=storage.root.as_uri())}

    result = fixture_uploads_sensor(dg.build_sensor_context(instance=instance, resources=resources))

    assert isinstance(result, dg.SkipReason)
