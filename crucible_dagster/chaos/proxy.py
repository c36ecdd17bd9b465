"""Crucible's TCP proxy between the load and a SUT on this machine, and the faults it injects.

tc's netem needs a kernel module that not every machine has, so latency, jitter, bandwidth
limits and connection resets are made in userspace: the load connects to `FaultProxy`, which
relays every connection to the SUT on its own event loop and impairs the bytes on command.
`ProxyFaults` is the local chaos backend's part that drives it from a plan's `latency`,
`bandwidth` and `reset` experiments.

Limitations: latency delays only the bytes going to the SUT (one delay per round trip, not one
per direction). A direction holds at most `max_queued_bytes` while it waits, so under a long
latency a connection moves at most that much per latency (1 MiB per 50 ms by default, ample for
queries, not for bulk loads). Connections share a bandwidth limit first come, first served, not
fairly. The proxy runs in the process that starts it and ends with it.
"""

import asyncio
import concurrent.futures
import hashlib
import os
import random
import re
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar, cast

import uvloop

from crucible_dagster.chaos.base import LOCAL, ChaosError, Injected, PlannedFault
from crucible_dagster.plan.duration import Duration
from crucible_dagster.plan.models import LOCAL_PROXY_FAULTS

UP = "up"  # client to SUT
DOWN = "down"  # SUT to client

# The most one read takes from a socket; also the most one write hands to the other side.
READ_BYTES = 64 * 1024
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024

# A bandwidth limit lets this much time's worth of bytes through at once, so a limited link
# still sends in a few large writes rather than many tiny ones.
BURST_S = 0.02
MAX_BURST_BYTES = 64 * 1024
# A sleeping writer looks again this often, so that lifting a limit frees it soon.
RECHECK_S = 0.1

# SO_LINGER on with a timeout of 0: close() then sends a RST instead of a FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)

_T = TypeVar("_T")


@dataclass
class _Latency:
    latency_s: float
    jitter_s: float
    rng: random.Random

    def delay_s(self) -> float:
        if not self.jitter_s:
            return self.latency_s
        return self.latency_s + self.rng.uniform(-self.jitter_s, self.jitter_s)


@dataclass
class _Bandwidth:
    bytes_per_s: float


@dataclass
class _Reset:
    pass


_Impairment = _Latency | _Bandwidth | _Reset


