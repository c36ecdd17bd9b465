"""The Chaos Mesh backend without a cluster: the objects it builds, checked against the CRD
schemas of Chaos Mesh, their names and labels, and what `problems` says about bad parameters."""

import re
from typing import Any

import jsonschema
import pytest

from crucible_dagster.chaos.base import PlannedFault
from crucible_dagster.chaos.chaos_mesh import (
    KINDS,
    ChaosMeshBackend,
    custom_resource,
    go_duration,
    injected,
    object_name,
    status_summary,
)
from crucible_dagster.suts.base import sut_identity
from tests.chaos_mesh_standin import recorded_status, schema

SUT = sut_identity("postgresql", "db.example.com", 5432, "tpch")
RUN_ID = "orders_20260101-1200_0a1b2c3d"

# The smallest parameters each kind takes, as a plan would write them.
PARAMETERS: dict[str, dict[str, Any]] = {
    "NetworkChaos": {"action": "delay", "delay": {"latency": "100ms", "jitter": "10ms"}},
    "PodChaos": {"action": "pod-failure"},
    "StressChaos": {"stressors": {"cpu": {"workers": 2, "load": 80}}},
    "IOChaos": {"action": "latency", "volumePath": "/var/lib/postgresql", "delay": "50ms"},
    "TimeChaos": {"timeOffset": "-10m"},
    "DNSChaos": {"action": "error", "patterns": ["db.example.com"]},
}


def fault(
    kind: str = "NetworkChaos",
    parameters: dict[str, Any] | None = None,
    *,
    name: str = "db_slow",
    run_id: str = RUN_ID,
    target: dict[str, Any] | None = None,
    window: tuple[float, float] = (10.0, 40.0),
) -> PlannedFault:
    return PlannedFault(
        name=name,
        backend="chaos-mesh",
        fault_type=kind,
        target=target if target is not None else {"namespace": "db", "selector": {"app": "pg"}},
        parameters=PARAMETERS[kind] if parameters is None else parameters,
        start_s=window[0],
        end_s=window[1],
        run_id=run_id,
        sut_key=SUT.key,
    )


def schema_errors(body: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema(body["kind"]))
    return [error.message for error in validator.iter_errors(body)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_object_of_every_kind_is_valid_for_its_crd(kind: str) -> None:
    body = custom_resource(fault(kind))

    assert body["apiVersion"] == "chaos-mesh.org/v1alpha1"
    assert body["kind"] == kind
    assert schema_errors(body) == []
    assert ChaosMeshBackend().problems(fault(kind)) == []


def test_lowercase_kinds_are_not_invented() -> None:
    assert {rules.plural for rules in KINDS.values()} == {
        "networkchaos", "podchaos", "stresschaos", "iochaos", "timechaos", "dnschaos"
    }  # fmt: skip
    assert KINDS["NetworkChaos"].plural == "networkchaos"


def test_spec_has_target_mode_all_and_planned_duration() -> None:
    spec = custom_resource(fault(window=(5.0, 95.5)))["spec"]

    assert spec["selector"] == {"namespaces": ["db"], "labelSelectors": {"app": "pg"}}
    assert spec["mode"] == "all"
    assert spec["duration"] == "90.5s"
    assert spec["action"] == "delay"


def test_parameters_win_and_selector_merges_key_by_key() -> None:
    parameters = {
        **PARAMETERS["NetworkChaos"],
        "mode": "fixed-percent",
        "value": "50",
        "selector": {"labelSelectors": {"role": "primary"}, "namespaces": ["db", "db2"]},
    }
    spec = custom_resource(fault(parameters=parameters))["spec"]

    assert spec["mode"] == "fixed-percent"
    assert spec["value"] == "50"
    assert spec["selector"] == {
        "namespaces": ["db", "db2"],
        "labelSelectors": {"app": "pg", "role": "primary"},
    }


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30s"), (1.5, "1.5s"), (0.25, "0.25s"), (3600, "3600s")]
)
def test_durations_are_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_labels_name_run_sut_and_experiment_as_valid_label_values() -> None:
    labels = custom_resource(fault())["metadata"]["labels"]

    assert labels == {
        "crucible/run-id": RUN_ID,
        "crucible/sut": SUT.tag_value,
        "crucible/experiment": "db_slow",
    }
    label = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    assert all(label.match(v) and len(v) <= 63 for v in labels.values())


def test_object_name_is_readable_when_short() -> None:
    assert object_name("orders_20260101-1200_0a1b2c3d", "net-delay") == (
        "crucible-orders-20260101-1200-0a1b2c3d-net-delay"
    )


def test_object_names_stay_valid_and_distinct_for_long_plan_and_experiment_names() -> None:
    run_id = "p" * 40 + "_20260101-1200_0a1b2c3d"
    names = [object_name(run_id, f"experiment_number_{i}_with_a_long_name") for i in range(5)]

    dns = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    assert all(len(n) <= 63 and dns.match(n) for n in names)
    assert len(set(names)) == 5


def test_experiment_names_that_spell_alike_get_distinct_object_names() -> None:
    assert object_name(RUN_ID, "db_down") != object_name(RUN_ID, "db-down")


def test_the_same_experiment_of_two_runs_gets_distinct_object_names() -> None:
    other = "orders_20260101-1200_ffffffff"
    assert object_name(RUN_ID, "db_down") != object_name(other, "db_down")


