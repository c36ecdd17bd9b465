"""The plan: pydantic models of the original Crucible plan format, strict and closed.

Field names and meanings are the original's. Differences on purpose: unknown keys are errors,
no lax coercion (`"5"` is not an integer), durations are validated, the original's undeclared
keys that mattered (`cluster_info.port`, `cluster_info.s3_region`, `fixtures[].columns`) are
declared, and rules it never checked (unique names, chaos fitting in the run) are checked.
"""

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from crucible_dagster.plan.duration import Duration
from crucible_dagster.plan.secret import Secret
from crucible_dagster.plan.thresholds import (
    TOTAL,
    ThresholdSpec,
    ThresholdSyntaxError,
    parse_threshold,
)
from crucible_dagster.suts.base import host_problem
from crucible_dagster.suts.names import (
    EMBEDDED_SUT_TYPES,
    SINGLE_PROCESS_SUT_TYPES,
    database_problem,
)

SUT_TYPES = (
    "postgresql",
    "mysql",
    "mariadb",
    "doris",
    "starrocks",
    "clickhouse",
    "trino",
    "cassandra",
    "scylla",
    "duckdb",
    "sqlite",
)
SUT_TYPE_ALIASES = {"postgres": "postgresql"}

# Chaos Mesh custom resource kinds, keyed by their lower-case spelling.
CHAOS_MESH_KINDS = {
    kind.lower(): kind
    for kind in ("NetworkChaos", "PodChaos", "StressChaos", "IOChaos", "TimeChaos", "DNSChaos")
}

# The local chaos backend's faults: on the SUT's process, through Crucible's TCP proxy in front
# of the SUT, and by iptables in the SUT's network namespace.
LOCAL_PROCESS_FAULTS = ("pause", "kill", "restart")
LOCAL_PROXY_FAULTS = ("latency", "bandwidth", "reset")
LOCAL_NETWORK_FAULTS = ("loss", "partition")
LOCAL_FAULTS = (*LOCAL_PROCESS_FAULTS, *LOCAL_PROXY_FAULTS, *LOCAL_NETWORK_FAULTS)

# chaosd's attack kinds: the route segment of `POST /api/attack/<kind>`.
CHAOSD_ATTACKS = (
    "process",
    "network",
    "stress",
    "disk",
    "clock",
    "jvm",
    "kafka",
    "redis",
    "vm",
    "user_defined",
)

# The backend a chaos_spec.engine names, by the env_type of the targets it serves.
CHAOS_ENGINE_ENV_TYPES = {"chaos-mesh": "k8s", "chaosd": "ec2", "local": "local"}

WORKLOAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
DATASET_PATTERN = r"^[a-z][a-z0-9_-]*$"
TABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A target table may be schema-qualified: `bench.lineitem`.
# The loaders' rule for the tables they create: one portable, unquoted-safe name.
TARGET_TABLE_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
SCALE_PATTERN = r"^\d+(\.\d+)?$"
FIXTURE_ID_PATTERN = r"^([a-z][a-z0-9_-]*)/sf(\d+(?:\.\d+)?)/([A-Za-z_][A-Za-z0-9_]*)$"

NonEmptyStr = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
Reload = Literal["auto", "always"]


class PlanModel(BaseModel):
    """Base of every plan model: unknown keys are errors, no coercion, inputs never echoed."""

    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)


def repeats(indexed: list[tuple[int, str]]) -> list[tuple[int, str, int]]:
    """Each value seen before, as (its index, the value, the index where it first appeared)."""
    first: dict[str, int] = {}
    found = []
    for index, value in indexed:
        if value in first:
            found.append((index, value, first[value]))
        first.setdefault(value, index)
    return found