class FaultProxy:
    """A TCP proxy on loopback in front of one SUT that injects named, overlapping impairments.

    `start()` runs it on an event loop in a daemon thread and returns the address clients
    connect to; the `add_*` methods, `remove` and `clear` may be called from any thread and take
    effect before they return. Each direction of a connection queues at most `max_queued_bytes`
    and stops reading from its socket while the queue is full, so memory stays bounded per
    connection whatever the link's speed or delay.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        *,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        if max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be at least 1, got {max_queued_bytes}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.max_queued_bytes = max_queued_bytes
        self._impairments: dict[str, _Impairment] = {}
        self._latencies: list[_Latency] = []
        self._rate_bytes_per_s: float | None = None
        self._resetting = False
        self._generation = 0
        self._buckets = {UP: _TokenBucket(), DOWN: _TokenBucket()}
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._connections_total = 0
        self._bytes = {UP: 0, DOWN: 0}
        self._resets = 0
        self._peak_queued_bytes = 0

    # Lifecycle

    def start(self) -> tuple[str, int]:
        """Starts listening on an ephemeral port of `listen_host`; returns (host, port)."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        loop = uvloop.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = cast(
                    asyncio.Server,
                    loop.run_until_complete(
                        loop.create_server(self._client_side, self.listen_host, 0)
                    ),
                )
            except BaseException as error:  # handed to start(), which raises it
                failure.append(error)
                ready.set()
                loop.close()
                return
            self._server = server
            name = server.sockets[0].getsockname()
            self._address = (str(name[0]), int(name[1]))
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=serve, name="crucible-fault-proxy", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise ChaosError(
                f"the fault proxy could not listen on {self.listen_host}: {failure[0]}"
            ) from failure[0]
        self._loop, self._thread = loop, thread
        assert self._address is not None
        return self._address

    def stop(self) -> None:
        """Closes the listener and every connection, and ends the proxy's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = self._server = None

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect; only known once started."""
        if self._address is None:
            raise RuntimeError("the proxy has not been started")
        return self._address

    # Impairments

    def add_latency(
        self, name: str, latency_s: float, jitter_s: float = 0.0, seed: int | None = None
    ) -> None:
        """Delays every chunk going to the SUT by `latency_s` ± a uniform `jitter_s` (never
        reordering bytes), so a request/response round trip takes about `latency_s` longer."""
        if latency_s < 0 or jitter_s < 0:
            raise ValueError(f"latency and jitter must not be negative: {latency_s}, {jitter_s}")
        self._set(name, _Latency(latency_s, jitter_s, random.Random(seed)))

    def add_bandwidth(self, name: str, bits_per_s: float) -> None:
        """Limits each direction, across all connections together, to `bits_per_s`."""
        if bits_per_s <= 0:
            raise ValueError(f"a bandwidth limit must be positive, got {bits_per_s} bit/s")
        self._set(name, _Bandwidth(bits_per_s / 8))

    def add_reset(self, name: str) -> None:
        """Resets every open connection now, and every new one while the reset stays."""
        self._set(name, _Reset())

    def remove(self, name: str) -> bool:
        """Lifts the impairment `name`; False when there was none by that name."""
        return self._on_loop(self._drop, name)

    def clear(self) -> None:
        """Lifts every impairment."""
        self._on_loop(self._drop_all)

    def impairments(self) -> list[str]:
        """The names of the impairments in place."""
        return self._on_loop(lambda: list(self._impairments))

    # Stats, counted since the proxy was made

    @property
    def connections_open(self) -> int:
        return len(self._connections)

    @property
    def connections_total(self) -> int:
        return self._connections_total

    @property
    def bytes_up(self) -> int:
        """Bytes delivered to the SUT."""
        return self._bytes[UP]

    @property
    def bytes_down(self) -> int:
        """Bytes delivered to clients."""
        return self._bytes[DOWN]

    @property
    def resets(self) -> int:
        """Connections reset by a reset impairment."""
        return self._resets

    @property
    def peak_queued_bytes(self) -> int:
        """The most bytes one direction of one connection ever held; at most max_queued_bytes."""
        return self._peak_queued_bytes

    # On the loop's thread

    def _on_loop(self, function: Callable[..., _T], *args: Any) -> _T:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or threading.current_thread() is thread:
            return function(*args)
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(function(*args))
            except BaseException as error:
                done.set_exception(error)

        loop.call_soon_threadsafe(call)
        return done.result(10)

    def _set(self, name: str, impairment: _Impairment) -> None:
        def apply() -> None:
            self._impairments[name] = impairment
            self._refresh()
            if isinstance(impairment, _Reset):
                for connection in list(self._connections):
                    self._reset(connection)

        self._on_loop(apply)

    def _drop(self, name: str) -> bool:
        found = self._impairments.pop(name, None) is not None
        self._refresh()
        return found

    def _drop_all(self) -> None:
        self._impairments.clear()
        self._refresh()

    def _refresh(self) -> None:
        impairments = self._impairments.values()
        self._latencies = [i for i in impairments if isinstance(i, _Latency)]
        rates = [i.bytes_per_s for i in impairments if isinstance(i, _Bandwidth)]
        self._rate_bytes_per_s = min(rates) if rates else None
        self._resetting = any(isinstance(i, _Reset) for i in impairments)
        self._generation += 1

    def _reset(self, connection: "_Connection") -> None:
        if not connection.was_reset:
            self._resets += 1
            connection.reset()

    def _client_side(self) -> "_Side":
        connection = _Connection(self)
        return connection.client

    def _opened(self, connection: "_Connection") -> None:
        self._connections.add(connection)
        self._connections_total += 1
        if self._resetting:
            self._reset(connection)
        else:
            connection.connecting = asyncio.get_running_loop().create_task(
                connection.connect(self.upstream_host, self.upstream_port)
            )

    def _closed(self, connection: "_Connection") -> None:
        self._connections.discard(connection)

    def _direct(self, direction: str) -> bool:
        """Whether bytes in `direction` may go straight through, with nothing to impair."""
        return self._rate_bytes_per_s is None and (direction == DOWN or not self._latencies)

    def _delay_s(self, direction: str) -> float:
        if direction == DOWN or not self._latencies:
            return 0.0
        return max(0.0, sum(latency.delay_s() for latency in self._latencies))

    def _delivered(self, direction: str, nbytes: int) -> None:
        self._bytes[direction] += nbytes

    def _queued(self, nbytes: int) -> None:
        self._peak_queued_bytes = max(self._peak_queued_bytes, nbytes)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        # Let the transports report their loss before the loop stops.
        for _ in range(3):
            await asyncio.sleep(0)
        self._connections.clear()


