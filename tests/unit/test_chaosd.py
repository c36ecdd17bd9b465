"""The chaosd backend without a chaosd: addresses, attack bodies, parameter problems, answers."""

from typing import Any

import httpx
import pytest

from crucible_dagster.chaos.base import ChaosError, PlannedFault
from crucible_dagster.chaos.chaosd import (
    ACTIONS,
    FLOOD_MARGIN_S,
    NEEDS,
    OPTIONS,
    ROUTES,
    ChaosdBackend,
    attack_body,
    attack_problems,
    base_url,
    chaosd_message,
)


def fault(kind: str, parameters: dict[str, Any], address: Any = "10.0.0.5") -> PlannedFault:
    target = {} if address is None else {"address": address}
    return PlannedFault(name="slow_disk", backend="chaosd", fault_type=kind, target=target,
                        parameters=parameters, start_s=10.0, end_s=40.0, run_id="plan_x",
                        sut_key="k")  # fmt: skip


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("10.0.0.5", "http://10.0.0.5:31767"),
        ("db-1.example.com:4000", "http://db-1.example.com:4000"),
        ("http://db-1:31767/", "http://db-1:31767"),
        ("https://db-1", "https://db-1:31768"),
        ("https://db-1:443", "https://db-1:443"),
        (" 10.0.0.5 ", "http://10.0.0.5:31767"),
        ("::1", "http://[::1]:31767"),
        ("[fe80::1]:9000", "http://[fe80::1]:9000"),
    ],
)
def test_address_becomes_chaosd_url_with_default_port(address: str, url: str) -> None:
    assert base_url(address) == url


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("", "expected chaosd's host"),
        ("ftp://db-1", "expected host, host:port"),
        ("http://db-1/api", "no path"),
        ("db-1:99999", "port must be 1 to 65535"),
        ("db-1:port", "port must be 1 to 65535"),
        ("http://user@db-1", "no path, query or user"),
    ],
)
def test_bad_address_is_refused_with_what_was_expected(address: str, words: str) -> None:
    with pytest.raises(ChaosError, match=r"target\.address") as raised:
        base_url(address)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("kind", "parameters"),
    [
        ("process", {"process": "postgres", "signal": 19}),
        ("network", {"action": "delay", "latency": "100ms", "jitter": "10ms", "device": "eth0"}),
        ("network", {"action": "loss", "percent": "30", "device": "eth0", "ip-protocol": "tcp"}),
        ("network", {"action": "partition", "device": "eth0", "direction": "both",
                     "ip-address": "10.0.0.6"}),
        ("network", {"action": "bandwidth", "rate": "1mbps", "limit": 20000, "buffer": 10000,
                     "device": "eth0"}),
        ("network", {"action": "flood", "ip-address": "10.0.0.6", "port": "5201",
                     "rate": "10m"}),
        ("network", {"action": "dns", "dns-domain-name": "db", "dns-ip": "10.0.0.9"}),
        ("stress", {"action": "cpu", "load": 80, "workers": 2}),
        ("stress", {"action": "mem", "size": "1GB", "options": ["--vm-keep"]}),
        ("disk", {"action": "fill", "percent": "80", "path": "/var/lib/db"}),
        ("disk", {"action": "write-payload", "size": "1G", "payload-process-num": 2}),
        ("clock", {"pid": 4321, "time-offset": "-5m"}),
        ("jvm", {"action": "latency", "pid": 4321, "class": "Main", "method": "run",
                 "latency": 500}),
        ("jvm", {"action": "stress", "pid": 4321, "cpu-count": 2}),
        ("redis", {"action": "stop", "addr": "127.0.0.1:6379"}),
        ("vm", {"vm-name": "db-1"}),
        ("user_defined", {"attackCmd": "systemctl stop db", "recoverCmd": "systemctl start db"}),
    ],
)  # fmt: skip
def test_attack_chaosd_takes_has_no_problems(kind: str, parameters: dict[str, Any]) -> None:
    assert attack_problems(kind, parameters) == []


def test_every_route_has_a_table_of_options() -> None:
    assert ROUTES == ("process", "network", "stress", "disk", "clock", "jvm", "kafka", "redis",
                      "vm", "user_defined")  # fmt: skip


def test_every_action_says_what_it_needs_among_the_kinds_options() -> None:
    for kind in ROUTES:
        for action in ACTIONS.get(kind, (None,)):
            for group in NEEDS[(kind, action)]:
                assert set(group) <= set(OPTIONS[kind]), (kind, action, group)


@pytest.mark.parametrize("kind", ["host", "file", "stress-cpu", "network-loss", "http"])
def test_kind_without_chaosd_route_is_a_problem_listing_the_routes(kind: str) -> None:
    (problem,) = attack_problems(kind, {"action": "cpu"})
    assert problem.startswith(f"fault_type: chaosd has no {kind!r} attack route")
    assert "process, network, stress, disk, clock, jvm" in problem


def test_missing_options_are_named_with_what_is_expected() -> None:
    problems = attack_problems("network", {"action": "delay"})
    assert problems == [
        'parameters.latency: a network delay attack needs latency (a string, e.g. "100ms")',
        "parameters.device: a network delay attack needs device (a string)",
    ]


def test_process_attack_needs_a_signal_since_chaosd_would_send_signal_zero() -> None:
    assert attack_problems("process", {"process": "postgres"}) == [
        "parameters.signal: a process attack needs signal (an integer)"
    ]