def rules_error(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """One error carrying several cross-field problems, each with the field it belongs to.

    The loader expands it into one problem per entry, positioned at that field.
    """
    return PydanticCustomError(
        "crucible_rules", "; ".join(message for _, message in problems), {"problems": problems}
    )


class TestMetadata(PlanModel):
    __test__ = False  # not a pytest test class, despite its name

    run_label: str


class TlsOptions(PlanModel):
    """TLS to the SUT; files are paths, relative ones from the plan's folder."""

    enabled: bool = True
    ca_file: NonEmptyStr | None = None
    verify: bool = True
    cert_file: NonEmptyStr | None = None
    key_file: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _key_with_cert(self) -> "TlsOptions":
        if self.key_file is not None and self.cert_file is None:
            raise rules_error([("key_file", "key_file needs cert_file (the client certificate)")])
        return self


TlsEntry = Annotated[
    Annotated[bool, Tag("flag")] | Annotated[TlsOptions, Tag("options")],
    Discriminator(lambda value: "flag" if isinstance(value, bool) else "options"),
]


class ClusterInfo(PlanModel):
    """How to reach a SUT that already exists ("bring your own")."""

    host: NonEmptyStr
    username: str
    password: Secret
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    s3_region: NonEmptyStr | None = None
    connect_timeout: Duration = Duration("10s")
    statement_timeout: Duration = Duration("60s")
    # `true` for TLS with the system's authorities, or the options.
    tls: TlsEntry = False

    def tls_options(self) -> TlsOptions | None:
        if isinstance(self.tls, bool):
            return TlsOptions() if self.tls else None
        return self.tls if self.tls.enabled else None

    @model_validator(mode="after")
    def _timeouts_positive(self) -> "ClusterInfo":
        problems = [
            (name, f"{name} must be longer than 0s")
            for name in ("connect_timeout", "statement_timeout")
            if getattr(self, name).seconds <= 0
        ]
        host = host_problem(self.host)
        if host is not None:
            problems.append(("host", host))
        if problems:
            raise rules_error(problems)
        return self


class ComponentSpec(PlanModel):
    type: str
    cluster_info: ClusterInfo | None = None

    @field_validator("type")
    @classmethod
    def _known_sut_type(cls, value: str) -> str:
        lowered = value.strip().lower()
        lowered = SUT_TYPE_ALIASES.get(lowered, lowered)
        if lowered not in SUT_TYPES:
            raise PydanticCustomError(
                "crucible",
                "unknown SUT type {got}: expected one of {allowed}",
                {"got": repr(value), "allowed": ", ".join(SUT_TYPES)},
            )
        return lowered


@dataclass(frozen=True)
class FixtureTable:
    """One table to load: dataset `tpch` at scale `0.01`, its table `lineitem`, into a table."""

    dataset: str
    scale: str
    table: str
    target_table: str
    reload: str = "auto"
    columns: tuple[str, ...] | None = None

    @property
    def fixture_id(self) -> str:
        """The object-storage prefix form, `<dataset>/sf<scale>/<table>`."""
        return f"{self.dataset}/sf{self.scale}/{self.table}"


class FixtureItem(PlanModel):
    """The original's form: `{fixture_id: tpch/sf0.01/lineitem, table: lineitem}`."""

    fixture_id: str
    table: Annotated[str, Field(pattern=TARGET_TABLE_PATTERN)]
    columns: list[NonEmptyStr] | None = None
    reload: Reload = "auto"

    @field_validator("fixture_id")
    @classmethod
    def _prefix_form(cls, value: str) -> str:
        match = re.match(FIXTURE_ID_PATTERN, value)
        if match is None:
            raise PydanticCustomError(
                "crucible",
                "expected a fixture id '<dataset>/sf<scale>/<table>' such as "
                "tpch/sf0.01/lineitem, got {got}",
                {"got": repr(value)},
            )
        dataset, scale, table = match.groups()
        return f"{dataset}/sf{normalise_scale(scale)}/{table}"

    def fixture_tables(self) -> list[FixtureTable]:
        dataset, scale, table = self.fixture_id.split("/")
        columns = tuple(self.columns) if self.columns is not None else None
        return [FixtureTable(dataset, scale[2:], table, self.table, self.reload, columns)]


class FixtureGroup(PlanModel):
    """Several tables of one generated dataset: `{dataset: tpch, scale: "0.01", tables: [...]}`."""

    dataset: Annotated[str, Field(pattern=DATASET_PATTERN)]
    scale: str
    tables: Annotated[list[Annotated[str, Field(pattern=TABLE_PATTERN)]], Field(min_length=1)]
    reload: Reload = "auto"

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_text(cls, value: Any) -> str:
        # A number is accepted too: `scale: 0.01` is what people write, and YAML makes it a float.
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        text = value if isinstance(value, str) else repr(value) if number else ""
        if not re.match(SCALE_PATTERN, text) or float(text) <= 0:
            raise PydanticCustomError(
                "crucible",
                'expected a scale factor > 0 such as "0.01" or 1, got {got}',
                {"got": repr(value)},
            )
        return normalise_scale(text)

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, value: list[str]) -> list[str]:
        duplicates = sorted({t for t in value if value.count(t) > 1})
        if duplicates:
            raise PydanticCustomError(
                "crucible", "tables listed twice: {names}", {"names": ", ".join(duplicates)}
            )
        return value

    def fixture_tables(self) -> list[FixtureTable]:
        return [FixtureTable(self.dataset, self.scale, t, t, self.reload) for t in self.tables]


