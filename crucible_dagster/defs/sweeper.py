"""Cleans up after runs that died without doing it themselves.

A run that fails recovers its chaos faults and frees its leases at once. A `crucible run`
process that was killed outright cannot even mark its Dagster run failed; its run would stay
STARTED, and the run queue would keep every later run of that SUT waiting, so the orphan sensor
finds such runs by their process id. Both sensors recover what such a run left in the fault
journal before freeing its leases.
"""

import os
import socket
from datetime import UTC, datetime

import dagster as dg
import psutil

from crucible_dagster.lease import LeaseStore
from crucible_dagster.run import LAUNCH_TAG, RUN_ID_TAG, recover_run_faults
from crucible_dagster.settings import get_settings

CLI_PID_TAG = "crucible/cli-pid"
CLI_HOST_TAG = "crucible/cli-host"


def cli_process_tags() -> dict[str, str]:
    """Tags that let the orphan sensor tell whether the CLI process of a run still lives."""
    return {CLI_PID_TAG: str(os.getpid()), CLI_HOST_TAG: socket.gethostname()}


def _process_alive(pid: int, started_before: datetime) -> bool:
    try:
        process = psutil.Process(pid)
        created = datetime.fromtimestamp(process.create_time(), UTC)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # A process started after the run is another one that reuses the number.
    return created <= started_before and process.status() != psutil.STATUS_ZOMBIE


def orphaned_cli_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """STARTED runs of `crucible run` on this host whose process is gone."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags={LAUNCH_TAG: "cli"})
    )
    orphans = []
    for record in records:
        tags = record.dagster_run.tags
        if tags.get(CLI_HOST_TAG) != socket.gethostname() or CLI_PID_TAG not in tags:
            continue
        started = record.start_time or record.create_timestamp.timestamp()
        if not _process_alive(int(tags[CLI_PID_TAG]), datetime.fromtimestamp(started, UTC)):
            orphans.append(record.dagster_run)
    return orphans


def fail_orphaned_cli_runs(instance: dg.DagsterInstance) -> list[str]:
    """Marks orphaned CLI runs failed, recovers the faults they left and frees their leases;
    returns their Dagster run ids."""
    settings = get_settings()
    store = LeaseStore(settings.database_url)
    failed = []
    for run in orphaned_cli_runs(instance):
        instance.report_run_failed(
            run, message="the `crucible run` process running it died (killed or crashed)"
        )
        crucible_run_id = run.tags.get(RUN_ID_TAG)
        if crucible_run_id:
            for said in recover_run_faults(crucible_run_id, settings):
                instance.report_engine_event(said, run)
            store.release_run(crucible_run_id)
        failed.append(run.run_id)
    return failed


@dg.sensor(
    name="crucible_orphaned_cli_runs",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def crucible_orphaned_cli_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Fails runs whose `crucible run` process died, so the SUT's queue moves on."""
    failed = fail_orphaned_cli_runs(context.instance)
    if failed:
        return dg.SkipReason(f"marked failed: {', '.join(failed)}")
    return dg.SkipReason("no orphaned runs")


@dg.run_failure_sensor(
    name="crucible_sweeper",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
)
def crucible_sweeper(context: dg.RunFailureSensorContext) -> None:
    """Recovers the chaos faults a failed run left in place, then frees the SUT leases it still
    holds, so that the next run need not wait for their expiry."""
    run_id = context.dagster_run.tags.get(RUN_ID_TAG)
    if run_id is None:
        return
    settings = get_settings()
    for said in recover_run_faults(run_id, settings):
        context.log.info("run %s: %s", run_id, said)
    freed = LeaseStore(settings.database_url).release_run(run_id)
    if freed:
        context.log.info("freed leases of failed run %s: %s", run_id, ", ".join(freed))