def test_one_of_several_options_is_enough() -> None:
    assert attack_problems("disk", {"action": "fill", "size": "1G"}) == []
    assert attack_problems("disk", {"action": "fill"}) == [
        'parameters.size: a disk fill attack needs size (a string, e.g. "256MB") or percent '
        '(a string, e.g. "50")'
    ]


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({"action": "loss", "percent": 30, "device": "eth0"},
         'parameters.percent: expected a string (chaosd reads it as text), e.g. "50"'),
        ({"action": "loss", "percent": "130", "device": "eth0"},
         "parameters.percent: expected a percentage from \"0\" to \"100\", got '130'"),
        ({"action": "delay", "latency": "100 ms", "device": "eth0"},
         'parameters.latency: expected a duration such as "100ms", "1.5s" or "-5m", '
         "got '100 ms'"),
        ({"action": "partition", "device": "eth0", "direction": "in"},
         "parameters.direction: expected one of to, from, both, got 'in'"),
        ({"action": "bandwidth", "rate": "1mbps", "limit": "20000", "buffer": 10000},
         "parameters.limit: expected an integer"),
        ({"action": "bandwidth", "rate": "1mbps", "limit": True, "buffer": 10000},
         "parameters.limit: expected an integer"),
    ],
)  # fmt: skip
def test_values_of_the_wrong_type_or_form_are_problems(
    parameters: dict[str, Any], problem: str
) -> None:
    assert attack_problems("network", parameters) == [problem]


def test_action_is_required_and_must_be_one_of_the_kinds_actions() -> None:
    assert attack_problems("stress", {"load": 50}) == [
        "parameters.action: a stress attack needs an action, one of cpu, mem"
    ]
    (problem,) = attack_problems("network", {"action": "port-occupied", "port": "8080"})
    assert "one of delay, loss, corrupt, duplicate, partition, dns, bandwidth, occupied" in problem


def test_misspelt_option_is_a_problem_listing_the_options() -> None:
    problems = attack_problems("clock", {"pid": 1, "time-offset": "5s", "time_offset": "5s"})
    assert problems == [
        "parameters.time_offset: chaosd's clock attack takes no option 'time_offset'; it takes "
        "clock-ids-slice, pid, time-offset"
    ]


@pytest.mark.parametrize("name", ["uid", "kind", "schedule", "duration"])
def test_options_crucible_owns_are_refused(name: str) -> None:
    parameters = {"process": "postgres", "signal": 9, name: "x"}
    (problem,) = attack_problems("process", parameters)
    assert problem.startswith(f"parameters.{name}: not allowed here: ")


def test_network_down_is_refused_with_the_reason() -> None:
    (problem,) = attack_problems("network", {"action": "down", "device": "eth0"})
    assert "does not run network action 'down'" in problem


def test_a_password_value_never_appears_in_a_problem() -> None:
    problems = attack_problems("redis", {"action": "stop", "addr": "db:6379", "password": 123456})
    assert problems == [
        'parameters.password: expected a string (chaosd reads it as text), e.g. "..."'
    ]
    assert "123456" not in problems[0]


def test_backend_problems_include_address_problems_without_asking_chaosd() -> None:
    backend = ChaosdBackend(probe=False)
    assert backend.problems(fault("vm", {"vm-name": "db-1"})) == []
    assert backend.problems(fault("vm", {"vm-name": "db-1"}, address=None)) == [
        "target.address: an ec2 target needs chaosd's address"
    ]
    (problem,) = backend.problems(fault("vm", {"vm-name": "db-1"}, address="ftp://db-1"))
    assert problem.startswith("target.address: expected host, host:port")


def test_body_is_the_parameters_with_crucibles_uid() -> None:
    parameters = {"action": "delay", "latency": "100ms", "device": "eth0"}
    body = attack_body(fault("network", parameters), "u-1")
    assert body == {**parameters, "uid": "u-1"}


def test_flood_runs_iperf_for_the_window_plus_a_margin() -> None:
    parameters = {"action": "flood", "ip-address": "10.0.0.6", "port": "5201", "rate": "10m"}
    body = attack_body(fault("network", parameters), "u-1")
    assert body["duration"] == str(30 + FLOOD_MARGIN_S)


def test_kafka_action_is_also_sent_under_chaosds_untagged_field_name() -> None:
    body = attack_body(fault("kafka", {"action": "io", "topic": "t"}), "u-1")
    assert body["Action"] == "io"
    assert body["action"] == "io"


def test_chaosd_message_drops_error_type_prefixes() -> None:
    message = ("error.api.invalid_request: error.core.attack_config_validation_error: attack "
               "config validation failed, cause: process not provided")  # fmt: skip
    answer = httpx.Response(400, json={"error": True, "message": message, "code": "x"})
    assert chaosd_message(answer) == (
        "attack config validation failed, cause: process not provided"
    )


def test_chaosd_message_of_a_success_and_of_a_text_answer() -> None:
    success = httpx.Response(
        200, json={"status": 200, "message": "attack successfully", "uid": "u"}
    )
    assert chaosd_message(success) == "attack successfully"
    assert chaosd_message(httpx.Response(404, text="404 page not found")) == "404 page not found"
    assert chaosd_message(httpx.Response(502, text="")) == "Bad Gateway"


def test_recover_refuses_a_recipe_of_another_backend() -> None:
    with pytest.raises(ChaosError, match="not a chaosd recipe"):
        ChaosdBackend().recover({"backend": "local", "pid": 12})