# Tags of the two fixture forms; their odd spelling keeps them apart from real keys in error
# locations.
FIXTURE_FORM_TAGS = {"fixture_id": "<fixture_id form>", "dataset": "<dataset form>"}


def _fixture_form(value: Any) -> str | None:
    if isinstance(value, FixtureItem) or (isinstance(value, dict) and "fixture_id" in value):
        return FIXTURE_FORM_TAGS["fixture_id"]
    if isinstance(value, FixtureGroup) or (isinstance(value, dict) and "dataset" in value):
        return FIXTURE_FORM_TAGS["dataset"]
    return None


Fixture = Annotated[
    Annotated[FixtureItem, Tag(FIXTURE_FORM_TAGS["fixture_id"])]
    | Annotated[FixtureGroup, Tag(FIXTURE_FORM_TAGS["dataset"])],
    Discriminator(
        _fixture_form,
        custom_error_type="crucible",
        custom_error_message=(
            "expected a fixture: {fixture_id: tpch/sf0.01/lineitem, table: lineitem} "
            'or {dataset: tpch, scale: "0.01", tables: [lineitem, orders]}'
        ),
    ),
]


class PrometheusMetric(PlanModel):
    name: str
    query: str


class PrometheusSource(PlanModel):
    name: str
    url: str
    metrics: Annotated[list[PrometheusMetric], Field(min_length=1)]
    resolution: PositiveInt = 15
    max_data_points: PositiveInt = 500


class Observability(PlanModel):
    prometheus_sources: list[PrometheusSource] = []


class TestEnvironment(PlanModel):
    __test__ = False

    env_type: Literal["long-lived", "disposable"]
    target_db: str
    component_spec: ComponentSpec
    fixtures: list[Fixture] = []
    observability: Observability | None = None

    @field_validator("env_type")
    @classmethod
    def _long_lived_only(cls, value: str) -> str:
        if value == "disposable":
            raise PydanticCustomError(
                "crucible",
                "disposable is not supported yet: Crucible does not provision SUTs; "
                "use long-lived with cluster_info",
            )
        return value

    def fixture_tables(self) -> list[FixtureTable]:
        """Every fixture table of the plan, in plan order, whichever form named it."""
        return [table for item in self.fixtures for table in item.fixture_tables()]

    @model_validator(mode="after")
    def _environment_rules(self) -> "TestEnvironment":
        problems: list[tuple[str, str]] = []
        sut_type = self.component_spec.type
        if self.component_spec.cluster_info is None and sut_type not in EMBEDDED_SUT_TYPES:
            problems.append(
                ("component_spec", "cluster_info is required for a long-lived environment")
            )
        database = database_problem(sut_type, self.target_db)
        if database is not None:
            problems.append(("target_db", f"invalid target_db {self.target_db!r}: {database}"))
        tables = [(i, t.target_table) for i, item in enumerate(self.fixtures)
                  for t in item.fixture_tables()]  # fmt: skip
        for index, table, first in repeats(tables):
            problems.append((f"fixtures.{index}", f"table {table!r} is loaded twice "
                             f"(also by fixtures[{first}])"))  # fmt: skip
        if problems:
            raise rules_error(problems)
        return self


