"""The fault proxy against small TCP servers on loopback: relaying, impairments, faults."""

import contextlib
import hashlib
import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crucible_dagster.chaos.base import ChaosError, PlannedFault
from crucible_dagster.chaos.proxy import FaultProxy, ProxyFaults, parse_rate
from crucible_dagster.local_postgres import free_port


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def _serve(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A threaded TCP server on 127.0.0.1 that runs `handle` per connection; its port."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            # A reset connection is what some tests make on purpose.
            with contextlib.suppress(OSError):
                handle(self.request)

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo_port() -> Iterator[int]:
    with _serve(_echo) as port:
        yield port


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port) as running:
        yield running


def _connect(proxy: FaultProxy) -> socket.socket:
    conn = socket.create_connection(proxy.address, timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _round_trip_s(conn: socket.socket) -> float:
    started = time.perf_counter()
    conn.sendall(b"p")
    assert conn.recv(16) == b"p"
    return time.perf_counter() - started


def _median_round_trip_s(conn: socket.socket, count: int = 9) -> float:
    return statistics.median(_round_trip_s(conn) for _ in range(count))


def _receive(conn: socket.socket, nbytes: int) -> bytes:
    got = bytearray()
    while len(got) < nbytes:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _echo_through(conn: socket.socket, data: bytes) -> tuple[bytes, float]:
    """Sends `data` from a thread while reading the echo; returns what came back and how long."""
    started = time.perf_counter()
    sender = threading.Thread(target=conn.sendall, args=(data,), daemon=True)
    sender.start()
    got = _receive(conn, len(data))
    sender.join(10)
    return got, time.perf_counter() - started


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# Relaying


def test_proxy_listens_on_loopback_only(proxy: FaultProxy) -> None:
    host, port = proxy.address
    assert host == "127.0.0.1"
    assert port > 0


def test_bytes_arrive_intact_and_in_order_through_idle_proxy(proxy: FaultProxy) -> None:
    data = os.urandom(8 * 1024 * 1024)
    with _connect(proxy) as conn:
        got, _ = _echo_through(conn, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert _wait_for(lambda: proxy.bytes_up == len(data) and proxy.bytes_down == len(data))


def test_bytes_stay_in_order_under_latency_and_jitter(proxy: FaultProxy) -> None:
    proxy.add_latency("slow", 0.005, jitter_s=0.005, seed=7)
    sent = b"".join(b"%06d," % number for number in range(3000))
    with _connect(proxy) as conn:

        def send_in_small_writes() -> None:
            # Many small writes, so that chunks get different delays drawn.
            for start in range(0, len(sent), 70):
                conn.sendall(sent[start : start + 70])

        sender = threading.Thread(target=send_in_small_writes, daemon=True)
        sender.start()
        got = _receive(conn, len(sent))
        sender.join(10)
    assert got == sent


def test_stats_count_connections_and_bytes(proxy: FaultProxy) -> None:
    with _connect(proxy) as first, _connect(proxy) as second:
        _round_trip_s(first)
        _round_trip_s(second)
        assert _wait_for(lambda: proxy.connections_open == 2)
    assert _wait_for(lambda: proxy.connections_open == 0)
    assert proxy.connections_total == 2
    assert (proxy.bytes_up, proxy.bytes_down) == (2, 2)


def test_server_that_speaks_first_and_closes_reaches_client() -> None:
    def banner(conn: socket.socket) -> None:
        conn.sendall(b"hello from the server\n")
        conn.close()

    with _serve(banner) as port, FaultProxy("127.0.0.1", port) as proxy:
        with _connect(proxy) as conn:
            assert _receive(conn, 1000) == b"hello from the server\n"
            assert conn.recv(10) == b""
            # Half-closed: the client may still send until it closes too.
            assert proxy.connections_open == 1
        assert _wait_for(lambda: proxy.connections_open == 0)


def test_client_eof_reaches_server_after_delayed_data(proxy: FaultProxy) -> None:
    proxy.add_latency("slow", 0.05)
    data = os.urandom(300_000)
    with _connect(proxy) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        # The echo server answers the EOF with its own only after echoing everything.
        got = _receive(conn, len(data) + 1)
        assert got == data
        assert conn.recv(10) == b""
    assert _wait_for(lambda: proxy.connections_open == 0)


def test_connect_failure_upstream_closes_client() -> None:
    with FaultProxy("127.0.0.1", free_port()) as proxy, _connect(proxy) as conn:
        with contextlib.suppress(ConnectionResetError):  # closed either way
            assert conn.recv(10) == b""
        assert _wait_for(lambda: proxy.connections_open == 0)
        assert proxy.connections_total == 1


def test_stop_closes_open_connections(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port)
    proxy.start()
    conn = _connect(proxy)
    _round_trip_s(conn)
    proxy.stop()
    with contextlib.suppress(ConnectionResetError):
        assert conn.recv(10) == b""
    conn.close()
    assert proxy.connections_open == 0
    with pytest.raises(OSError):
        socket.create_connection(proxy.address, timeout=2).close()


# Latency


def test_latency_adds_to_each_round_trip(proxy: FaultProxy) -> None:
    with _connect(proxy) as conn:
        base_s = _median_round_trip_s(conn)
        proxy.add_latency("slow", 0.04)
        slowed_s = _median_round_trip_s(conn)
        proxy.remove("slow")
        restored_s = _median_round_trip_s(conn)
    assert 0.035 <= slowed_s - base_s <= 0.07
    assert restored_s < base_s + 0.01


def test_overlapping_latencies_add_up_and_lift_one_at_a_time(proxy: FaultProxy) -> None:
    with _connect(proxy) as conn:
        proxy.add_latency("first", 0.02)
        proxy.add_latency("second", 0.03, jitter_s=0.005, seed=1)
        both_s = _median_round_trip_s(conn)
        assert proxy.remove("first") is True
        assert proxy.remove("first") is False
        second_s = _median_round_trip_s(conn)
        proxy.clear()
        none_s = _median_round_trip_s(conn)
    assert 0.045 <= both_s <= 0.08
    assert 0.025 <= second_s <= 0.05
    assert none_s < 0.01
    assert proxy.impairments() == []


def test_lifting_a_long_latency_frees_what_it_holds(proxy: FaultProxy) -> None:
    proxy.add_latency("long", 30.0)
    with _connect(proxy) as conn:
        conn.sendall(b"held")
        time.sleep(0.1)
        started = time.perf_counter()
        proxy.remove("long")
        assert conn.recv(16) == b"held"
        assert time.perf_counter() - started < 1.0


def test_impairments_may_change_from_many_threads_while_traffic_flows(
    proxy: FaultProxy,
) -> None:
    data = os.urandom(2 * 1024 * 1024)

    def churn(index: int) -> None:
        for round_ in range(20):
            proxy.add_latency(f"lat-{index}-{round_}", 0.001, jitter_s=0.001)
            proxy.add_bandwidth(f"bw-{index}-{round_}", 800e6)
            proxy.remove(f"lat-{index}-{round_}")
            proxy.remove(f"bw-{index}-{round_}")

    with _connect(proxy) as conn:
        workers = [threading.Thread(target=churn, args=(i,), daemon=True) for i in range(4)]
        for worker in workers:
            worker.start()
        got, _ = _echo_through(conn, data)
        for worker in workers:
            worker.join(10)
    assert got == data
    assert proxy.impairments() == []


# Bandwidth


def test_bandwidth_limits_throughput(proxy: FaultProxy) -> None:
    data = os.urandom(200_000)
    with _connect(proxy) as conn:
        _, free_s = _echo_through(conn, data)
        proxy.add_bandwidth("thin", 4e6)  # 500 kB/s each way: 200 kB take about 0.4 s
        got, limited_s = _echo_through(conn, data)
    assert got == data
    assert free_s < 0.2
    assert 0.3 <= limited_s <= 0.8


def test_lowest_bandwidth_wins_and_is_shared_by_connections(proxy: FaultProxy) -> None:
    proxy.add_bandwidth("wide", 64e6)
    proxy.add_bandwidth("narrow", 4e6)
    data = os.urandom(100_000)
    results: list[float] = []

    def one_client() -> None:
        with _connect(proxy) as conn:
            got, took_s = _echo_through(conn, data)
            assert got == data
            results.append(took_s)

    clients = [threading.Thread(target=one_client) for _ in range(2)]
    started = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join(20)
    total_s = time.perf_counter() - started
    # 200 kB through one 500 kB/s link: about 0.4 s, not 0.2 s as two links would give.
    assert len(results) == 2
    assert 0.3 <= total_s <= 0.8


# Reset


def test_reset_breaks_open_connections_and_new_ones_until_lifted(proxy: FaultProxy) -> None:
    with _connect(proxy) as conn:
        _round_trip_s(conn)
        proxy.add_reset("cut")
        with pytest.raises(ConnectionResetError):
            conn.sendall(b"x")
            conn.recv(16)
    assert proxy.resets == 1

    # The RST may come before connect() returns, or on the first read.
    with pytest.raises(ConnectionResetError), _connect(proxy) as conn:
        conn.sendall(b"x")
        conn.recv(16)
    assert _wait_for(lambda: proxy.resets == 2)

    assert proxy.remove("cut")
    with _connect(proxy) as conn:
        assert _round_trip_s(conn) < 1
    assert _wait_for(lambda: proxy.connections_open == 0)


# Memory


def test_queue_stays_bounded_with_a_slow_consumer() -> None:
    bound = 128 * 1024
    gate = threading.Event()
    received = hashlib.sha256()
    received_bytes = [0]

    def sink(conn: socket.socket) -> None:
        gate.wait(20)
        while data := conn.recv(65536):
            received.update(data)
            received_bytes[0] += len(data)

    data = os.urandom(32 * 1024 * 1024)
    sent = [0]
    with _serve(sink) as port, FaultProxy("127.0.0.1", port, max_queued_bytes=bound) as proxy:
        conn = _connect(proxy)

        def produce() -> None:
            view = memoryview(data)
            while sent[0] < len(data):
                sent[0] += conn.send(view[sent[0] : sent[0] + 65536])
            conn.shutdown(socket.SHUT_WR)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        # Wait until the producer is held back: nothing more goes out.
        last = -1
        while sent[0] != last:
            last = sent[0]
            time.sleep(0.3)
        held_at = sent[0]
        peak = proxy.peak_queued_bytes

        gate.set()
        producer.join(20)
        assert _wait_for(lambda: received_bytes[0] == len(data), 20)
        conn.close()

    assert held_at < len(data)
    assert 0 < peak <= bound
    assert received.digest() == hashlib.sha256(data).digest()


def test_queue_stays_bounded_under_a_long_latency() -> None:
    bound = 64 * 1024
    received_bytes = [0]

    def sink(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            received_bytes[0] += len(data)

    data = os.urandom(16 * 1024 * 1024)
    with _serve(sink) as port, FaultProxy("127.0.0.1", port, max_queued_bytes=bound) as proxy:
        proxy.add_latency("long", 30.0)
        conn = _connect(proxy)
        sender = threading.Thread(target=conn.sendall, args=(data,), daemon=True)
        sender.start()
        time.sleep(1.0)
        assert sender.is_alive()  # held back by flow control, not buffered
        assert 0 < proxy.peak_queued_bytes <= bound
        assert received_bytes[0] == 0

        proxy.remove("long")
        sender.join(20)
        assert _wait_for(lambda: received_bytes[0] == len(data), 20)
        conn.close()


# The chaos backend


def _fault(fault_type: str, **parameters: Any) -> PlannedFault:
    return PlannedFault(
        name=f"{fault_type}-1",
        backend="local",
        fault_type=fault_type,
        target={},
        parameters=parameters,
        start_s=1.0,
        end_s=5.0,
        run_id="plan_20250101-0000_abcdef12",
        sut_key="postgresql/127.0.0.1/5432/postgres",
    )


def test_latency_fault_applies_and_recovers(proxy: FaultProxy) -> None:
    faults = ProxyFaults(proxy)
    fault = _fault("latency", latency="40ms", jitter="5ms")
    assert faults.problems(fault) == []

    injected = faults.inject(fault)
    host, port = proxy.address
    assert injected.status == (
        f"latency 40ms ± 5ms on {proxy.upstream_host}:{proxy.upstream_port} via {host}:{port}"
    )
    assert injected.recipe == {
        "backend": "local",
        "fault": "latency",
        "name": "latency-1",
        "proxy_pid": os.getpid(),
        "proxy_port": port,
    }
    json.dumps(dict(injected.recipe))
    with _connect(proxy) as conn:
        assert _median_round_trip_s(conn, 5) >= 0.03
        assert "lifted" in faults.recover(injected.recipe)
        assert _median_round_trip_s(conn, 5) < 0.01
    assert "already gone" in faults.recover(injected.recipe)


def test_bandwidth_and_reset_faults_apply(proxy: FaultProxy) -> None:
    faults = ProxyFaults(proxy)
    limited = faults.inject(_fault("bandwidth", rate="500kbps"))
    assert limited.status.startswith("bandwidth 500kbps on ")
    assert proxy.impairments() == ["bandwidth-1"]

    with _connect(proxy) as conn:
        _round_trip_s(conn)
        cut = faults.inject(_fault("reset"))
        assert cut.status.startswith("reset of 1 open connection and every new one on ")
        with pytest.raises(ConnectionResetError):
            conn.sendall(b"x")
            conn.recv(16)
    faults.recover(cut.recipe)
    faults.recover(limited.recipe)
    assert proxy.impairments() == []


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, "needs parameters.latency"),
        ({"latency": 50}, "the number 50"),
        ({"latency": "50"}, "got '50'"),
        ({"latency": "0ms"}, "longer than 0s"),
        ({"latency": "50ms", "jitter": 5}, "parameters.jitter must be a duration"),
        ({"latency": "50ms", "delay": "1s"}, "unknown parameters delay: a latency fault takes "),
    ],
)
def test_latency_fault_parameters_are_checked(
    proxy: FaultProxy, parameters: dict[str, Any], expected: str
) -> None:
    found = ProxyFaults(proxy).problems(_fault("latency", **parameters))
    assert len(found) == 1
    assert expected in found[0]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, "needs parameters.rate"),
        ({"rate": 1000}, "the number 1000"),
        ({"rate": "1 megabit"}, "expected a rate like 1mbps"),
        ({"rate": "0kbps"}, "more than 0"),
        ({"rate": "1mbps", "limit": 10}, "takes rate"),
    ],
)
def test_bandwidth_fault_parameters_are_checked(
    proxy: FaultProxy, parameters: dict[str, Any], expected: str
) -> None:
    found = ProxyFaults(proxy).problems(_fault("bandwidth", **parameters))
    assert len(found) == 1
    assert expected in found[0]


