"""The local backend's network faults without a network: loss percentages, the rules they
become, problems, and recipes recover refuses."""

import os
import shutil
from typing import Any

import pytest

from crucible_dagster.chaos.base import ChaosError, PlannedFault
from crucible_dagster.chaos.netfilter import (
    NetfilterFaults,
    network_namespaces,
    parse_loss,
    rule_comment,
    rule_spec,
)

needs_ip = pytest.mark.skipif(
    shutil.which("ip") is None and shutil.which("ip", path="/usr/sbin:/sbin") is None,
    reason="iproute2 (ip) is not installed",
)


def fault(fault_type: str, netns: str = "crucible-no-such-ns", **parameters: Any) -> PlannedFault:
    return PlannedFault(
        name="drop-some",
        backend="local",
        fault_type=fault_type,
        target={"netns": netns},
        parameters=parameters,
        start_s=5.0,
        end_s=15.0,
        run_id="plan_20250101-0000_0badcafe",
        sut_key="postgresql:10.0.0.2:5432:postgres",
        sut_host="10.0.0.2",
        sut_port=5432,
    )


@pytest.mark.parametrize(
    ("written", "share"),
    [("30%", 0.3), ("30", 0.3), (" 12.5 % ", 0.125), (50, 0.5), (0.5, 0.005), ("100%", 1.0)],
)
def test_loss_is_a_percentage_written_as_number_or_text(written: Any, share: float) -> None:
    assert parse_loss(written) == pytest.approx(share)


@pytest.mark.parametrize("written", ["0%", 0, "150%", 100.5, "-5%", "half", "0.3s", True, None])
def test_loss_outside_zero_to_hundred_percent_is_refused(written: Any) -> None:
    with pytest.raises(ChaosError, match=r"parameter loss: expected a percentage above 0"):
        parse_loss(written)


def test_loss_rule_drops_a_random_share_of_tcp_to_the_port_and_carries_its_tag() -> None:
    comment = rule_comment("plan_20250101-0000_0badcafe", "drop-some")

    assert comment == "crucible:plan_20250101-0000_0badcafe:drop-some"
    assert rule_spec(5432, 0.3, comment) == [
        "-p", "tcp", "--dport", "5432",
        "-m", "statistic", "--mode", "random", "--probability", "0.300000",
        "-m", "comment", "--comment", comment,
        "-j", "DROP",
    ]  # fmt: skip


def test_partition_and_full_loss_rules_drop_every_packet_to_the_port() -> None:
    expected = ["-p", "tcp", "--dport", "5432", "-m", "comment", "--comment", "c", "-j", "DROP"]

    assert rule_spec(5432, None, "c") == expected
    assert rule_spec(5432, 1.0, "c") == expected


def test_unknown_and_missing_parameters_are_problems() -> None:
    backend = NetfilterFaults()

    loss = backend.problems(fault("loss", correlation="25%"))
    partition = backend.problems(fault("partition", loss="10%"))

    assert loss[:2] == [
        "a loss fault has no parameter correlation: it takes loss",
        'a loss fault needs parameter loss, a percentage such as "30%"',
    ]
    assert partition[0] == "a partition fault has no parameter loss: it takes none"


def test_a_bad_loss_value_is_a_problem() -> None:
    problems = NetfilterFaults().problems(fault("loss", loss="130%"))

    assert problems[0].startswith("parameter loss: expected a percentage above 0 and at most 100")


def test_a_fault_without_the_sut_port_is_a_problem() -> None:
    planned = PlannedFault(
        name="cut",
        backend="local",
        fault_type="partition",
        target={"netns": "sut"},
        parameters={},
        start_s=0.0,
        end_s=1.0,
        run_id="r",
        sut_key="k",
    )

    assert "a partition fault needs the SUT's port, got 0" in NetfilterFaults().problems(planned)


def test_an_experiment_name_too_long_for_the_rule_comment_is_a_problem() -> None:
    planned = fault("partition")
    planned = PlannedFault(**{**planned.__dict__, "name": "x" * 300})

    problems = NetfilterFaults().problems(planned)

    assert any("longer than iptables' 256 characters" in p for p in problems)


@needs_ip
@pytest.mark.skipif(os.geteuid() != 0, reason="listing network namespaces needs root here")
def test_a_missing_network_namespace_is_a_problem() -> None:
    assert "crucible-no-such-ns" not in network_namespaces()

    problems = NetfilterFaults().problems(fault("partition"))

    assert problems == [
        "network namespace 'crucible-no-such-ns' does not exist (`ip netns list` does not show it)"
    ]


@needs_ip
def test_recovering_in_a_namespace_that_is_gone_succeeds() -> None:
    recipe = {
        "backend": "local",
        "fault": "partition",
        "netns": "crucible-no-such-ns",
        "chain": "INPUT",
        "rule": rule_spec(5432, None, rule_comment("r", "cut")),
    }

    assert NetfilterFaults().recover(recipe) == (
        "netns crucible-no-such-ns is gone, and its rules with it"
    )


def test_recover_never_deletes_a_rule_without_crucibles_tag() -> None:
    recipe = {
        "backend": "local",
        "fault": "partition",
        "netns": "sut",
        "chain": "INPUT",
        "rule": ["-p", "tcp", "--dport", "22", "-j", "DROP"],
    }

    with pytest.raises(ChaosError, match="not a recipe of the local backend's network faults"):
        NetfilterFaults().recover(recipe)


def test_inject_refuses_a_fault_with_problems() -> None:
    with pytest.raises(ChaosError, match="cannot inject 'drop-some': a loss fault has no"):
        NetfilterFaults().inject(fault("loss", correlation="25%", loss="10%"))


def test_a_process_fault_is_not_a_network_fault() -> None:
    assert NetfilterFaults().problems(fault("pause")) == [
        "'pause' is not a network fault: expected one of loss, partition"
    ]
