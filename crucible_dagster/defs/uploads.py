"""Uploaded fixtures: an observed source asset with one dynamic partition per fixture table.

`crucible fixtures upload` records an observation as soon as the files are stored. The
observation function and the sensor re-read the manifests from storage, so uploads made without
a Dagster instance (or by other means) appear on the next observation.

Partitioned observable source assets may only return data versions, without metadata, from
their observe function in this Dagster version; the observe function therefore logs complete
observations itself and returns an empty `DataVersionsByPartition`.
"""

from datetime import UTC, datetime

import dagster as dg

from crucible_dagster.defs.resources import CrucibleResource
from crucible_dagster.errors import CrucibleError
from crucible_dagster.fixtures.upload import StoredUpload, UploadReport, stored_uploads
from crucible_dagster.storage import Storage, storage_from_url

UPLOADS_ASSET_KEY = dg.AssetKey(["fixtures", "uploads"])
# The tag Dagster reads an observation's data version from; Dagster does not export its name.
DATA_VERSION_TAG = "dagster/data_version"

UPLOADS_PARTITIONS_NAME = "fixture_uploads"
fixture_uploads_partitions = dg.DynamicPartitionsDefinition(name=UPLOADS_PARTITIONS_NAME)


def upload_metadata(storage: Storage, upload: StoredUpload) -> dict[str, dg.MetadataValue]:
    """What the UI shows for one uploaded table: where, files, bytes, rows, schema, version."""
    table = upload.table
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=c.name, type=c.arrow_type) for c in table.columns]
    )
    files = [
        {"key": f.key, "bytes": f.bytes, "sha256": f.sha256, "rows": f.rows} for f in table.files
    ]
    return {
        "uri": dg.MetadataValue.path(storage.uri(upload.ref.prefix)),
        "manifest": dg.MetadataValue.path(storage.uri(upload.manifest_key)),
        "files": dg.MetadataValue.int(len(table.files)),
        "bytes": dg.MetadataValue.int(table.bytes),
        "rows": dg.MetadataValue.int(table.rows),
        "dagster/column_schema": dg.MetadataValue.table_schema(schema),
        "file_list": dg.MetadataValue.json(files),
        "data_version": dg.MetadataValue.text(upload.data_version),
        "updated_at": dg.MetadataValue.timestamp(upload.updated_at),
    }


def upload_observation(storage: Storage, upload: StoredUpload) -> dg.AssetObservation:
    """The observation of one uploaded table, carrying its data version."""
    return dg.AssetObservation(
        asset_key=UPLOADS_ASSET_KEY,
        partition=upload.ref.fixture_id,
        metadata=upload_metadata(storage, upload),
        tags={DATA_VERSION_TAG: upload.data_version},
    )


def stored_upload_of(report: UploadReport) -> StoredUpload:
    """The stored-upload view of what `upload_fixture` just wrote."""
    return StoredUpload(
        ref=report.ref,
        table=report.table,
        data_version=report.table_data_version,
        manifest_key=report.manifest_key,
        updated_at=datetime.now(UTC),
    )


def record_upload(instance: dg.DagsterInstance, storage: Storage, report: UploadReport) -> None:
    """Adds the upload's partition if new and records its observation, outside any run."""
    partition = report.ref.fixture_id
    name = UPLOADS_PARTITIONS_NAME
    if not instance.has_dynamic_partition(name, partition):
        instance.add_dynamic_partitions(name, [partition])
    instance.report_runless_asset_event(upload_observation(storage, stored_upload_of(report)))


def last_observed_version(instance: dg.DagsterInstance, partition: str) -> str | None:
    """The data version of the partition's latest observation, if any."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=UPLOADS_ASSET_KEY, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    observation = records[0].event_log_entry.asset_observation
    return observation.tags.get(DATA_VERSION_TAG) if observation is not None else None


def _storage(crucible: CrucibleResource) -> Storage:
    settings = crucible.settings()
    return storage_from_url(settings.storage_url, settings)


@dg.observable_source_asset(
    key=UPLOADS_ASSET_KEY,
    partitions_def=fixture_uploads_partitions,
    group_name="fixtures",
)
def fixture_uploads(
    context: dg.OpExecutionContext, crucible: CrucibleResource
) -> dg.DataVersionsByPartition:
    """Fixture tables uploaded with `crucible fixtures upload`, one per partition."""
    storage = _storage(crucible)

    def skipped(error: CrucibleError) -> None:
        context.log.warning("skipping an unreadable manifest: %s", error)

    uploads = stored_uploads(storage, on_error=skipped)
    if context.has_partition_key:
        uploads = [u for u in uploads if u.ref.fixture_id == context.partition_key]
    name = UPLOADS_PARTITIONS_NAME
    new = [
        u.ref.fixture_id
        for u in uploads
        if not context.instance.has_dynamic_partition(name, u.ref.fixture_id)
    ]
    if new:
        context.instance.add_dynamic_partitions(name, new)
    for upload in uploads:
        context.log_event(upload_observation(storage, upload))
    context.log.info("observed %d uploaded fixture tables in %s", len(uploads), storage.describe())
    return dg.DataVersionsByPartition({})


observe_fixture_uploads = dg.define_asset_job(
    "observe_fixture_uploads",
    selection=dg.AssetSelection.assets(UPLOADS_ASSET_KEY),
    description="Re-reads the manifests of uploaded fixtures and records what changed.",
)


@dg.sensor(
    name="fixture_uploads_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def fixture_uploads_sensor(
    context: dg.SensorEvaluationContext, crucible: CrucibleResource
) -> dg.SensorResult | dg.SkipReason:
    """Records uploaded fixture tables that are new or changed since their last observation."""
    storage = _storage(crucible)
    uploads = stored_uploads(
        storage, on_error=lambda error: context.log.warning("skipping a manifest: %s", error)
    )
    name = UPLOADS_PARTITIONS_NAME
    known = set(context.instance.get_dynamic_partitions(name))
    new = [u.ref.fixture_id for u in uploads if u.ref.fixture_id not in known]
    changed = [
        u
        for u in uploads
        if last_observed_version(context.instance, u.ref.fixture_id) != u.data_version
    ]
    if not new and not changed:
        return dg.SkipReason(f"no new or changed uploads in {storage.describe()}")
    return dg.SensorResult(
        asset_events=[upload_observation(storage, u) for u in changed],
        dynamic_partitions_requests=[fixture_uploads_partitions.build_add_request(new)]
        if new
        else [],
    )


def upload_definitions() -> dg.Definitions:
    """The uploaded-fixture asset, its observation job and sensor, with the `crucible` resource."""
    return dg.Definitions(
        assets=[fixture_uploads],
        jobs=[observe_fixture_uploads],
        sensors=[fixture_uploads_sensor],
        resources={"crucible": CrucibleResource()},
    )
