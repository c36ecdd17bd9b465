"""Plan models and loading: the original schema's behaviours, strictness, positions, secrets."""

import copy
from typing import Any

import pytest
import yaml

from crucible_dagster.errors import Problem, ValidationError
from crucible_dagster.plan import LoadedPlan, parse_plan

MINIMAL: dict[str, Any] = {
    "test_metadata": {"run_label": "smoke"},
    "test_environment": {
        "env_type": "long-lived",
        "target_db": "tpch",
        "component_spec": {
            "type": "postgresql",
            "cluster_info": {
                "host": "127.0.0.1",
                "port": 5432,
                "username": "postgres",
                "password": "hunter2-literal",
            },
        },
    },
    "execution": {
        "concurrency": 4,
        "ramp_up": "0s",
        "hold_for": "10s",
        "workload": [{"workload_id": "smoke"}],
    },
}


def plan_data(**sections: Any) -> dict[str, Any]:
    """The minimal plan with some sections replaced or merged (`None` removes a key)."""
    data = copy.deepcopy(MINIMAL)
    for section, value in sections.items():
        if value is None:
            data.pop(section, None)
        elif isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section].update(value)
            data[section] = {k: v for k, v in data[section].items() if v is not None}
        else:
            data[section] = value
    return data


def parse_data(data: Any, name: str = "smoke") -> LoadedPlan:
    return parse_plan(yaml.safe_dump(data, sort_keys=False), source="smoke.yaml", name=name)


def problems_of(data: Any, name: str = "smoke") -> list[Problem]:
    try:
        parse_data(data, name)
    except ValidationError as error:
        return error.problems
    raise AssertionError("the plan was expected to be invalid")


def problems_of_text(text: str, name: str = "smoke") -> list[Problem]:
    try:
        parse_plan(text, source="p.yaml", name=name)
    except ValidationError as error:
        return error.problems
    raise AssertionError("the plan was expected to be invalid")


def fields(problems: list[Problem]) -> list[str | None]:
    return [p.field for p in problems]


# --- the original schema ------------------------------------------------------------------


def test_minimal_plan_validates_with_defaults() -> None:
    plan = parse_data(plan_data()).plan

    assert plan.execution.executor == "native"
    assert plan.execution.scaling_mode == "intra_node"
    assert plan.execution.shards == 1
    assert plan.execution.graceful_stop.seconds == 30
    assert plan.execution.failure_detection is None
    assert plan.chaos_spec is None
    assert plan.test_environment.fixtures == []
    assert plan.test_environment.observability is None


@pytest.mark.parametrize("section", ["test_metadata", "test_environment", "execution"])
def test_missing_required_section_is_an_error(section: str) -> None:
    found = problems_of(plan_data(**{section: None}))

    assert fields(found) == [section]
    assert found[0].message.startswith(f"required key {section!r} is missing")


def test_empty_run_label_and_target_db_are_allowed() -> None:
    plan = parse_data(
        plan_data(test_metadata={"run_label": ""}, test_environment={"target_db": ""})
    ).plan

    assert plan.test_metadata.run_label == ""


def test_concurrency_zero_is_rejected() -> None:
    found = problems_of(plan_data(execution={"concurrency": 0}))

    assert [p.message for p in found] == ["expected an integer > 0, got 0 (an integer)"]


def test_long_lived_without_cluster_info_is_an_error() -> None:
    data = plan_data()
    del data["test_environment"]["component_spec"]["cluster_info"]

    found = problems_of(data)

    assert fields(found) == ["test_environment.component_spec"]
    assert "cluster_info is required for a long-lived environment" in found[0].message


def test_disposable_is_not_supported_yet() -> None:
    found = problems_of(plan_data(test_environment={"env_type": "disposable"}))

    assert fields(found) == ["test_environment.env_type"]
    assert "not supported yet: Crucible does not provision SUTs" in found[0].message


@pytest.mark.parametrize("unknown", ["gcp", "long_lived"])
def test_unknown_env_type_lists_the_allowed_ones(unknown: str) -> None:
    found = problems_of(plan_data(test_environment={"env_type": unknown}))

    assert "expected one of 'long-lived', 'disposable'" in found[0].message


