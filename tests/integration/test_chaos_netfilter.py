"""Loss and partition by iptables in a private network namespace, against a TCP echo server
listening there and reached from the host through a veth pair."""

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest

from crucible_dagster.chaos.base import PlannedFault
from crucible_dagster.chaos.netfilter import NetfilterFaults, crucible_rules
from tests.netns_support import (
    PrivateNetns,
    echo_server,
    iptables_listing,
    netns_tools_missing,
    private_netns,
)

pytestmark = pytest.mark.integration

PORT = 7000


@pytest.fixture
def netns() -> Iterator[PrivateNetns]:
    reason = netns_tools_missing()
    if reason is not None:
        pytest.skip(reason)
    with private_netns() as created, echo_server(created.name, created.ns_address, PORT):
        yield created


def fault(netns: PrivateNetns, fault_type: str, parameters: dict[str, object]) -> PlannedFault:
    return PlannedFault(
        name=f"{fault_type}-at-sut",
        backend="local",
        fault_type=fault_type,
        target={"netns": netns.name},
        parameters=parameters,
        start_s=0.0,
        end_s=10.0,
        run_id="netfilter_20250101-0000_0badcafe",
        sut_key="tcp-echo",
        sut_host=netns.ns_address,
        sut_port=PORT,
    )


def echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return sock.recv(len(payload))


def connects(address: str, timeout_s: float) -> bool:
    try:
        with socket.create_connection((address, PORT), timeout=timeout_s):
            return True
    except OSError:
        return False


async def connect_probes(address: str, count: int, timeout_s: float) -> int:
    """How many of `count` connection attempts succeed within `timeout_s` each."""

    async def probe() -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, PORT), timeout_s)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    succeeded = 0
    # In batches, so the server's accept queue never overflows into SYN cookies.
    for _ in range(count // 50):
        results = await asyncio.gather(*(probe() for _ in range(50)))
        succeeded += sum(results)
    return succeeded


def test_partition_times_out_connections_and_sessions_until_recover(netns: PrivateNetns) -> None:
    backend = NetfilterFaults()
    planned = fault(netns, "partition", {})
    assert backend.problems(planned) == []
    session = socket.create_connection((netns.ns_address, PORT), timeout=1.0)
    assert echo(session, b"before") == b"before"

    injected = backend.inject(planned)
    assert len(crucible_rules(netns.name, planned.run_id)) == 1

    assert not connects(netns.ns_address, timeout_s=1.0)
    session.sendall(b"during")
    with pytest.raises(TimeoutError):
        session.recv(6)

    status = backend.recover(json.loads(json.dumps(injected.recipe)))
    assert status.startswith("deleted rule crucible:")
    assert crucible_rules(netns.name) == []
    with socket.create_connection((netns.ns_address, PORT), timeout=2.0) as fresh:
        assert echo(fresh, b"after") == b"after"
    # TCP retransmits the segment the partition dropped, so the old session answers too.
    session.settimeout(15.0)
    assert session.recv(6) == b"during"
    session.close()


def test_recovering_a_partition_twice_says_the_rule_is_already_gone(netns: PrivateNetns) -> None:
    backend = NetfilterFaults()
    injected = backend.inject(fault(netns, "partition", {}))
    backend.recover(injected.recipe)

    assert "already gone" in backend.recover(injected.recipe)
    assert connects(netns.ns_address, timeout_s=2.0)


def test_fifty_percent_loss_drops_about_half_the_connection_attempts(netns: PrivateNetns) -> None:
    backend = NetfilterFaults()
    injected = backend.inject(fault(netns, "loss", {"loss": "50%"}))
    try:
        started = time.monotonic()
        # Shorter than the first SYN retransmission (1 s): a dropped SYN fails the probe.
        succeeded = asyncio.run(connect_probes(netns.ns_address, count=200, timeout_s=0.7))
        listing = iptables_listing(netns.name)
    finally:
        backend.recover(injected.recipe)
    print(f"{succeeded} of 200 probes connected in {time.monotonic() - started:.1f}s")

    assert 40 <= succeeded <= 160
    rule = next(line for line in listing.splitlines() if "crucible:" in line)
    assert "probability 0.5" in rule
    assert int(rule.split()[0]) > 0  # the DROP rule's packet counter
    assert asyncio.run(connect_probes(netns.ns_address, count=50, timeout_s=2.0)) == 50
