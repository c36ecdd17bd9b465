"""The per-plan factory: every plan becomes its own job and its own `results/<plan>` asset.

A plan's ops run in one process (the in-process executor), so the lease heartbeat started by the
first op lives until the last one; the run's state is kept per Dagster run id in this process.
"""

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from crucible_dagster.defs.fixtures import add_scale_partition, manifest_metadata
from crucible_dagster.defs.metadata import result_metadata
from crucible_dagster.defs.pipes import pipes_k6_launch, pod_load_in
from crucible_dagster.defs.resources import CrucibleResource
from crucible_dagster.engine import Progress
from crucible_dagster.errors import CrucibleError
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.plan import LoadedPlan
from crucible_dagster.run import (
    LAUNCH_TAG,
    PLAN_TAG,
    RUN_ID_TAG,
    SUT_TAG,
    PlanRun,
    check_run,
    finish,
    load_fixtures,
    mint_run_id,
    open_run,
    plan_sut,
    run_the_load,
    shielded,
    take_lease,
)

# Runs in progress in this process, by Dagster run id.
_runs: dict[str, PlanRun] = {}
_runs_lock = threading.Lock()

PROGRESS_LOG_INTERVAL_S = 5.0


def _run_of(context: dg.OpExecutionContext) -> PlanRun:
    with _runs_lock:
        run = _runs.get(context.run_id)
    if run is None:
        raise dg.Failure(
            description="this step needs the run state made by take_lease; re-execute the "
            "whole job rather than a single step"
        )
    return run


@contextmanager
def _step(context: dg.OpExecutionContext, run: PlanRun) -> Iterator[PlanRun]:
    """Any error ends the run: its result is written and the lease released, then it fails."""
    try:
        yield run
    except BaseException as error:
        try:
            shielded(functools.partial(finish, run, error), f"writing the result of {run.run_id}")
        finally:
            with _runs_lock:
                _runs.pop(context.run_id, None)
        if isinstance(error, CrucibleError):
            raise dg.Failure(description=str(error)) from None
        raise


def build_plan_assets(
    loaded: LoadedPlan,
) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition, UnresolvedAssetJobDefinition]:
    """The `results/<plan>` asset made of the run's ops, its thresholds check, and the job
    named after the plan."""
    name = loaded.name
    sut = plan_sut(loaded)

    @dg.op(name=f"{name}__take_lease", description="Takes the SUT lease and checks the workloads.")
    def take_lease_op(context: dg.OpExecutionContext, crucible: CrucibleResource) -> None:
        tags = context.run.tags
        run_id = tags.get(RUN_ID_TAG)
        # A re-execution inherits its parent's tags, but it is a run of its own.
        if run_id is None or context.run.parent_run_id is not None:
            run_id = mint_run_id(name)
            context.instance.add_run_tags(context.run_id, {RUN_ID_TAG: run_id})
        run = open_run(
            loaded,
            crucible.settings(),
            run_id=run_id,
            launch=tags.get(LAUNCH_TAG, "dagster"),
            dagster_run_id=context.run_id,
            log=context.log,
        )
        with _runs_lock:
            _runs[context.run_id] = run
        with _step(context, run):
            check_run(run)
            take_lease(run)

    @dg.op(
        name=f"{name}__load_fixtures",
        ins={"after": dg.In(dg.Nothing)},
        description="Generates missing fixture partitions, then loads them into the SUT.",
    )
    def load_fixtures_op(context: dg.OpExecutionContext) -> None:
        run = _run_of(context)

        def materialized(manifest: FixtureManifest) -> None:
            add_scale_partition(context.instance, manifest.dataset, manifest.scale)
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=dg.AssetKey(["fixtures", manifest.dataset]),
                    partition=manifest.scale,
                    metadata=manifest_metadata(manifest),
                )
            )

        with _step(context, run):
            load_fixtures(run, on_materialized=materialized)

    @dg.op(
        name=f"{name}__run_load",
        ins={"after": dg.In(dg.Nothing)},
        description="Preflights every query, then drives the load with the plan's engine.",
    )
    def run_load_op(context: dg.OpExecutionContext) -> dg.Output[None]:
        run = _run_of(context)
        last_log = [0.0]

        def progress(update: Progress) -> None:
            now = time.monotonic()
            if now - last_log[0] >= PROGRESS_LOG_INTERVAL_S:
                last_log[0] = now
                context.log.info(
                    "progress %.0f/%.0f s: %d queries, %d errors, %.1f QPS, %d VUs",
                    update.elapsed_s,
                    update.planned_s,
                    update.completed,
                    update.errors,
                    update.qps_recent,
                    update.active_vus,
                )

        run.k6_launch = pipes_k6_launch(context)
        run.pod_load = pod_load_in(context, run.run_id, run.settings.k8s_ready_timeout_s)
        with _step(context, run):
            run_the_load(run, on_progress=progress)
        # Explicit: after a Pipes session (the k6 engine's), Dagster wants the output named.
        return dg.Output(None)

    @dg.op(
        name=f"{name}__write_results",
        ins={"after": dg.In(dg.Nothing)},
        out=dg.Out(dg.Nothing),
        description="Writes the result to storage and releases the SUT lease.",
    )
    def write_results_op(context: dg.OpExecutionContext) -> dg.Output[None]:
        run = _run_of(context)
        with _step(context, run):
            result = finish(run)
        with _runs_lock:
            _runs.pop(context.run_id, None)
        metadata = result_metadata(
            result,
            run.result_uri,
            chart_uri=run.storage.uri(result.chart) if result.chart else None,
            report_uri=run.storage.uri(result.report) if result.report else None,
            chart_png=run.chart_png,
        )
        return dg.Output(None, metadata=metadata)

    @dg.graph_asset(
        key=["results", name],
        group_name="results",
        description=f"Results of plan {name}: per-query latency, throughput and errors.",
        tags={PLAN_TAG: name},
        kinds={sut.sut_type},
    )
    def results_asset() -> None:
        lease = take_lease_op.alias("take_lease")()
        fixtures = load_fixtures_op.alias("load_fixtures")(after=lease)
        load = run_load_op.alias("run_load")(after=fixtures)
        return write_results_op.alias("write_results")(after=load)

    @dg.asset_check(
        asset=results_asset.key,
        name="thresholds",
        description="Passes when the run met every threshold of the plan.",
    )
    def thresholds_check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(results_asset.key)
        materialization = event.asset_materialization if event is not None else None
        metadata = materialization.metadata if materialization is not None else {}
        verdict = metadata.get("verdict")
        failed = metadata.get("failed_thresholds")
        return dg.AssetCheckResult(
            passed=verdict is not None and verdict.value == "passed",
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "verdict": verdict.value if verdict is not None else "none",
                "failed_thresholds": failed.value if failed is not None else "",
            },
        )

    job = dg.define_asset_job(
        name=name,
        selection=[results_asset.key],
        description=loaded.plan.test_metadata.run_label or f"Load test plan {name}",
        tags={PLAN_TAG: name, SUT_TAG: sut.tag_value},
        executor_def=dg.in_process_executor,
        hooks={release_on_failure},
    )
    return results_asset, thresholds_check, job


@dg.failure_hook(name="crucible_release_on_failure")
def release_on_failure(context: dg.HookContext) -> None:
    """A second net under the ops' own handling: writes the result and frees the lease."""
    with _runs_lock:
        run = _runs.pop(context.run_id, None)
    if run is not None:
        finish(run, context.op_exception)
