"""The native engine: closed-model load from shard processes, measured with HDR histograms."""

from crucible_dagster.engine.model import (
    EngineQuery,
    FailureDetection,
    LoadShape,
    Measurement,
    Progress,
    QueryMeasurement,
)
from crucible_dagster.engine.runner import run_load

__all__ = [
    "EngineQuery",
    "FailureDetection",
    "LoadShape",
    "Measurement",
    "Progress",
    "QueryMeasurement",
    "run_load",
]