class WorkloadRef(PlanModel):
    workload_id: Annotated[str, Field(pattern=WORKLOAD_ID_PATTERN)]


class FailureDetection(PlanModel):
    """Abort the run when the error rate passes a threshold (the k6 `abortOnFail` meaning)."""

    enabled: bool = True
    error_rate_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    abort_delay: Duration = Duration("10s")


def _threshold_syntax(text: str) -> str:
    try:
        parse_threshold(text)
    except ThresholdSyntaxError as error:
        raise PydanticCustomError("crucible", str(error)) from None
    return text


ThresholdText = Annotated[str, AfterValidator(_threshold_syntax)]


class ThresholdRule(PlanModel):
    """A threshold with k6's options: abort the load when it fails, after a delay."""

    threshold: ThresholdText
    abort_on_fail: bool = False
    delay_abort_eval: Duration = Duration("0s")


class ArrivalStage(PlanModel):
    """One stage of a ramping arrival rate: reach `target` starts per time unit over `duration`."""

    target: Annotated[float, Field(ge=0)]
    duration: Duration


class ArrivalRate(PlanModel):
    """An open model, in k6's terms: query starts per `time_unit`, whatever the SUT does.

    With `rate`, the rate ramps from `start_rate` over `ramp_up`, then holds for `hold_for`. With
    `stages`, it follows them (`ramp_up` must be 0s), then holds the last target for `hold_for`.
    A start that finds all `max_vus` busy is dropped and counted.
    """

    rate: Annotated[float, Field(gt=0)] | None = None
    time_unit: Duration = Duration("1s")
    start_rate: Annotated[float, Field(ge=0)] = 0.0
    stages: list[ArrivalStage] = Field(default_factory=list)
    pre_allocated_vus: PositiveInt | None = None
    max_vus: PositiveInt | None = None

    @model_validator(mode="after")
    def _rate_or_stages(self) -> "ArrivalRate":
        problems: list[tuple[str, str]] = []
        if (self.rate is None) == (not self.stages):
            problems.append(("rate", "give either rate (with ramp_up and hold_for) or stages"))
        if self.time_unit.seconds <= 0:
            problems.append(("time_unit", "time_unit must be longer than 0s"))
        if self.pre_allocated_vus and self.max_vus and self.max_vus < self.pre_allocated_vus:
            problems.append(("max_vus", f"max_vus ({self.max_vus}) must be at least "
                             f"pre_allocated_vus ({self.pre_allocated_vus})"))  # fmt: skip
        if problems:
            raise rules_error(problems)
        return self


# A Kubernetes resource quantity: `500m`, `2`, `1.5`, `512Mi`, `1G`.
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _quantity(value: str | None) -> str | None:
    if value is not None and not QUANTITY.match(value):
        raise PydanticCustomError(
            "crucible",
            "{value} is not a Kubernetes quantity: expected a number with an optional unit, "
            "such as 500m or 2 for CPU, 512Mi or 1Gi for memory",
            {"value": repr(value)},
        )
    return value


Quantity = Annotated[StrictStr, AfterValidator(_quantity)]