@pytest.mark.parametrize("sut_type", ["postgresql", "mysql", "doris", "trino", "sqlite"])
def test_known_sut_types_validate(sut_type: str) -> None:
    data = plan_data()
    data["test_environment"]["component_spec"]["type"] = sut_type

    assert parse_data(data).plan.test_environment.component_spec.type == sut_type


def test_postgres_alias_is_normalised_to_postgresql() -> None:
    data = plan_data()
    data["test_environment"]["component_spec"]["type"] = "Postgres"

    assert parse_data(data).plan.test_environment.component_spec.type == "postgresql"


def test_unknown_sut_type_lists_the_supported_ones() -> None:
    data = plan_data()
    data["test_environment"]["component_spec"]["type"] = "k8s"

    found = problems_of(data)

    assert found[0].field == "test_environment.component_spec.type"
    assert found[0].message == (
        "unknown SUT type 'k8s': expected one of postgresql, mysql, mariadb, doris, starrocks, "
        "clickhouse, trino, cassandra, scylla, duckdb, sqlite"
    )


def test_cluster_info_port_and_s3_region_are_declared_fields() -> None:
    data = plan_data()
    data["test_environment"]["component_spec"]["cluster_info"]["s3_region"] = "eu-west-1"

    info = parse_data(data).plan.test_environment.component_spec.cluster_info
    assert info is not None
    assert (info.port, info.s3_region) == (5432, "eu-west-1")
    assert (info.connect_timeout.seconds, info.statement_timeout.seconds) == (10, 60)


@pytest.mark.parametrize("port", [0, 70000])
def test_port_out_of_range_is_rejected(port: int) -> None:
    data = plan_data()
    data["test_environment"]["component_spec"]["cluster_info"]["port"] = port

    assert fields(problems_of(data)) == ["test_environment.component_spec.cluster_info.port"]


# --- execution ----------------------------------------------------------------------------


def test_locust_executor_is_an_error_suggesting_native() -> None:
    found = problems_of(plan_data(execution={"executor": "locust"}))

    assert "use 'native'" in found[0].message


def test_unknown_executor_is_rejected_with_a_suggestion() -> None:
    found = problems_of(plan_data(execution={"executor": "nativ"}))

    assert found[0].message == (
        "expected one of 'native', 'k6', got 'nativ' (a string); did you mean 'native'?"
    )


def test_k6_and_inter_node_are_accepted() -> None:
    plan = parse_data(plan_data(execution={"executor": "k6", "scaling_mode": "inter_node"})).plan

    assert (plan.execution.executor, plan.execution.scaling_mode) == ("k6", "inter_node")


def test_empty_workload_list_is_an_error() -> None:
    found = problems_of(plan_data(execution={"workload": []}))

    assert found[0].message == "expected a list with at least 1 item, got an empty list"


def test_duplicate_workload_ids_are_an_error() -> None:
    refs = [{"workload_id": "a"}, {"workload_id": "a"}]

    found = problems_of(plan_data(execution={"workload": refs}))

    assert fields(found) == ["execution.workload[1].workload_id"]


@pytest.mark.parametrize("workload_id", ["../secrets", "a/b", "/etc/passwd", ".hidden", "a b", ""])
def test_workload_ids_that_look_like_paths_are_rejected(workload_id: str) -> None:
    found = problems_of(plan_data(execution={"workload": [{"workload_id": workload_id}]}))

    assert fields(found) == ["execution.workload[0].workload_id"]
    assert "a workload id" in found[0].message


def test_shards_cannot_exceed_concurrency() -> None:
    found = problems_of(plan_data(execution={"concurrency": 2, "shards": 3}))

    assert fields(found) == ["execution.shards"]
    assert "at most concurrency (2)" in found[0].message


def test_shards_zero_is_rejected() -> None:
    assert fields(problems_of(plan_data(execution={"shards": 0}))) == ["execution.shards"]


def test_hold_for_zero_is_rejected_but_ramp_up_zero_is_fine() -> None:
    found = problems_of(plan_data(execution={"hold_for": "0s", "ramp_up": "0s"}))

    assert fields(found) == ["execution.hold_for"]


