"""The result model of a run, how measurements become one, and where results are stored."""

from crucible_dagster.results.model import (
    FaultEvent,
    FaultStatus,
    FixtureLoadRecord,
    QueryImpact,
    QueryResult,
    Result,
    RunStatus,
    ShardHealthRecord,
    SutRecord,
    ThresholdRecord,
    Verdict,
    WindowStats,
    WorkloadRecord,
)
from crucible_dagster.results.store import latest_result, read_result, result_key, write_result
from crucible_dagster.results.summary import query_result, summarise

__all__ = [
    "FaultEvent",
    "FaultStatus",
    "FixtureLoadRecord",
    "QueryImpact",
    "QueryResult",
    "Result",
    "RunStatus",
    "ShardHealthRecord",
    "SutRecord",
    "ThresholdRecord",
    "Verdict",
    "WindowStats",
    "WorkloadRecord",
    "latest_result",
    "query_result",
    "read_result",
    "result_key",
    "summarise",
    "write_result",
]