@pytest.mark.parametrize(
    ("kind", "parameters", "expected"),
    [
        ("NetworkChaos", {}, "parameters.action: NetworkChaos needs an action: one of netem"),
        ("NetworkChaos", {"action": "lag"}, "'lag' is not a NetworkChaos action"),
        ("NetworkChaos", {"action": "delay"}, "parameters.delay: NetworkChaos action 'delay'"),
        ("PodChaos", {}, "parameters.action: PodChaos needs an action: one of pod-kill"),
        ("PodChaos", {"action": "container-kill"}, "parameters.containerNames"),
        ("StressChaos", {}, "parameters.stressors: StressChaos needs stressors"),
        ("StressChaos", {"stressors": {"disk": {}}}, "cpu and/or memory"),
        ("IOChaos", {"volumePath": "/data"}, "parameters.action: IOChaos needs an action"),
        ("IOChaos", {"action": "fault"}, "parameters.volumePath: IOChaos needs volumePath"),
        ("TimeChaos", {}, "parameters.timeOffset: TimeChaos needs timeOffset"),
        ("TimeChaos", {"timeOffset": "ten minutes"}, "'ten minutes' is not a Go duration"),
        ("DNSChaos", {}, "parameters.action: DNSChaos needs an action: one of error, random"),
    ],
)
def test_problems_name_the_parameter_and_what_is_expected(
    kind: str, parameters: dict[str, Any], expected: str
) -> None:
    problems = ChaosMeshBackend().problems(fault(kind, parameters))

    assert any(expected in p for p in problems), problems


def test_a_misspelt_parameter_is_a_problem_with_a_suggestion() -> None:
    parameters = {"acton": "delay", "delay": {"latency": "10ms"}}
    problems = ChaosMeshBackend().problems(fault(parameters=parameters))

    assert any("parameters.acton" in p and "did you mean 'action'?" in p for p in problems)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"mode": "some"}, "parameters.mode: 'some' is not a mode: expected one of one, all"),
        ({"mode": "fixed"}, "parameters.value: mode 'fixed' needs value"),
        ({"mode": "fixed-percent", "value": "150"}, "a percentage as a string in (0, 100]"),
        ({"duration": "5 minutes"}, "parameters.duration: '5 minutes' is not a Go duration"),
        ({"selector": {"labelSelectors": {"app": 1}}}, "parameters.selector.labelSelectors"),
    ],
)
def test_problems_check_mode_value_duration_and_selector(
    extra: dict[str, Any], expected: str
) -> None:
    parameters = {**PARAMETERS["NetworkChaos"], **extra}
    problems = ChaosMeshBackend().problems(fault(parameters=parameters))

    assert any(expected in p for p in problems), problems


def test_a_target_without_namespace_or_selector_is_a_problem() -> None:
    problems = ChaosMeshBackend().problems(fault(target={}))

    assert problems == [
        "target.namespace is missing: expected the namespace of the pods",
        "target.selector is missing: expected the labels of the pods",
    ]


def test_an_unknown_kind_is_a_problem_listing_the_kinds() -> None:
    problems = ChaosMeshBackend().problems(fault("HTTPChaos", {}))

    assert problems == [
        "'HTTPChaos' is not a Chaos Mesh kind: expected one of NetworkChaos, PodChaos, "
        "StressChaos, IOChaos, TimeChaos, DNSChaos"
    ]


@pytest.mark.parametrize(
    ("kind", "parameters"),
    [
        ("NetworkChaos", {}),
        ("NetworkChaos", {"action": "lag"}),
        ("PodChaos", {}),
        ("IOChaos", {"action": "fault"}),
        ("TimeChaos", {}),
        ("DNSChaos", {"action": "nxdomain"}),
        ("NetworkChaos", {**PARAMETERS["NetworkChaos"], "mode": "some"}),
    ],
)
def test_what_problems_refuses_the_crd_schema_refuses_too(
    kind: str, parameters: dict[str, Any]
) -> None:
    body = custom_resource(fault(kind, parameters))

    assert ChaosMeshBackend().problems(fault(kind, parameters)) != []
    assert schema_errors(body) != []


@pytest.mark.parametrize("kind", list(KINDS))
def test_recorded_statuses_fit_the_crd_status_schema(kind: str) -> None:
    status_schema = schema(kind)["properties"]["status"]

    assert list(jsonschema.Draft7Validator(status_schema).iter_errors(recorded_status(kind))) == []


def test_a_recorded_injected_status_reads_as_injected() -> None:
    status = recorded_status("PodChaos")

    assert injected(status)
    assert status_summary(status) == (
        "conditions AllInjected+Selected; desired phase Run; "
        "1 target (1 Injected: tidb-cluster/basic-tikv-0)"
    )


def test_a_recorded_status_after_its_duration_counts_its_injection() -> None:
    status = recorded_status("TimeChaos")

    assert injected(status)  # AllInjected is False again, but every target was injected once
    assert "conditions AllRecovered+Selected; desired phase Stop" in status_summary(status)


def test_a_status_without_records_is_not_injected() -> None:
    status = {"conditions": [{"type": "Selected", "status": "False"}], "experiment": {}}

    assert not injected(status)
    assert status_summary(status) == "conditions none true; desired phase unset; 0 targets"