# --- failure detection --------------------------------------------------------------------


def test_failure_detection_empty_mapping_takes_defaults() -> None:
    detection = parse_data(plan_data(execution={"failure_detection": {}})).plan.execution
    assert detection.failure_detection is not None

    assert detection.failure_detection.enabled is True
    assert detection.failure_detection.error_rate_threshold == 0.5
    assert detection.failure_detection.abort_delay.text == "10s"


def test_failure_detection_custom_values_and_disabled_are_kept() -> None:
    settings = {"enabled": False, "error_rate_threshold": 0.3, "abort_delay": "30s"}

    detection = parse_data(plan_data(execution={"failure_detection": settings})).plan
    assert detection.execution.failure_detection is not None
    assert detection.execution.failure_detection.model_dump(mode="json") == settings


@pytest.mark.parametrize("threshold", [0, 1.5, -0.1])
def test_error_rate_threshold_out_of_range_is_rejected(threshold: float) -> None:
    found = problems_of(
        plan_data(execution={"failure_detection": {"error_rate_threshold": threshold}})
    )

    assert fields(found) == ["execution.failure_detection.error_rate_threshold"]
    assert found[0].message.startswith("expected a number > 0 and <= 1")


def test_error_rate_threshold_of_exactly_one_is_accepted() -> None:
    data = plan_data(execution={"failure_detection": {"error_rate_threshold": 1}})

    assert parse_data(data).plan.execution.failure_detection is not None


# --- observability ------------------------------------------------------------------------

METRIC = {"name": "qps", "query": "rate(x[1m])"}


def observability(*sources: dict[str, Any]) -> dict[str, Any]:
    return plan_data(test_environment={"observability": {"prometheus_sources": list(sources)}})


def test_prometheus_source_defaults_resolution_and_max_data_points() -> None:
    data = observability({"name": "engine", "url": "http://p:9090", "metrics": [METRIC]})

    observed = parse_data(data).plan.test_environment.observability
    assert observed is not None
    source = observed.prometheus_sources[0]
    assert (source.resolution, source.max_data_points) == (15, 500)


def test_prometheus_sources_keep_order_and_custom_values() -> None:
    first = {"name": "a", "url": "http://a", "metrics": [METRIC], "resolution": 30}
    second = {"name": "b", "url": "http://b", "metrics": [METRIC], "max_data_points": 1000}

    observed = parse_data(observability(first, second)).plan.test_environment.observability
    assert observed is not None

    assert [(s.name, s.resolution, s.max_data_points) for s in observed.prometheus_sources] == [
        ("a", 30, 500),
        ("b", 15, 1000),
    ]


def test_empty_observability_has_no_sources() -> None:
    data = plan_data(test_environment={"observability": {}})

    observed = parse_data(data).plan.test_environment.observability
    assert observed is not None
    assert observed.prometheus_sources == []


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"url": "http://p", "metrics": [METRIC]}, "name"),
        ({"name": "e", "metrics": [METRIC]}, "url"),
        ({"name": "e", "url": "http://p"}, "metrics"),
        ({"name": "e", "url": "http://p", "metrics": []}, "metrics"),
        ({"name": "e", "url": "http://p", "metrics": [METRIC], "resolution": 0}, "resolution"),
        ({"name": "e", "url": "http://p", "metrics": [METRIC], "max_data_points": 0},
         "max_data_points"),
        ({"name": "e", "url": "http://p", "metrics": [{"name": "m"}]}, "metrics[0].query"),
        ({"name": "e", "url": "http://p", "metrics": [{"query": "up"}]}, "metrics[0].name"),
    ],
)  # fmt: skip
def test_invalid_prometheus_source_rejects_the_plan(source: dict[str, Any], field: str) -> None:
    found = problems_of(observability(source))

    assert fields(found) == [f"test_environment.observability.prometheus_sources[0].{field}"]


# --- fixtures -----------------------------------------------------------------------------


