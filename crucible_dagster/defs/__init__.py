"""Crucible's Dagster definitions: fixture assets, one job and results asset per plan."""

import logging
from pathlib import Path

import dagster as dg

from crucible_dagster.defs.fixtures import tpcds_fixture, tpch_fixture
from crucible_dagster.defs.plan_job import build_plan_assets
from crucible_dagster.defs.resources import CrucibleResource
from crucible_dagster.defs.sweeper import crucible_orphaned_cli_runs, crucible_sweeper
from crucible_dagster.defs.uploads import (
    fixture_uploads,
    fixture_uploads_sensor,
    observe_fixture_uploads,
)
from crucible_dagster.errors import CrucibleError
from crucible_dagster.plan import LoadedPlan, load_plan

logger = logging.getLogger("crucible")


def load_plans(plans_dir: Path) -> list[LoadedPlan]:
    """Every valid plan in `plans_dir`; an invalid one is skipped with its errors logged."""
    plans = []
    for path in sorted(plans_dir.glob("*.yaml")):
        try:
            plans.append(load_plan(path))
        except CrucibleError as error:
            logger.error("skipping plan %s:\n%s", path, error)
    return plans


def build_definitions(plans_dir: Path) -> dg.Definitions:
    assets: list[dg.AssetsDefinition | dg.SourceAsset] = [
        tpch_fixture,
        tpcds_fixture,
        fixture_uploads,
    ]
    checks: list[dg.AssetChecksDefinition] = []
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [observe_fixture_uploads]
    for loaded in load_plans(plans_dir):
        asset, check, job = build_plan_assets(loaded)
        assets.append(asset)
        checks.append(check)
        jobs.append(job)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        sensors=[crucible_sweeper, crucible_orphaned_cli_runs, fixture_uploads_sensor],
        resources={"crucible": CrucibleResource()},
    )