def test_reset_fault_takes_no_parameters(proxy: FaultProxy) -> None:
    found = ProxyFaults(proxy).problems(_fault("reset", after="1s"))
    assert found == ["unknown parameters after: a reset fault takes no parameters"]


def test_faults_without_a_proxy_validate_but_are_refused_on_injection() -> None:
    faults = ProxyFaults(None)
    fault = _fault("latency", latency="10ms")
    # A plan is validated before its run puts the proxy in front of the SUT.
    assert faults.problems(fault) == []
    with pytest.raises(ChaosError, match=r"latency fault 'latency-1': .*no fault proxy"):
        faults.inject(fault)
    stopped = ProxyFaults(FaultProxy("127.0.0.1", 5432))
    with pytest.raises(ChaosError, match="not running"):
        stopped.inject(fault)


def test_process_faults_are_not_the_proxys(proxy: FaultProxy) -> None:
    found = ProxyFaults(proxy).problems(_fault("pause"))
    assert found == ["the fault proxy makes only latency, bandwidth, reset faults, not 'pause'"]


def test_recover_in_another_process_has_nothing_to_undo(proxy: FaultProxy) -> None:
    injected = ProxyFaults(proxy).inject(_fault("latency", latency="10ms"))
    script = (
        "import json, sys\n"
        "from crucible_dagster.chaos.proxy import ProxyFaults\n"
        "print(ProxyFaults(None).recover(json.loads(sys.argv[1])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(dict(injected.recipe))],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "ended with its run: nothing to undo" in done.stdout
    assert proxy.impairments() == ["latency-1"]


@pytest.mark.parametrize(
    ("text", "bits_per_s"),
    [
        ("800bps", 6400),
        ("500kbps", 4e6),
        ("1mbps", 8e6),
        ("2gbps", 16e9),
        ("1.5mbit", 1.5e6),
        ("100kbit", 1e5),
        ("64bit", 64),
    ],
)
def test_rates_read_as_chaos_mesh_reads_them(text: str, bits_per_s: float) -> None:
    assert parse_rate(text) == pytest.approx(bits_per_s)


@pytest.mark.parametrize("text", ["1", "1mb", "fast", "-1mbps", "1 mbps", "1mibps"])
def test_other_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a rate like 1mbps"):
        parse_rate(text)