class ResourceAmounts(PlanModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class PodResources(PlanModel):
    """What each shard pod asks of Kubernetes (`scaling_mode: inter_node`), in its terms."""

    requests: ResourceAmounts = Field(default_factory=ResourceAmounts)
    limits: ResourceAmounts = Field(default_factory=ResourceAmounts)


# What the engines count while the load runs, summed over all queries: what can abort a run.
LIVE_AGGREGATIONS = ("rate", "count", "qps", "dropped")

ThresholdEntry = Annotated[
    Annotated[ThresholdText, Tag("text")] | Annotated[ThresholdRule, Tag("rule")],
    Discriminator(lambda value: "text" if isinstance(value, str) else "rule"),
]


class Execution(PlanModel):
    executor: Literal["native", "k6"] = "native"
    scaling_mode: Literal["intra_node", "inter_node"] = "intra_node"
    # inter_node: each shard pod's requests and limits; unset ones take the deployment's.
    resources: PodResources | None = None
    concurrency: PositiveInt
    ramp_up: Duration
    hold_for: Duration
    workload: Annotated[list[WorkloadRef], Field(min_length=1)]
    failure_detection: FailureDetection | None = None
    shards: Annotated[int, Field(ge=1)] = 1
    graceful_stop: Duration = Duration("30s")
    # k6 syntax per query name or `total`: a text (`p(95)<200`) or a rule with abort options.
    thresholds: dict[str, list[ThresholdEntry]] = Field(default_factory=dict)
    # An open model instead of `concurrency` virtual users running back to back.
    arrival_rate: ArrivalRate | None = None
    # The first part of the load that runs but is left out of the result.
    warm_up: Duration = Duration("0s")
    # `random` picks each query by weight (uniform when none is given); `sequence` runs the
    # queries in workload order, each virtual user on its own, a weight repeating a query.
    query_choice: Literal["random", "sequence"] = "random"
    # Per query name; overrides the workload's `-- @weight:`.
    query_weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # Seeds query choice and parameters; without one the run draws a seed and records it.
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None

    @property
    def planned_s(self) -> float:
        """How long the load runs: ramp-up (or arrival stages) and hold."""
        stages = self.arrival_rate.stages if self.arrival_rate is not None else []
        return (
            self.ramp_up.seconds + sum(s.duration.seconds for s in stages) + self.hold_for.seconds
        )

    def threshold_rules(self) -> dict[str, list[ThresholdSpec]]:
        """The thresholds as specs, with failure_detection as an aborting `rate` on `total`."""
        rules: dict[str, list[ThresholdSpec]] = {}
        for target, entries in self.thresholds.items():
            for entry in entries:
                if isinstance(entry, str):
                    spec = ThresholdSpec(parse_threshold(entry))
                else:
                    spec = ThresholdSpec(
                        parse_threshold(entry.threshold),
                        abort_on_fail=entry.abort_on_fail,
                        delay_abort_eval_s=entry.delay_abort_eval.seconds,
                    )
                rules.setdefault(target, []).append(spec)
        detection = self.failure_detection or FailureDetection()
        if detection.enabled:
            # k6's `rate<x` fails at x itself, as the original's failure detection did.
            rate = parse_threshold(f"rate<{detection.error_rate_threshold!r}")
            spec = ThresholdSpec(rate, abort_on_fail=True,
                                 delay_abort_eval_s=detection.abort_delay.seconds)  # fmt: skip
            rules.setdefault(TOTAL, []).append(spec)
        return rules

    @field_validator("executor", mode="before")
    @classmethod
    def _no_locust(cls, value: Any) -> Any:
        if value == "locust":
            raise PydanticCustomError(
                "crucible",
                "locust is not supported (the original ignored it and ran k6): "
                "use 'native' (the default) or 'k6'",
            )
        return value

    @model_validator(mode="after")
    def _execution_rules(self) -> "Execution":
        problems: list[tuple[str, str]] = []
        if self.hold_for.seconds <= 0:
            problems.append(("hold_for", "hold_for must be longer than 0s"))
        if self.arrival_rate is not None and self.arrival_rate.stages and self.ramp_up.seconds:
            problems.append(("ramp_up", "ramp_up must be 0s when arrival_rate has stages: the "
                             "stages are the ramp"))  # fmt: skip
        if self.warm_up.seconds and self.warm_up.seconds >= self.planned_s:
            problems.append(("warm_up", f"warm_up ({self.warm_up.text}) must be shorter than "
                             f"the whole load ({self.planned_s:g}s)"))  # fmt: skip
        if self.query_choice == "sequence":
            for name, weight in self.query_weights.items():
                if weight != int(weight):
                    message = ("with query_choice sequence a weight is a repeat count: a whole "
                               f"number, not {weight:g}")  # fmt: skip
                    problems.append((f"query_weights.{name}", message))
        for target, entries in self.thresholds.items():
            for index, entry in enumerate(entries):
                if not isinstance(entry, ThresholdRule) or not entry.abort_on_fail:
                    continue
                aggregation = parse_threshold(entry.threshold).aggregation
                if target != TOTAL or aggregation not in LIVE_AGGREGATIONS:
                    way_out = (
                        "drop abort_on_fail, or abort on one of those"
                        if target == TOTAL
                        else "drop abort_on_fail, or put the aborting threshold on total"
                    )
                    message = (
                        "abort_on_fail is watched while the load runs only on total with "
                        f"{', '.join(LIVE_AGGREGATIONS)}; {entry.threshold!r} on {target} is "
                        f"judged at the end: {way_out}"
                    )
                    problems.append((f"thresholds.{target}.{index}.abort_on_fail", message))
        if self.shards > self.concurrency:
            problems.append(
                ("shards", f"shards ({self.shards}) must be at most concurrency "
                 f"({self.concurrency}): each shard needs at least one virtual user")
            )  # fmt: skip
        for index, workload_id, first in repeats(
            list(enumerate(r.workload_id for r in self.workload))
        ):
            problems.append((f"workload.{index}.workload_id", f"workload {workload_id!r} is "
                             f"listed twice (also workload[{first}])"))  # fmt: skip
        if problems:
            raise rules_error(problems)
        return self


class ChaosTarget(PlanModel):
    """Where a fault goes. `env_type` picks the backend: `k8s` Chaos Mesh (namespace and label
    selector of the pods), `ec2` chaosd (the address of the machine's chaosd), `local` the local
    backend (the SUT's process by its `pid_file`, or the SUT's traffic). When left out, it is
    that of `chaos_spec.engine`."""

    env_type: Literal["k8s", "ec2", "local"] | None = None
    namespace: str | None = None
    selector: dict[str, str] | None = None
    address: str | None = None
    # local: the SUT's pid file (its first line is the pid), how to start the SUT again after a
    # kill or restart (an argument list, run without a shell), and the network namespace the SUT
    # listens in, for loss and partition.
    pid_file: str | None = None
    start_command: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = None
    netns: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _target_rules(self) -> "ChaosTarget":
        if self.env_type == "k8s" and not (self.namespace and self.selector):
            raise rules_error(
                [("", "a k8s target needs both a namespace and a non-empty selector")]
            )
        if self.env_type == "ec2" and not self.address:
            raise rules_error([("address", "an ec2 target needs an address (the chaosd host)")])
        return self

    def fields(self) -> dict[str, Any]:
        """The keys that are set, as a backend reads them."""
        return self.model_dump(exclude_none=True, exclude={"env_type"})


class ChaosSchedule(PlanModel):
    """`start_after` counts from the start of the load, or, when the experiments are
    `sequential`, from the end of the previous one."""

    start_after: Duration
    duration: Duration

    @model_validator(mode="after")
    def _positive(self) -> "ChaosSchedule":
        if self.duration.seconds <= 0:
            raise rules_error([("duration", "duration must be longer than 0s")])
        return self


class ChaosExperiment(PlanModel):
    name: NonEmptyStr
    fault_type: NonEmptyStr
    target: ChaosTarget
    parameters: dict[str, Any] = {}
    schedule: ChaosSchedule

    @property
    def env_type(self) -> str:
        """The target's env_type (the spec fills it in from its engine when left out)."""
        return self.target.env_type or "k8s"

    def canonical_fault_type(self) -> None:
        """Spells `fault_type` as its backend does (any case is accepted), or says it has none."""
        env_type = self.env_type
        if env_type == "k8s":
            kinds = dict(CHAOS_MESH_KINDS)
            what = "Chaos Mesh kind"
        elif env_type == "ec2":
            kinds = {kind: kind for kind in CHAOSD_ATTACKS}
            what = "chaosd attack"
        else:
            kinds = {kind: kind for kind in LOCAL_FAULTS}
            what = "local fault"
        kind = kinds.get(self.fault_type.lower())
        if kind is None:
            raise rules_error(
                [("fault_type", f"unknown {what} {self.fault_type!r}: expected one of "
                  f"{', '.join(kinds.values())}")]
            )  # fmt: skip
        self.fault_type = kind
        self._target_fields_used()
        if env_type == "local":
            self._local_target_rules()

    def _target_fields_used(self) -> None:
        """A target key this fault's backend does not read is a mistake, never ignored."""
        if self.env_type == "k8s":
            allowed: tuple[str, ...] = ("namespace", "selector")
        elif self.env_type == "ec2":
            allowed = ("address",)
        elif self.fault_type in LOCAL_PROCESS_FAULTS:
            allowed = ("pid_file", "start_command")
        elif self.fault_type in LOCAL_NETWORK_FAULTS:
            allowed = ("netns",)
        else:
            allowed = ()
        takes = f"takes {', '.join(allowed)}" if allowed else "takes none"
        problems = [
            (f"target.{name}", f"a {self.env_type} {self.fault_type} fault's target does not "
             f"use {name}: it {takes}")
            for name in self.target.fields()
            if name not in allowed
        ]  # fmt: skip
        if problems:
            raise rules_error(problems)

    def _local_target_rules(self) -> None:
        target = self.target
        problems: list[tuple[str, str]] = []
        if self.fault_type in LOCAL_PROCESS_FAULTS and not target.pid_file:
            problems.append(("target.pid_file", f"a {self.fault_type} fault needs the SUT's "
                             "pid_file, to find its process"))  # fmt: skip
        if self.fault_type in ("kill", "restart") and not target.start_command:
            problems.append(("target.start_command", f"a {self.fault_type} fault needs the "
                             "start_command that starts the SUT again"))  # fmt: skip
        if self.fault_type in LOCAL_NETWORK_FAULTS and not target.netns:
            problems.append(("target.netns", f"a {self.fault_type} fault needs the netns (the "
                             "network namespace the SUT listens in)"))  # fmt: skip
        if problems:
            raise rules_error(problems)


class ChaosSpec(PlanModel):
    """The faults of a plan. `engine` names the backend of the targets that give no env_type;
    a target's own env_type wins (the original's chaos-mesh plans send ec2 targets to chaosd)."""

    engine: Literal["chaos-mesh", "chaosd", "local"]
    experiments: Annotated[list[ChaosExperiment], Field(min_length=1)]
    # False: experiments may overlap, each `start_after` counted from the start of the load.
    # True: one after another, as the original ran them.
    sequential: bool = False

    def planned_windows(self) -> list[tuple[float, float]]:
        """Each experiment's planned (start, end), in seconds from the start of the load."""
        windows: list[tuple[float, float]] = []
        previous_end = 0.0
        for experiment in self.experiments:
            start = experiment.schedule.start_after.seconds
            if self.sequential:
                start += previous_end
            previous_end = start + experiment.schedule.duration.seconds
            windows.append((start, previous_end))
        return windows

    @model_validator(mode="before")
    @classmethod
    def _env_type_from_engine(cls, data: Any) -> Any:
        """A target without env_type is one of the engine's (the original's plans all name it)."""
        if not isinstance(data, dict):
            return data
        env_type = CHAOS_ENGINE_ENV_TYPES.get(str(data.get("engine")))
        experiments = data.get("experiments") if env_type else None
        if not isinstance(experiments, list):
            return data
        filled = []
        for experiment in experiments:
            target = isinstance(experiment, dict) and experiment.get("target")
            if isinstance(target, dict) and "env_type" not in target:
                experiment = {**experiment, "target": {**target, "env_type": env_type}}
            filled.append(experiment)
        return {**data, "experiments": filled}

    @model_validator(mode="after")
    def _fault_types(self) -> "ChaosSpec":
        problems: list[tuple[str, str]] = []
        for index, experiment in enumerate(self.experiments):
            try:
                experiment.canonical_fault_type()
            except PydanticCustomError as error:
                for path, message in (error.context or {}).get("problems", []):
                    problems.append((f"experiments.{index}.{path}", message))
        if problems:
            raise rules_error(problems)
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> "ChaosSpec":
        names = list(enumerate(experiment.name for experiment in self.experiments))
        problems = [
            (f"experiments.{index}.name", f"experiment name {name!r} is used twice "
             f"(also experiments[{first}])")
            for index, name, first in repeats(names)
        ]  # fmt: skip
        if problems:
            raise rules_error(problems)
        return self


class Plan(PlanModel):
    """One test: where (environment), what load (execution) and which faults (chaos_spec)."""

    test_metadata: TestMetadata
    test_environment: TestEnvironment
    execution: Execution
    chaos_spec: ChaosSpec | None = None

    @model_validator(mode="after")
    def _one_writer_process(self) -> "Plan":
        sut_type = self.test_environment.component_spec.type
        if sut_type in SINGLE_PROCESS_SUT_TYPES and self.execution.shards > 1:
            message = (f"{sut_type} lets one process at a time open its database file, so "
                       f"shards must be 1 (got {self.execution.shards}); concurrency still "
                       "sets the number of sessions")  # fmt: skip
            raise rules_error([("execution.shards", message)])
        return self

    @model_validator(mode="after")
    def _chaos_fits_in_run(self) -> "Plan":
        if self.chaos_spec is None:
            return self
        load_s = self.execution.planned_s
        problems: list[tuple[str, str]] = []
        windows = self.chaos_spec.planned_windows()
        for index, (experiment, (_, end_s)) in enumerate(
            zip(self.chaos_spec.experiments, windows, strict=True)
        ):
            if end_s > load_s:
                problems.append(
                    (f"chaos_spec.experiments.{index}.schedule", f"experiment {experiment.name!r} "
                     f"ends {_seconds(end_s)} after the load starts, but the load lasts "
                     f"{_seconds(load_s)}")
                )  # fmt: skip
                break
        problems.extend(_process_faults_overlap(self.chaos_spec, windows))
        sut_type = self.test_environment.component_spec.type
        for index, experiment in enumerate(self.chaos_spec.experiments):
            if experiment.env_type != "local" or experiment.fault_type not in LOCAL_PROXY_FAULTS:
                continue
            where = f"chaos_spec.experiments.{index}.fault_type"
            if sut_type in SINGLE_PROCESS_SUT_TYPES:
                problems.append((where, f"a {experiment.fault_type} fault goes through a TCP "
                                 f"proxy, and a {sut_type} database is a local file"))  # fmt: skip
            elif self.execution.scaling_mode == "inter_node":
                message = (f"a {experiment.fault_type} fault goes through a TCP proxy on this "
                           "machine, which shard pods do not reach; use scaling_mode: "
                           "intra_node, or a chaos-mesh NetworkChaos")  # fmt: skip
                problems.append((where, message))
        if problems:
            raise rules_error(problems)
        return self


def _process_faults_overlap(
    spec: ChaosSpec, windows: list[tuple[float, float]]
) -> list[tuple[str, str]]:
    """Two local process faults on one process at once undo each other (the first recovery
    resumes or restarts what the other still holds), so their windows must not overlap."""
    seen: list[tuple[int, str, tuple[float, float]]] = []
    problems = []
    for index, (experiment, window) in enumerate(zip(spec.experiments, windows, strict=True)):
        if experiment.env_type != "local" or experiment.fault_type not in LOCAL_PROCESS_FAULTS:
            continue
        pid_file = experiment.target.pid_file or ""
        for other, other_pid_file, (start, end) in seen:
            if other_pid_file == pid_file and window[0] < end and start < window[1]:
                first = spec.experiments[other].name
                both = f"{_seconds(max(start, window[0]))} to {_seconds(min(end, window[1]))}"
                message = (f"experiment {experiment.name!r} acts on the process of {pid_file} "
                           f"while {first!r} does ({both}), and the first to end would end the "
                           "other: schedule them one after the other")  # fmt: skip
                problems.append((f"chaos_spec.experiments.{index}.schedule", message))
                break
        seen.append((index, pid_file, window))
    return problems


def normalise_scale(text: str) -> str:
    """`"0.010"` → `"0.01"`, `"1.0"` → `"1"`: one spelling per scale factor."""
    try:
        number = Decimal(text).normalize()
    except InvalidOperation:
        return text
    return format(number, "f")


def _seconds(value: float) -> str:
    return f"{value:g}s"
