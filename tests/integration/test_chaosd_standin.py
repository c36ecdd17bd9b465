"""The chaosd backend against the stand-in for chaosd's REST API (tests/chaosd_standin.py)."""

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from crucible_dagster.chaos.base import ChaosError, PlannedFault
from crucible_dagster.chaos.chaosd import ChaosdBackend
from tests.chaosd_standin import StandinChaosd

pytestmark = pytest.mark.integration

DELAY = {"action": "delay", "latency": "200ms", "jitter": "20ms", "device": "eth0"}


@pytest.fixture
def chaosd() -> Iterator[StandinChaosd]:
    standin = StandinChaosd().start()
    yield standin
    standin.stop()


def fault(
    address: str, kind: str = "network", parameters: dict[str, Any] = DELAY, name: str = "slow_net"
) -> PlannedFault:
    return PlannedFault(name=name, backend="chaosd", fault_type=kind,
                        target={"address": address}, parameters=parameters, start_s=5.0,
                        end_s=35.0, run_id="plan_20250101-0000_abcd1234", sut_key="k")  # fmt: skip


def test_inject_returns_chaosds_uid_and_the_attack_is_in_place(chaosd: StandinChaosd) -> None:
    injected = ChaosdBackend().inject(fault(chaosd.address))

    uid = injected.recipe["uid"]
    assert injected.recipe == {"backend": "chaosd", "address": chaosd.address, "uid": uid,
                               "kind": "network"}  # fmt: skip
    assert injected.status == f"attack successfully (uid {uid})"
    experiment = chaosd.experiments[uid]
    assert (experiment["status"], experiment["kind"], experiment["action"]) == (
        "success",
        "network",
        "delay",
    )
    (request,) = chaosd.requests
    assert (request.method, request.path) == ("POST", "/api/attack/network")
    assert request.body == {**DELAY, "uid": uid}


def test_recover_destroys_the_attack(chaosd: StandinChaosd) -> None:
    backend = ChaosdBackend()
    injected = backend.inject(fault(chaosd.address))

    status = backend.recover(injected.recipe)

    uid = injected.recipe["uid"]
    assert status == f"attack recover successfully (uid {uid})"
    assert chaosd.experiments[uid]["status"] == "destroyed"


