"""Cleans up after runs that died without doing it themselves: their leases are freed."""

import dagster as dg

from crucible_dagster.lease import LeaseStore
from crucible_dagster.run import RUN_ID_TAG
from crucible_dagster.settings import get_settings


@dg.run_failure_sensor(
    name="crucible_sweeper",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
)
def crucible_sweeper(context: dg.RunFailureSensorContext) -> None:
    """Frees the SUT leases a failed run still holds, so the next run need not wait for expiry."""
    run_id = context.dagster_run.tags.get(RUN_ID_TAG)
    if run_id is None:
        return
    freed = LeaseStore(get_settings().database_url).release_run(run_id)
    if freed:
        context.log.info("freed leases of failed run %s: %s", run_id, ", ".join(freed))
