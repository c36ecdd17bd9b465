"""The native engine: closed and open-model load from shard processes, measured with HDR
histograms of service time and, in open models, of latency from the intended start."""

from crucible_dagster.engine.model import (
    CLOSED,
    CONSTANT_ARRIVAL_RATE,
    RAMPING_ARRIVAL_RATE,
    EngineQuery,
    LoadShape,
    Measurement,
    Progress,
    QueryMeasurement,
    ShardHealth,
)
from crucible_dagster.engine.runner import run_load

__all__ = [
    "CLOSED",
    "CONSTANT_ARRIVAL_RATE",
    "RAMPING_ARRIVAL_RATE",
    "EngineQuery",
    "LoadShape",
    "Measurement",
    "Progress",
    "QueryMeasurement",
    "ShardHealth",
    "run_load",
]