def test_fixture_id_form_and_grouped_form_normalise_to_fixture_tables() -> None:
    fixtures = [
        {"fixture_id": "tpch/sf0.01/lineitem", "table": "bench_lineitem", "reload": "always"},
        {"dataset": "tpch", "scale": 0.01, "tables": ["region", "nation"]},
        {"fixture_id": "events/sf1.0/clicks", "table": "clicks", "columns": ["id", "at"]},
    ]

    env = parse_data(plan_data(test_environment={"fixtures": fixtures})).plan.test_environment

    assert [
        (t.dataset, t.scale, t.table, t.target_table, t.reload, t.columns)
        for t in env.fixture_tables()
    ] == [
        ("tpch", "0.01", "lineitem", "bench_lineitem", "always", None),
        ("tpch", "0.01", "region", "region", "auto", None),
        ("tpch", "0.01", "nation", "nation", "auto", None),
        ("events", "1", "clicks", "clicks", "auto", ("id", "at")),
    ]
    assert env.fixture_tables()[0].fixture_id == "tpch/sf0.01/lineitem"


@pytest.mark.parametrize("fixture_id", ["tpch-sf001-orders", "tpch/orders", "tpch/sfx/orders"])
def test_fixture_id_must_follow_the_prefix_rule(fixture_id: str) -> None:
    fixtures = [{"fixture_id": fixture_id, "table": "orders"}]

    found = problems_of(plan_data(test_environment={"fixtures": fixtures}))

    assert fields(found) == ["test_environment.fixtures[0].fixture_id"]
    assert "<dataset>/sf<scale>/<table>" in found[0].message


def test_fixture_that_is_neither_form_explains_both() -> None:
    found = problems_of(plan_data(test_environment={"fixtures": [{"table": "orders"}]}))

    assert fields(found) == ["test_environment.fixtures[0]"]
    assert "fixture_id" in found[0].message and "dataset" in found[0].message


def test_table_loaded_twice_is_an_error() -> None:
    fixtures = [
        {"dataset": "tpch", "scale": "0.01", "tables": ["orders"]},
        {"fixture_id": "tpch/sf1/orders", "table": "orders"},
    ]

    found = problems_of(plan_data(test_environment={"fixtures": fixtures}))

    assert fields(found) == ["test_environment.fixtures[1]"]
    assert "'orders' is loaded twice" in found[0].message


@pytest.mark.parametrize("scale", ["0", "-1", "big", True, [1]])
def test_invalid_scale_is_rejected(scale: Any) -> None:
    fixtures = [{"dataset": "tpch", "scale": scale, "tables": ["orders"]}]

    found = problems_of(plan_data(test_environment={"fixtures": fixtures}))

    assert fields(found) == ["test_environment.fixtures[0].scale"]


def test_unknown_reload_mode_is_rejected() -> None:
    fixtures = [{"dataset": "tpch", "scale": "1", "tables": ["orders"], "reload": "never"}]

    found = problems_of(plan_data(test_environment={"fixtures": fixtures}))

    assert found[0].message.startswith("expected one of 'auto', 'always'")


# --- chaos --------------------------------------------------------------------------------


