"""Plans: pydantic models of the plan format, YAML loading with positions, validation."""

from crucible_dagster.plan.duration import Duration
from crucible_dagster.plan.loading import PLAN_NAME_PATTERN, LoadedPlan, load_plan, parse_plan
from crucible_dagster.plan.models import (
    CHAOS_MESH_KINDS,
    SUT_TYPES,
    ChaosExperiment,
    ChaosSchedule,
    ChaosSpec,
    ChaosTarget,
    ClusterInfo,
    ComponentSpec,
    Execution,
    FailureDetection,
    FixtureGroup,
    FixtureItem,
    FixtureTable,
    Observability,
    Plan,
    PrometheusMetric,
    PrometheusSource,
    TestEnvironment,
    TestMetadata,
    WorkloadRef,
)
from crucible_dagster.plan.secret import Secret
from crucible_dagster.plan.validation import (
    resolve_workloads,
    validate_plan_file,
    validate_plan_folder,
)

__all__ = [
    "CHAOS_MESH_KINDS",
    "PLAN_NAME_PATTERN",
    "SUT_TYPES",
    "ChaosExperiment",
    "ChaosSchedule",
    "ChaosSpec",
    "ChaosTarget",
    "ClusterInfo",
    "ComponentSpec",
    "Duration",
    "Execution",
    "FailureDetection",
    "FixtureGroup",
    "FixtureItem",
    "FixtureTable",
    "LoadedPlan",
    "Observability",
    "Plan",
    "PrometheusMetric",
    "PrometheusSource",
    "Secret",
    "TestEnvironment",
    "TestMetadata",
    "WorkloadRef",
    "load_plan",
    "parse_plan",
    "resolve_workloads",
    "validate_plan_file",
    "validate_plan_folder",
]