class _TokenBucket:
    """One direction's link, shared by all connections: `take` waits until bytes may pass."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = 0.0

    async def take(self, nbytes: int, rate: Callable[[], float | None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            bytes_per_s = rate()
            if bytes_per_s is None:
                return
            burst = _burst_bytes(bytes_per_s)
            now = loop.time()
            self.tokens = min(burst, self.tokens + (now - self.stamp) * bytes_per_s)
            self.stamp = now
            if self.tokens >= nbytes:
                self.tokens -= nbytes
                return
            await asyncio.sleep(min(RECHECK_S, (nbytes - self.tokens) / bytes_per_s))


def _burst_bytes(bytes_per_s: float) -> int:
    return int(max(1.0, min(MAX_BURST_BYTES, bytes_per_s * BURST_S)))


class _Side(asyncio.BufferedProtocol):
    """One socket of a proxied connection: the client's or the SUT's."""

    def __init__(self, connection: "_Connection", what: str) -> None:
        self.connection = connection
        self.what = what
        self.transport: asyncio.Transport | None = None
        self.outbound: _Pipe | None = None  # carries what this side sends
        self.inbound: _Pipe | None = None  # carries what this side receives
        self.lost = False
        self._buffer = bytearray(READ_BYTES)
        # What arrived before the two sides were joined, handed on once they are.
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but offer all of it.
        self.transport = cast(asyncio.Transport, transport)
        if self.what == "client":
            # Nothing is read from the client until the SUT's side is connected. uvloop starts
            # reading after this method whatever it says, so early bytes are kept as well.
            self.transport.pause_reading()
            self.connection.proxy._opened(self.connection)
        else:
            self.connection.wire()

    def get_buffer(self, sizehint: int) -> memoryview:
        room = READ_BYTES if self.outbound is None else self.outbound.room()
        return memoryview(self._buffer)[: max(1, min(READ_BYTES, room))]

    def buffer_updated(self, nbytes: int) -> None:
        if self.outbound is not None:
            self.outbound.feed(bytes(self._buffer[:nbytes]))
        else:
            self.early.append(bytes(self._buffer[:nbytes]))
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.outbound is not None:
            self.outbound.feed_eof()
        else:
            self.early_eof = True
        return True  # keep the socket open: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.connection.side_lost(self, exc)

    def pause_writing(self) -> None:
        if self.inbound is not None:
            self.inbound.writable.clear()

    def resume_writing(self) -> None:
        if self.inbound is not None:
            self.inbound.writable.set()


@dataclass(eq=False)
class _Pipe:
    """One direction of a connection: a bounded queue of chunks with their arrival times."""

    proxy: FaultProxy
    direction: str
    source: _Side
    dest: _Side
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    queued_bytes: int = 0
    last_due: float = 0.0
    eof: bool = False
    finished: bool = False
    reading_paused: bool = False
    writable: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.writable.set()

    def room(self) -> int:
        return self.proxy.max_queued_bytes - self.queued_bytes

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        proxy = self.proxy
        dest = self.dest.transport
        assert dest is not None
        idle = not self.queue and self.task is None and self.writable.is_set()
        if idle and proxy._direct(self.direction):
            dest.write(data)
            proxy._delivered(self.direction, len(data))
            return
        self.queue.append((asyncio.get_running_loop().time(), data))
        self.queued_bytes += len(data)
        proxy._queued(self.queued_bytes)
        if self.room() <= 0 and not self.reading_paused:
            self._pause_reading()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._deliver())

    def feed_eof(self) -> None:
        self.eof = True
        if not self.queue and self.task is None:
            self._finish()

    def stop(self) -> None:
        self.finished = True
        self.queue.clear()
        self.queued_bytes = 0
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _deliver(self) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        bucket = proxy._buckets[self.direction]
        try:
            while self.queue:
                arrival, data = self.queue[0]
                await self._until_due(arrival, loop)
                await self._write(data, bucket)
                self.queue.popleft()
                self.queued_bytes -= len(data)
                if self.reading_paused and self.queued_bytes <= proxy.max_queued_bytes // 2:
                    self._resume_reading()
        except (ConnectionError, OSError):
            self.source.connection.abort()
            return
        finally:
            self.task = None
        if self.eof:
            self._finish()

    async def _until_due(self, arrival: float, loop: asyncio.AbstractEventLoop) -> None:
        """Waits until the chunk that arrived at `arrival` is due. The delay is drawn when the
        chunk reaches the head of the queue and again whenever the impairments change, so that
        lifting a latency frees what it holds. Delivery times never decrease, so jitter cannot
        make bytes overtake each other."""
        proxy = self.proxy
        generation = -1
        due = arrival
        while True:
            if generation != proxy._generation:
                generation = proxy._generation
                due = max(self.last_due, arrival + proxy._delay_s(self.direction))
            wait_s = due - loop.time()
            if wait_s <= 0:
                break
            await asyncio.sleep(min(wait_s, RECHECK_S))
        self.last_due = due

    async def _write(self, data: bytes, bucket: "_TokenBucket") -> None:
        proxy = self.proxy
        dest = self.dest.transport
        assert dest is not None
        view = memoryview(data)
        while view:
            rate = proxy._rate_bytes_per_s
            piece = view[: _burst_bytes(rate)] if rate is not None else view
            await bucket.take(len(piece), lambda: proxy._rate_bytes_per_s)
            await self.writable.wait()
            if dest.is_closing():
                raise ConnectionResetError("the receiving side is gone")
            dest.write(bytes(piece))
            proxy._delivered(self.direction, len(piece))
            view = view[len(piece) :]

    def _pause_reading(self) -> None:
        transport = self.source.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
        self.reading_paused = True

    def _resume_reading(self) -> None:
        transport = self.source.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        self.reading_paused = False

    def _finish(self) -> None:
        self.finished = True
        self.source.connection.pipe_finished(self)


class _Connection:
    """A client's connection and the one the proxy opened to the SUT for it."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.connecting: asyncio.Task[None] | None = None
        self.pipes: list[_Pipe] = []
        self.was_reset = False
        self.closed = False

    async def connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.upstream, host, port)
        except OSError:
            # The SUT refused or is gone: the client sees its connection closed.
            self.connecting = None
            self.abort()
            return
        self.connecting = None
        if self.client.lost:
            self.abort()

    def wire(self) -> None:
        """Joins the two sides once the SUT's is connected, before either reads a byte."""
        up = _Pipe(self.proxy, UP, self.client, self.upstream)
        down = _Pipe(self.proxy, DOWN, self.upstream, self.client)
        self.client.outbound = self.upstream.inbound = up
        self.upstream.outbound = self.client.inbound = down
        self.pipes = [up, down]
        for chunk in self.client.early:
            up.feed(chunk)
        self.client.early.clear()
        if self.client.early_eof:
            up.feed_eof()
        client = self.client.transport
        if client is not None and not client.is_closing() and not (up.reading_paused or up.eof):
            client.resume_reading()

    def pipe_finished(self, pipe: _Pipe) -> None:
        """`pipe` delivered everything its source sent before closing."""
        dest = pipe.dest.transport
        if dest is not None and not dest.is_closing() and dest.can_write_eof():
            dest.write_eof()
        if pipe.source.lost or all(p.finished for p in self.pipes):
            self.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if side.inbound is not None:
            side.inbound.stop()
        other = self.upstream if side is self.client else self.client
        if exc is not None:
            self.abort()  # an error on one side breaks the other at once
        elif side.outbound is not None and not side.outbound.finished:
            side.outbound.feed_eof()  # deliver what is queued, then close the other side
        elif other.transport is not None and not other.transport.is_closing():
            other.transport.close()  # nothing more can pass between the two
        if self.client.lost and (self.upstream.lost or self.upstream.transport is None):
            self._done()

    def close(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()

    def abort(self) -> None:
        for pipe in self.pipes:
            pipe.stop()
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.abort()
        if self.connecting is not None:
            self.connecting.cancel()
        if self.client.transport is None or self.client.lost:
            self._done()

    def reset(self) -> None:
        """Sends a RST on both sockets and drops whatever was queued."""
        self.was_reset = True
        for side in (self.client, self.upstream):
            transport = side.transport
            if transport is not None and not transport.is_closing():
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.abort()

    def _done(self) -> None:
        if not self.closed:
            self.closed = True
            self.proxy._closed(self)


# The local backend's proxy faults

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
# As tc and Chaos Mesh read them: `bit` units count bits, `bps` units count bytes, and the
# prefixes are powers of 1000.
_RATE_BITS = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "tbps": 8e12,
}
_PARAMETERS = {"latency": ("latency", "jitter"), "bandwidth": ("rate",), "reset": ()}