def experiment(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "be-latency",
        "fault_type": "networkchaos",
        "target": {"env_type": "k8s", "namespace": "doris", "selector": {"app": "be"}},
        "parameters": {"action": "delay"},
        "schedule": {"start_after": "2s", "duration": "3s"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def chaos(
    *experiments: dict[str, Any], engine: str = "chaos-mesh", sequential: bool | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"engine": engine, "experiments": list(experiments)}
    if sequential is not None:
        spec["sequential"] = sequential
    return plan_data(chaos_spec=spec)


def test_valid_chaos_spec_is_accepted_and_kind_is_normalised() -> None:
    spec = parse_data(chaos(experiment(), experiment(name="b", fault_type="IOCHAOS"))).plan

    assert spec.chaos_spec is not None
    assert [e.fault_type for e in spec.chaos_spec.experiments] == ["NetworkChaos", "IOChaos"]


def test_parameters_default_to_an_empty_mapping() -> None:
    plan = parse_data(chaos(experiment(parameters=None))).plan

    assert plan.chaos_spec is not None
    assert plan.chaos_spec.experiments[0].parameters == {}


@pytest.mark.parametrize(
    "target",
    [
        {"env_type": "k8s", "selector": {"app": "be"}},
        {"env_type": "k8s", "namespace": "doris"},
        {"env_type": "k8s"},
        {"env_type": "k8s", "namespace": "doris", "selector": {}},
    ],
)
def test_k8s_target_needs_namespace_and_selector(target: dict[str, Any]) -> None:
    found = problems_of(chaos(experiment(target=target)))

    assert fields(found) == ["chaos_spec.experiments[0].target"]
    assert "namespace" in found[0].message and "selector" in found[0].message


def test_ec2_target_needs_an_address_and_keeps_it() -> None:
    missing = problems_of(chaos(experiment(fault_type="network", target={"env_type": "ec2"})))
    ec2 = experiment(fault_type="network", target={"env_type": "ec2", "address": "10.0.0.5"})

    plan = parse_data(chaos(ec2)).plan

    assert fields(missing) == ["chaos_spec.experiments[0].target.address"]
    assert plan.chaos_spec is not None
    assert plan.chaos_spec.experiments[0].target.address == "10.0.0.5"


def test_unknown_target_env_type_is_rejected() -> None:
    found = problems_of(chaos(experiment(target={"env_type": "gcp", "address": "x"})))

    assert fields(found) == ["chaos_spec.experiments[0].target.env_type"]


def test_selector_values_must_be_strings() -> None:
    target = {"env_type": "k8s", "namespace": "d", "selector": {"replicas": 3}}

    found = problems_of(chaos(experiment(target=target)))

    assert fields(found) == ["chaos_spec.experiments[0].target.selector.replicas"]


@pytest.mark.parametrize("missing", ["start_after", "duration"])
def test_schedule_needs_start_after_and_duration(missing: str) -> None:
    schedule = {"start_after": "1s", "duration": "1s"}
    del schedule[missing]

    found = problems_of(chaos(experiment(schedule=schedule)))

    assert fields(found) == [f"chaos_spec.experiments[0].schedule.{missing}"]


@pytest.mark.parametrize("missing", ["name", "schedule", "fault_type", "target"])
def test_experiment_required_fields(missing: str) -> None:
    found = problems_of(chaos(experiment(**{missing: None})))

    assert fields(found) == [f"chaos_spec.experiments[0].{missing}"]


def local(fault_type: str, **target: Any) -> dict[str, Any]:
    return experiment(name=f"local-{fault_type}", fault_type=fault_type, parameters={},
                      target=target or {})  # fmt: skip


def test_local_engine_fills_in_the_env_type_and_spells_the_fault_in_lower_case() -> None:
    plan = parse_data(chaos(local("PAUSE", pid_file="/run/pg.pid"), engine="local")).plan
    assert plan.chaos_spec is not None
    only = plan.chaos_spec.experiments[0]
    assert (only.fault_type, only.env_type) == ("pause", "local")
    assert only.target.fields() == {"pid_file": "/run/pg.pid"}


def test_a_target_env_type_wins_over_the_engine() -> None:
    ec2 = experiment(fault_type="NETWORK", target={"env_type": "ec2", "address": "10.0.0.5"})
    plan = parse_data(chaos(ec2, engine="chaos-mesh")).plan
    assert plan.chaos_spec is not None
    assert plan.chaos_spec.experiments[0].fault_type == "network"


@pytest.mark.parametrize(
    ("fault_type", "target", "missing"),
    [
        ("pause", {}, ["target.pid_file"]),
        ("kill", {"pid_file": "/p"}, ["target.start_command"]),
        ("restart", {}, ["target.pid_file", "target.start_command"]),
        ("loss", {}, ["target.netns"]),
    ],
)
def test_local_faults_name_what_they_need_at_its_field(
    fault_type: str, target: dict[str, Any], missing: list[str]
) -> None:
    found = problems_of(chaos(local(fault_type, **target), engine="local"))
    assert fields(found) == [f"chaos_spec.experiments[0].{m}" for m in missing]


def test_unknown_local_fault_lists_the_local_faults() -> None:
    found = problems_of(chaos(local("podchaos"), engine="local"))
    assert fields(found) == ["chaos_spec.experiments[0].fault_type"]
    assert "unknown local fault 'podchaos': expected one of pause, kill, restart" in (
        found[0].message
    )


def test_unknown_chaosd_attack_lists_the_attacks() -> None:
    found = problems_of(
        chaos(experiment(fault_type="podchaos", target={"address": "h"}), engine="chaosd")
    )
    assert fields(found) == ["chaos_spec.experiments[0].fault_type"]
    assert "unknown chaosd attack 'podchaos'" in found[0].message


def test_proxy_faults_are_refused_for_shard_pods() -> None:
    data = chaos(local("latency"), engine="local")
    data["execution"]["scaling_mode"] = "inter_node"
    found = problems_of(data)
    assert fields(found) == ["chaos_spec.experiments[0].fault_type"]
    assert "which shard pods do not reach" in found[0].message


def test_chaos_spec_needs_at_least_one_experiment() -> None:
    assert fields(problems_of(chaos())) == ["chaos_spec.experiments"]


def test_unknown_chaos_engine_is_rejected() -> None:
    assert fields(problems_of(chaos(experiment(), engine="litmus"))) == ["chaos_spec.engine"]


def test_unknown_chaos_mesh_kind_lists_the_real_kinds() -> None:
    found = problems_of(chaos(experiment(fault_type="cpu-burn")))

    assert found[0].message == (
        "unknown Chaos Mesh kind 'cpu-burn': expected one of NetworkChaos, PodChaos, "
        "StressChaos, IOChaos, TimeChaos, DNSChaos"
    )


def test_duplicate_experiment_names_are_an_error() -> None:
    found = problems_of(chaos(experiment(), experiment()))

    assert fields(found) == ["chaos_spec.experiments[1].name"]


def test_invalid_chaos_durations_are_rejected() -> None:
    found = problems_of(chaos(experiment(schedule={"start_after": "soon", "duration": "0s"})))

    assert fields(found) == ["chaos_spec.experiments[0].schedule.start_after"]


def test_sequential_chaos_timeline_longer_than_the_load_is_an_error() -> None:
    # ramp_up 0s + hold_for 10s; one after the other, the experiments end at 5 s and 10.5 s.
    later = experiment(name="b", schedule={"start_after": "500ms", "duration": "5s"})

    found = problems_of(chaos(experiment(), later, sequential=True))

    assert fields(found) == ["chaos_spec.experiments[1].schedule"]
    assert "ends 10.5s after the load starts, but the load lasts 10s" in found[0].message


def test_chaos_timeline_that_fits_exactly_is_accepted() -> None:
    later = experiment(name="b", schedule={"start_after": "0s", "duration": "5s"})

    assert parse_data(chaos(experiment(), later)).plan.chaos_spec is not None


def test_invalid_nested_chaos_spec_rejects_the_plan() -> None:
    assert problems_of(plan_data(chaos_spec={"engine": "chaos-mesh"}))


def test_tls_is_off_unless_asked_and_true_means_the_systems_authorities() -> None:
    from crucible_dagster.plan.models import ClusterInfo

    base = {"host": "db", "username": "u", "password": "p"}

    assert ClusterInfo.model_validate(base).tls_options() is None
    options = ClusterInfo.model_validate(base | {"tls": True}).tls_options()
    assert options is not None and options.ca_file is None and options.verify
    off = ClusterInfo.model_validate(base | {"tls": {"enabled": False, "ca_file": "ca.crt"}})
    assert off.tls_options() is None


def test_tls_key_file_without_a_certificate_is_an_error() -> None:
    data = plan_data()
    data["test_environment"]["component_spec"]["cluster_info"]["tls"] = {"key_file": "c.key"}

    problems = problems_of(data)

    assert [p.field for p in problems] == [
        "test_environment.component_spec.cluster_info.tls.key_file"
    ]
    assert "key_file needs cert_file" in problems[0].message


@pytest.mark.parametrize("label", ["2020-13-45", "2020-12-01", "2020-12-01 10:00:00"])
def test_date_like_text_in_a_plan_stays_text(label: str) -> None:
    text = yaml.safe_dump(plan_data(), sort_keys=False).replace(
        "run_label: smoke", f"run_label: {label}"
    )

    loaded = parse_plan(text, source="p.yaml", name="smoke")

    assert loaded.plan.test_metadata.run_label == label


@pytest.mark.parametrize("table", ["test.region_x", "mysql.user", "Region_X", "x; drop table y"])
def test_fixture_tables_follow_the_loaders_name_rule(table: str) -> None:
    data = plan_data()
    data["test_environment"]["fixtures"] = [{"fixture_id": "tpch/sf0.01/region", "table": table}]

    problems = problems_of(data)

    assert [p.field for p in problems] == ["test_environment.fixtures[0].table"]
    assert "a lowercase letter, then up to 62 lowercase letters" in problems[0].message


def test_abort_on_fail_is_refused_where_no_engine_can_watch_it_live() -> None:
    latency = {"threshold": "p(99)<100", "abort_on_fail": True}
    per_query = {"threshold": "qps>5", "abort_on_fail": True}
    thresholds = {"total": [latency, {"threshold": "rate<0.1", "abort_on_fail": True}],
                  "q1": [per_query]}  # fmt: skip

    problems = problems_of(plan_data(execution={"thresholds": thresholds}))

    assert fields(problems) == [
        "execution.thresholds.total[0].abort_on_fail",
        "execution.thresholds.q1[0].abort_on_fail",
    ]
    assert "only on total with rate, count, qps, dropped" in problems[0].message


def test_experiments_overlap_from_the_load_start_unless_sequential() -> None:
    # Both start 1 s into the load and last 5 s: they overlap, and end at 6 s, inside 10 s.
    first = experiment(name="a", schedule={"start_after": "1s", "duration": "5s"})
    second = experiment(name="b", schedule={"start_after": "1s", "duration": "5s"})

    spec = parse_data(chaos(first, second)).plan.chaos_spec
    assert spec is not None and spec.planned_windows() == [(1.0, 6.0), (1.0, 6.0)]

    spec = parse_data(chaos(first, experiment(name="b", schedule={"start_after": "1s",
                                                                   "duration": "3s"}),
                            sequential=True)).plan.chaos_spec  # fmt: skip
    assert spec is not None and spec.planned_windows() == [(1.0, 6.0), (7.0, 10.0)]


def test_an_overlapping_experiment_past_the_end_of_the_load_is_an_error() -> None:
    late = experiment(name="late", schedule={"start_after": "8s", "duration": "3s"})

    found = problems_of(chaos(experiment(), late))

    assert fields(found) == ["chaos_spec.experiments[1].schedule"]
    assert "ends 11s after the load starts, but the load lasts 10s" in found[0].message


def test_two_process_faults_on_one_process_at_once_are_refused() -> None:
    outer = local("pause", pid_file="/run/pg.pid")
    outer["schedule"] = {"start_after": "1s", "duration": "4s"}
    inner = local("kill", pid_file="/run/pg.pid", start_command=["pg_ctl", "start"])
    inner["schedule"] = {"start_after": "2s", "duration": "1s"}
    found = problems_of(chaos(outer, inner, engine="local"))
    assert fields(found) == ["chaos_spec.experiments[1].schedule"]
    assert "while 'local-pause' does (2s to 3s)" in found[0].message


def test_process_faults_on_one_process_one_after_the_other_are_accepted() -> None:
    first = local("pause", pid_file="/run/pg.pid")
    second = local("kill", pid_file="/run/pg.pid", start_command=["pg_ctl", "start"])
    second["schedule"] = {"start_after": "1s", "duration": "1s"}
    parse_data(chaos(first, second, engine="local", sequential=True))


def test_a_target_field_the_fault_does_not_use_is_an_error() -> None:
    found = problems_of(chaos(local("reset", pid_file="/tmp/x", selector={"app": "pg"}),
                              engine="local"))  # fmt: skip
    assert sorted(fields(found)) == [
        "chaos_spec.experiments[0].target.pid_file",
        "chaos_spec.experiments[0].target.selector",
    ]
    assert "a local reset fault's target does not use pid_file: it takes none" in [
        p.message for p in found
    ]