def test_recover_from_a_recipe_in_a_fresh_process(chaosd: StandinChaosd) -> None:
    injected = ChaosdBackend().inject(
        fault(chaosd.address, "stress", {"action": "cpu", "load": 50})
    )
    code = (
        "import json, sys\n"
        "from crucible_dagster.chaos.chaosd import ChaosdBackend\n"
        "print(ChaosdBackend().recover(json.loads(sys.argv[1])))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dict(injected.recipe))],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    uid = injected.recipe["uid"]
    assert done.stdout.strip() == f"attack recover successfully (uid {uid})"
    assert chaosd.experiments[uid]["status"] == "destroyed"


def test_recovering_twice_or_an_unknown_attack_counts_as_recovered(chaosd: StandinChaosd) -> None:
    backend = ChaosdBackend()
    recipe = backend.inject(fault(chaosd.address)).recipe
    backend.recover(recipe)

    again = backend.recover(recipe)
    unknown = backend.recover({**recipe, "uid": "0b7e6f3c-0000-4000-8000-000000000000"})

    assert again == f"already recovered (uid {recipe['uid']})"
    assert unknown.startswith("chaosd has no such attack; nothing to recover")


def test_a_body_chaosd_refuses_gives_chaosds_reason(chaosd: StandinChaosd) -> None:
    backend = ChaosdBackend()

    with pytest.raises(ChaosError) as invalid:
        backend.inject(fault(chaosd.address, parameters={"action": "delay", "device": "eth0"}))
    with pytest.raises(ChaosError) as mistyped:
        backend.inject(fault(chaosd.address, parameters={"action": "loss", "percent": 5}))

    assert str(invalid.value) == (
        f"the network attack of experiment 'slow_net' on chaosd at {chaosd.address} was "
        "refused: HTTP 400: attack config validation failed, cause: delay is required"
    )
    assert str(mistyped.value).endswith(
        "HTTP 400: json: cannot unmarshal number into Go struct field NetworkCommand.percent of "
        "type string"
    )
    assert chaosd.experiments == {}


def test_parameters_the_backend_accepts_pass_chaosds_validation(chaosd: StandinChaosd) -> None:
    backend = ChaosdBackend()
    faults = [
        fault(chaosd.address, "network", {"action": "loss", "percent": "20", "device": "eth0"}),
        fault(chaosd.address, "network", {"action": "flood", "ip-address": "10.0.0.6",
                                          "port": "5201", "rate": "10m"}),
        fault(chaosd.address, "process", {"process": "postgres", "signal": 19}),
        fault(chaosd.address, "disk", {"action": "fill", "size": "1G", "path": "/tmp/x"}),
        fault(chaosd.address, "jvm", {"action": "gc", "pid": 4321}),
        fault(chaosd.address, "kafka", {"action": "flood", "topic": "t", "host": "k", "port": 9092,
                                        "messageSize": 1024, "threads": 2}),
        fault(chaosd.address, "user_defined", {"attackCmd": "true", "recoverCmd": "true"}),
    ]  # fmt: skip

    for index, planned in enumerate(faults):
        assert backend.problems(planned) == []
        # Experiment names are unique in a plan, and with them the attacks' uids.
        backend.inject(replace(planned, name=f"experiment_{index}"))

    statuses = {e["kind"]: e["status"] for e in chaosd.experiments.values()}
    assert statuses == dict.fromkeys(
        ["network", "process", "disk-server", "jvm", "kafka", "userDefined"], "success"
    )


def test_an_attack_that_fails_on_the_machine_is_a_chaos_error() -> None:
    chaosd = StandinChaosd(refuse_attacks="process postgres not found").start()
    try:
        with pytest.raises(ChaosError) as raised:
            ChaosdBackend().inject(fault(chaosd.address, "process", {"process": "postgres",
                                                                     "signal": 19}))  # fmt: skip
    finally:
        chaosd.stop()

    assert str(raised.value).endswith("was refused: HTTP 500: process postgres not found")
    (experiment,) = chaosd.experiments.values()
    assert experiment["status"] == "error"


def test_a_kind_chaosd_has_no_route_for_is_a_clear_error(chaosd: StandinChaosd) -> None:
    with pytest.raises(ChaosError, match=r"chaosd has no route /api/attack/host \(HTTP 404\)"):
        ChaosdBackend().inject(fault(chaosd.address, "host", {"action": "shutdown"}))


def test_reachable_chaosd_has_no_problems(chaosd: StandinChaosd) -> None:
    backend = ChaosdBackend()

    assert backend.reachable(chaosd.address) is None
    assert backend.reachable(f"http://{chaosd.address}/") is None
    assert backend.problems(fault(chaosd.address)) == []


def test_unreachable_chaosd_gives_a_clear_message() -> None:
    chaosd = StandinChaosd().start()
    address = chaosd.address
    chaosd.stop()
    backend = ChaosdBackend(timeout_s=2)
    recipe = {"backend": "chaosd", "address": address, "uid": "u-1", "kind": "network"}

    unreachable = backend.reachable(address)
    problems = backend.problems(fault(address))
    with pytest.raises(ChaosError) as injecting:
        backend.inject(fault(address))
    with pytest.raises(ChaosError) as recovering:
        backend.recover(recipe)

    assert unreachable is not None
    assert unreachable.startswith(f"chaosd at {address} does not answer: ")
    assert "refused" in unreachable.lower()
    assert problems == [unreachable]
    assert "failed: chaosd does not answer" in str(injecting.value)
    assert str(recovering.value).startswith(f"could not recover chaosd attack u-1 at {address}")
    assert str(recovering.value).endswith(
        "the attack may still be in place: recover it on that machine with `chaosd recover u-1`"
    )


def test_chaosd_serving_attacks_over_https_only_is_explained() -> None:
    chaosd = StandinChaosd(https_only=True).start()
    try:
        unreachable = ChaosdBackend().reachable(chaosd.address)
    finally:
        chaosd.stop()

    assert unreachable is not None
    assert "no /api/experiments/ route" in unreachable
    assert "over https, by default on port 31768" in unreachable


def test_a_late_answer_says_how_to_recover_the_attack_by_hand() -> None:
    chaosd = StandinChaosd(answer_delay_s=1.5).start()
    try:
        with pytest.raises(ChaosError) as raised:
            ChaosdBackend(timeout_s=0.3).inject(fault(chaosd.address))
    finally:
        chaosd.stop()

    (uid,) = chaosd.experiments
    message = str(raised.value)
    assert "got no answer within 0.3s" in message
    # chaosd keeps an attack in status created until it is in place, and will not recover it then.
    assert "can not recover created experiment" in message
    assert message.endswith(f"`chaosd recover {uid}`")