def parse_rate(text: Any) -> float:
    """Bits per second of a Chaos Mesh bandwidth rate: `1mbps` (bytes), `500kbit` (bits)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a rate like 1mbps or 500kbit, got {_kind(text, 'kbit')}")
    found = _RATE.match(text.strip().lower())
    if found is None:
        raise ValueError(
            f"expected a rate like 1mbps or 500kbit, got {text!r} (units: "
            f"{', '.join(_RATE_BITS)}; bps counts bytes and bit counts bits, as in Chaos Mesh)"
        )
    bits_per_s = float(found.group(1)) * _RATE_BITS[found.group(2)]
    if bits_per_s <= 0:
        raise ValueError(f"a rate must be more than 0, got {text!r}")
    return bits_per_s


def _duration(value: Any, what: str) -> Duration:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a duration like 50ms, got {_kind(value, 'ms')}")
    try:
        return Duration(value)
    except ValueError:
        raise ValueError(f"{what} must be a duration like 50ms or 1.5s, got {value!r}") from None


def _kind(value: Any, unit: str) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return f"the number {value!r} (write it with a unit, e.g. {value}{unit})"
    return f"a {type(value).__name__}"


class ProxyFaults:
    """The local backend's `latency`, `bandwidth` and `reset` faults, made by a FaultProxy that
    this process runs in front of the SUT; `proxy` is None when the run has none."""

    name = LOCAL

    def __init__(self, proxy: FaultProxy | None) -> None:
        self.proxy = proxy

    def problems(self, fault: PlannedFault) -> list[str]:
        """The fault's parameters' problems; the proxy itself is checked on injection, since a
        plan is validated before its run puts a proxy in front of the SUT."""
        if fault.fault_type not in LOCAL_PROXY_FAULTS:
            return [
                f"the fault proxy makes only {', '.join(LOCAL_PROXY_FAULTS)} faults, "
                f"not {fault.fault_type!r}"
            ]
        try:
            _Parameters.read(fault.fault_type, fault.parameters)
        except ValueError as error:
            return [str(error)]
        return []

    def inject(self, fault: PlannedFault) -> Injected:
        found = self.problems(fault)
        if self.proxy is None:
            found.append(
                "this run has no fault proxy in front of the SUT, and a "
                f"{fault.fault_type} fault needs the load to reach the SUT through one"
            )
        elif not self.proxy.running:
            found.append("the fault proxy in front of the SUT is not running")
        if found:
            raise ChaosError(f"{fault.fault_type} fault {fault.name!r}: " + "; ".join(found))
        proxy = self.proxy
        assert proxy is not None
        parameters = _Parameters.read(fault.fault_type, fault.parameters)
        if fault.fault_type == "latency":
            assert parameters.latency is not None
            latency_s = parameters.latency.seconds
            jitter_s = parameters.jitter.seconds if parameters.jitter else 0.0
            proxy.add_latency(fault.name, latency_s, jitter_s, seed=_seed(fault))
            described = f"latency {parameters.latency}"
            if jitter_s:
                described += f" ± {parameters.jitter}"
        elif fault.fault_type == "bandwidth":
            assert parameters.rate_bits_per_s is not None
            proxy.add_bandwidth(fault.name, parameters.rate_bits_per_s)
            described = f"bandwidth {parameters.rate_text}"
        else:
            open_before = proxy.connections_open
            proxy.add_reset(fault.name)
            plural = "" if open_before == 1 else "s"
            described = f"reset of {open_before} open connection{plural} and every new one"
        host, port = proxy.address
        where = f"{proxy.upstream_host}:{proxy.upstream_port} via {host}:{port}"
        return Injected(status=f"{described} on {where}", recipe=self.planned_recipe(fault))

    def planned_recipe(self, fault: PlannedFault) -> dict[str, Any]:
        """The recipe, known before the fault goes in: the impairment's name on this proxy."""
        port = self.proxy.address[1] if self.proxy is not None and self.proxy.running else 0
        return {"backend": LOCAL, "fault": fault.fault_type, "name": fault.name,
                "proxy_pid": os.getpid(), "proxy_port": port}  # fmt: skip

    def recover(self, recipe: Mapping[str, Any]) -> str:
        missing = [key for key in ("fault", "name", "proxy_pid", "proxy_port") if key not in recipe]
        if missing:
            raise ChaosError(
                f"a fault proxy recipe needs {', '.join(missing)}; got keys {sorted(recipe)}"
            )
        fault, name, port = recipe["fault"], recipe["name"], recipe["proxy_port"]
        proxy = self.proxy
        mine = (
            recipe["proxy_pid"] == os.getpid()
            and proxy is not None
            and proxy._address is not None
            and proxy._address[1] == port
        )
        if not mine:
            return (
                f"{fault} {name!r} was made by the fault proxy on port {port} of process "
                f"{recipe['proxy_pid']}, which ended with its run: nothing to undo"
            )
        assert proxy is not None
        if proxy.remove(name):
            return f"{fault} {name!r} lifted from the fault proxy on port {port}"
        return f"{fault} {name!r} was already gone from the fault proxy on port {port}"


