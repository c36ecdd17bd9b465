"""The Dagster code location: `dagster dev -w workspace.yaml` loads this module."""

import dagster as dg

from crucible_dagster.defs import build_definitions
from crucible_dagster.settings import get_settings


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(get_settings().plans_dir)