@dataclass(frozen=True)
class _Parameters:
    latency: Duration | None = None
    jitter: Duration | None = None
    rate_text: str = ""
    rate_bits_per_s: float | None = None

    @classmethod
    def read(cls, fault_type: str, parameters: Mapping[str, Any]) -> "_Parameters":
        accepted = _PARAMETERS[fault_type]
        unknown = sorted(str(key) for key in parameters if key not in accepted)
        if unknown:
            takes = f"takes {', '.join(accepted)}" if accepted else "takes no parameters"
            raise ValueError(
                f"unknown parameters {', '.join(unknown)}: a {fault_type} fault {takes}"
            )
        if fault_type == "latency":
            if "latency" not in parameters:
                raise ValueError("a latency fault needs parameters.latency, e.g. latency: 50ms")
            latency = _duration(parameters["latency"], "parameters.latency")
            if latency.seconds <= 0:
                raise ValueError("parameters.latency must be longer than 0s")
            jitter = None
            if "jitter" in parameters:
                jitter = _duration(parameters["jitter"], "parameters.jitter")
            return cls(latency=latency, jitter=jitter)
        if fault_type == "bandwidth":
            if "rate" not in parameters:
                raise ValueError("a bandwidth fault needs parameters.rate, e.g. rate: 1mbps")
            try:
                bits_per_s = parse_rate(parameters["rate"])
            except ValueError as error:
                raise ValueError(f"parameters.rate: {error}") from None
            return cls(rate_text=str(parameters["rate"]).strip(), rate_bits_per_s=bits_per_s)
        return cls()


def _seed(fault: PlannedFault) -> int:
    """A jitter seed that repeats with the same run and experiment."""
    digest = hashlib.sha256(f"{fault.run_id}/{fault.name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")
