"""Runs the k6 engine: one k6 process per shard, released together, read back as a measurement.

Each shard is `k6 run --paused` with its execution segment, so k6 itself splits virtual users
and arrival rates exactly. k6 initialises its virtual users and waits; when every shard reports
(through k6's REST API on a private loopback port) that it is paused before the run, all are
resumed at one instant, and the measured skew is the largest delay from that instant to a
shard's `setup()`. A stop (a cancel, an aborting threshold) stops every shard through the same
API. How k6 is started is the `launch` function's business: a plain subprocess here, or
`PipesSubprocessClient` inside a Dagster op (`defs.plan_job`).

The driver writes one line per execution to its console output, a FIFO read by one thread per
shard, which counts each execution into HDR bucket counts (service time, microseconds) and
per-second rows exactly as the native engine's shards do; only cumulative counts and the
current second stay in memory, so memory does not grow with the length of the run.

Limitations: k6 has no intended start time for an arrival, so open models report service time
only (no latency from the intended start, no late starts), and dropped starts (k6's
`dropped_iterations`) belong to no query: they are reported in the total. k6's clock for the
start of an execution is `Date.now()`, in milliseconds; service times keep k6's microseconds.
Executions cut off by a stop count as interrupted; those cut off by the end of the graceful
stop are not counted at all. Generator health (CPU, loop lag) is not measured for k6.
"""

import base64
import binascii
import contextlib
import json
import math
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from crucible_dagster.engine import histogram
from crucible_dagster.engine.intervals import IntervalRow, IntervalWriter
from crucible_dagster.engine.model import (
    LoadShape,
    Measurement,
    Progress,
    QueryMeasurement,
    ShardResult,
)
from crucible_dagster.errors import RunError
from crucible_dagster.k6.script import execution_segments

INPUT_ENV = "CRUCIBLE_K6_INPUT"
PASSWORD_ENV = "CRUCIBLE_K6_PASSWORD"
SUMMARY_ENV = "CRUCIBLE_K6_SUMMARY"
SHARD_ENV = "CRUCIBLE_K6_SHARD"
PIPES_MESSAGES_ENV = "CRUCIBLE_PIPES_MESSAGES"
DRIVER_SCRIPT = Path(__file__).resolve().parents[2] / "k6_driver" / "crucible.js"
# k6's execution status while paused before the run (lib/execution.go: PausedBeforeRun).
PAUSED_BEFORE_RUN = 4
# The shared start instant lies this far ahead of the decision, so every resume is sent in time.
START_LEAD_S = 0.2
READY_POLL_S = 0.1
# k6 needs a moment past the schedule to run teardown and handleSummary.
WIND_DOWN_S = 30.0
# How long the reader may take to reach the end of the stream once k6 has exited.
READER_END_S = 10.0
# How long a stopped k6 may take to exit before it is killed.
STOP_WAIT_S = 10.0
LOG_TAIL = 2000
_END = b"\x00crucible-end\n"


@dataclass(frozen=True)
class K6Command:
    """One k6 process to start: its argument vector, environment and where it logs."""

    shard: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path


@dataclass(frozen=True)
class K6Exit:
    """How a k6 process ended."""

    code: int


Launch = Callable[[K6Command], K6Exit]
"""Starts k6 and blocks until it exits; called from one thread per shard."""


@dataclass(frozen=True)
class K6Settings:
    """What the k6 engine needs beyond the workload: the binary, the SUT password, live metrics
    by Prometheus remote write (with `tags` on every sample), and how to start k6."""

    k6_binary: Path
    password: str = field(repr=False)
    remote_write_url: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    launch: "Launch | None" = None
    ready_timeout_s: float = 60.0
    # What the transport needs in k6's environment (a CA file); never the password.
    env: Mapping[str, str] = field(default_factory=dict)


def run_k6_load(
    driver_input: dict[str, Any],
    shape: LoadShape,
    settings: K6Settings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
    intervals_path: Path | None = None,
    on_interval: Callable[[int, int, Sequence[IntervalRow]], None] | None = None,
    on_start: Callable[[float], None] | None = None,
) -> Measurement:
    """Runs `driver_input` (from `script.driver_input`) in `shape.shards` k6 processes and
    returns the merged measurement; the same contract as the native engine's `run_load`."""
    run = _K6Run(driver_input, shape, settings, on_progress, stop, intervals_path, on_interval,
                 on_start=on_start)  # fmt: skip
    return run.execute()


def local_launch(command: K6Command) -> K6Exit:
    """Runs k6 as a plain subprocess in its own session; a failure to start is a RunError."""
    with command.log_path.open("ab") as log:
        try:
            process = subprocess.Popen(
                command.argv,
                env=dict(command.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as error:
            raise RunError(f"could not start k6 ({command.argv[0]}): {error}") from error
        try:
            return K6Exit(process.wait())
        finally:
            if process.poll() is None:  # this thread was interrupted: no k6 outlives the run
                process.kill()
                process.wait()


class _Reader:
    """Reads one shard's execution lines and counts them; runs in its own thread."""

    def __init__(self, shard: int, n: int, fifo: Path, run: "_K6Run") -> None:
        self.shard = shard
        self.n = n
        self.run = run
        self.recorders = [histogram.LatencyRecorder() for _ in range(n)]
        self.counts = [0] * n
        self.errors = [0] * n
        self.interrupted = [0] * n
        self.kinds: list[dict[str, int]] = [{} for _ in range(n)]
        self.first_errors: list[str | None] = [None] * n
        self.completed = 0  # warm-up included, for progress
        self.failed = 0
        self.setup_ms: float | None = None
        self.bad_lines = 0
        self.second = 0
        self.interval = _Interval(n)
        # Opened read-write, so opening never blocks and k6 closing it is not an end of file:
        # the end is the marker written once k6 has exited.
        self.fd = os.open(fifo, os.O_RDWR)
        self.closed = False
        self.thread = threading.Thread(target=self._read, name=f"k6-reader-{shard}", daemon=True)
        self.thread.start()

    def finish(self) -> bool:
        """Ends the stream once k6 has exited; False when it did not end in time (another
        process read the FIFO and took the end marker)."""
        if self.closed:
            return True
        os.write(self.fd, _END)
        self.thread.join(timeout=READER_END_S)
        self.closed = True
        os.close(self.fd)
        return not self.thread.is_alive()

    def _read(self) -> None:
        with os.fdopen(os.dup(self.fd), "rb", buffering=1 << 16) as stream:
            for raw in stream:
                if raw == _END:
                    break
                self._line(raw)
        self._send_interval()

    def _line(self, raw: bytes) -> None:
        # k6 writes console lines as logrus text: time="..." level=info msg="<our text>"
        start = raw.find(b'msg="')
        if start < 0:
            return
        end = raw.rfind(b'"')
        fields = raw[start + 5 : end].split()
        try:
            if fields[0] == b"S":
                self.setup_ms = float(fields[1])
                return
            if fields[0] == b"E":
                q = int(fields[1])
                if self.first_errors[q] is None:
                    self.first_errors[q] = base64.b64decode(fields[2]).decode("utf-8", "replace")
                return
            q, started_ms, service_ms = int(fields[0]), float(fields[1]), float(fields[2])
        except (IndexError, ValueError, binascii.Error):
            self.bad_lines += 1
            return
        failed = len(fields) > 3
        if failed and fields[3] == b"interrupted":
            # Cut off by a stop: counted apart, as the native engine counts it.
            if self.run.measured_from_ms <= started_ms < self.run.hold_end_ms:
                self.interrupted[q] += 1
            return
        self.completed += 1
        self.failed += failed
        run = self.run
        if not run.measured_from_ms <= started_ms < run.hold_end_ms:
            return  # warm-up, or after the schedule
        ended_s = (started_ms + service_ms - run.measured_from_ms) / 1000.0
        while ended_s >= self.second + 1:
            self._send_interval()
            self.second += 1
            self.interval = _Interval(self.n)
        self.counts[q] += 1
        self.interval.count[q] += 1
        if failed:
            self.errors[q] += 1
            self.interval.errors[q] += 1
            kind = fields[3].decode("ascii", "replace")
            self.kinds[q][kind] = self.kinds[q].get(kind, 0) + 1
            return
        value_us = min(max(round(service_ms * 1000), 0), histogram.MAX_TRACKABLE_US)
        index = histogram.counts_index(value_us)
        self.recorders[q].counts[index] += 1
        service = self.interval.service[q]
        service[index] = service.get(index, 0) + 1

    def _send_interval(self) -> None:
        if any(self.interval.count):
            self.run.intervals.put((self.shard, self.second, self.interval.rows()))


class _Interval:
    __slots__ = ("count", "errors", "service")

    def __init__(self, n: int) -> None:
        self.count = [0] * n
        self.errors = [0] * n
        self.service: list[dict[int, int]] = [{} for _ in range(n)]

    def rows(self) -> list[IntervalRow]:
        return [
            IntervalRow(c, e, 0, s, {})
            for c, e, s in zip(self.count, self.errors, self.service, strict=True)
        ]


@dataclass
class _Shard:
    shard: int
    port: int
    command: K6Command
    reader: _Reader
    summary_path: Path
    exit: K6Exit | None = None
    failure: BaseException | None = None
    thread: threading.Thread | None = None


class _K6Run:
    def __init__(
        self,
        driver_input: dict[str, Any],
        shape: LoadShape,
        settings: K6Settings,
        on_progress: Callable[[Progress], None] | None,
        stop: threading.Event | None,
        intervals_path: Path | None,
        on_interval: Callable[[int, int, Sequence[IntervalRow]], None] | None,
        *,
        only_shard: int | None = None,
        released: Callable[[], float] | None = None,
        on_start: Callable[[float], None] | None = None,
    ) -> None:
        self.on_start = on_start
        self.only_shard = only_shard
        self.released = released
        self.input = driver_input
        self.shape = shape
        self.settings = settings
        self.on_progress = on_progress
        self.stop = stop
        self.on_interval = on_interval
        self.names = [q["name"] for q in driver_input["queries"]]
        self.intervals: queue.Queue[tuple[int, int, list[IntervalRow]]] = queue.Queue()
        self.writer = (
            IntervalWriter(intervals_path, self.names, shape.shards)
            if intervals_path is not None
            else None
        )
        # Nothing is recorded until the start instant is known.
        self.measured_from_ms = math.inf
        self.hold_end_ms = -math.inf
        self.halted_at: float | None = None
        self.http = httpx.Client(timeout=5.0, trust_env=False)

    def execute(self) -> Measurement:
        with self._running() as (shards, started):
            return self._measurement(shards, started)

    def execute_shard(self) -> ShardResult:
        """Runs only `only_shard`, released by `released`, and gives its part of the result."""
        with self._running() as (shards, started):
            return self._shard_result(shards[0], started)

    @contextlib.contextmanager
    def _running(self) -> Iterator[tuple[list["_Shard"], float]]:
        work = Path(tempfile.mkdtemp(prefix="crucible-k6-"))
        shards: list[_Shard] = []
        indexes = range(self.shape.shards) if self.only_shard is None else [self.only_shard]
        try:
            input_path = work / "input.json"
            input_path.write_text(json.dumps(self.input))
            shards = [self._shard(i, work, input_path) for i in indexes]
            for shard in shards:
                shard.thread = threading.Thread(
                    target=self._launch, args=(shard,), name=f"k6-shard-{shard.shard}"
                )
                shard.thread.start()
            self._wait_until_paused(shards)
            started = self._release(shards)
            if self.on_start is not None:
                self.on_start(started)
            self._supervise(shards, started)
            yield shards, started
        finally:
            self._shut_down(shards)
            if self.writer is not None:
                self.writer.close()
            self.http.close()
            shutil.rmtree(work, ignore_errors=True)

    def _shard(self, shard: int, work: Path, input_path: Path) -> _Shard:
        sequence, segments = execution_segments(self.shape.shards)
        port = _free_port()
        fifo = work / f"executions-{shard}.fifo"
        os.mkfifo(fifo, 0o600)
        summary_path = work / f"summary-{shard}.json"
        argv = [
            str(self.settings.k6_binary),
            "run",
            "--no-usage-report",
            "--no-color",
            "--quiet",
            "--paused",
            "--address",
            f"127.0.0.1:{port}",
            "--console-output",
            str(fifo),
            "--log-output",
            f"file={work / f'k6-{shard}.log'}",
            "--execution-segment",
            segments[shard],
            "--execution-segment-sequence",
            sequence,
            "--tag",
            f"shard={shard}",
        ]
        for name, value in self.settings.tags.items():
            argv += ["--tag", f"{name}={value}"]
        # A minimal environment: no proxy variables can send requests off loopback, and the
        # password travels here rather than on the command line, where `ps` shows it.
        env = {
            **self.settings.env,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "K6_NO_USAGE_REPORT": "true",
            INPUT_ENV: str(input_path),
            PASSWORD_ENV: self.settings.password,
            SUMMARY_ENV: str(summary_path),
            SHARD_ENV: str(shard),
        }
        if self.settings.remote_write_url:
            argv += ["--out", "experimental-prometheus-rw"]
            env["K6_PROMETHEUS_RW_SERVER_URL"] = self.settings.remote_write_url
            env["K6_PROMETHEUS_RW_PUSH_INTERVAL"] = "1s"
            env["K6_PROMETHEUS_RW_TREND_STATS"] = "p(50),p(95),p(99),max"
        argv.append(str(DRIVER_SCRIPT))
        command = K6Command(shard, tuple(argv), env, work / f"k6-{shard}.log")
        reader = _Reader(shard, len(self.names), fifo, self)
        return _Shard(shard, port, command, reader, summary_path)

    def _launch(self, shard: _Shard) -> None:
        launch = self.settings.launch or local_launch
        try:
            shard.exit = launch(shard.command)
        except BaseException as error:
            shard.failure = error

    def _status(self, shard: _Shard) -> dict[str, Any] | None:
        try:
            response = self.http.get(f"http://127.0.0.1:{shard.port}/v1/status")
            response.raise_for_status()
            attributes: dict[str, Any] = response.json()["data"]["attributes"]
            return attributes
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def _patch(self, shard: _Shard, attributes: dict[str, bool]) -> bool:
        body = {"data": {"type": "status", "id": "default", "attributes": attributes}}
        try:
            self.http.patch(f"http://127.0.0.1:{shard.port}/v1/status", json=body)
            return True
        except httpx.HTTPError:
            return False

    def _wait_until_paused(self, shards: list[_Shard]) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        waiting = list(shards)
        while waiting:
            self._check_alive(shards)
            if self.stop is not None and self.stop.is_set():
                raise RunError("the run was stopped before the load started")
            waiting = [
                s for s in waiting if (self._status(s) or {}).get("status") != PAUSED_BEFORE_RUN
            ]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(str(s.shard) for s in waiting)
                raise RunError(
                    f"k6 shard(s) {names} did not get ready within "
                    f"{self.settings.ready_timeout_s:g} s; "
                    f"k6 said: {self._log_tail(waiting[0])}"
                )
            time.sleep(READY_POLL_S)

    def _release(self, shards: list[_Shard]) -> float:
        started = self.released() if self.released is not None else time.time() + START_LEAD_S
        self.measured_from_ms = (started + self.shape.warm_up_s) * 1000.0
        self.hold_end_ms = (started + self.shape.planned_s) * 1000.0

        def resume(shard: _Shard) -> None:
            time.sleep(max(0.0, started - time.time()))
            self._patch(shard, {"paused": False})

        threads = [threading.Thread(target=resume, args=(s,)) for s in shards]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return started

    def _supervise(self, shards: list[_Shard], started: float) -> None:
        deadline = started + self.shape.planned_s + self.shape.graceful_stop_s + WIND_DOWN_S
        next_report = started + 1.0
        last_completed, last_report = 0, started
        while any(s.thread is not None and s.thread.is_alive() for s in shards):
            self._drain_intervals()
            now = time.time()
            if self.halted_at is None and self.stop is not None and self.stop.is_set():
                self._halt(shards)
            if now > deadline:
                self._halt(shards)
                raise RunError(f"k6 did not finish within {deadline - started:.0f} s")
            if now >= next_report:
                completed = sum(s.reader.completed for s in shards)
                errors = sum(s.reader.failed for s in shards)
                elapsed = now - started
                qps = (completed - last_completed) / max(now - last_report, 1e-9)
                if self.on_progress is not None:
                    self.on_progress(
                        Progress(elapsed, self.shape.planned_s, 0, completed, errors, qps)
                    )
                last_completed, last_report = completed, now
                next_report = now + 1.0
            time.sleep(0.05)
        for shard in shards:
            if not shard.reader.finish():
                raise RunError(f"the execution stream of k6 shard {shard.shard} did not end: "
                               "another process read its FIFO")  # fmt: skip
            if self.writer is not None:
                self._drain_intervals()
                self.writer.shard_finished(shard.shard)
        self._drain_intervals()
        self._check_exits(shards)

    def _halt(self, shards: list[_Shard]) -> None:
        if self.halted_at is None:
            self.halted_at = time.time()
        for shard in shards:
            self._patch(shard, {"stopped": True})

    def _drain_intervals(self) -> None:
        while True:
            try:
                shard, second, rows = self.intervals.get_nowait()
            except queue.Empty:
                return
            if self.writer is not None:
                self.writer.add(shard, second, rows)
            if self.on_interval is not None:
                with contextlib.suppress(Exception):  # a listener's bug must not stop the load
                    self.on_interval(shard, second, rows)

    def _check_alive(self, shards: list[_Shard]) -> None:
        for shard in shards:
            if shard.failure is not None:
                raise RunError(f"k6 shard {shard.shard} could not run: {shard.failure}")
            if shard.exit is not None:
                raise RunError(
                    f"k6 shard {shard.shard} exited with code {shard.exit.code} before the "
                    f"load started: {self._log_tail(shard)}"
                )

    def _check_exits(self, shards: list[_Shard]) -> None:
        for shard in shards:
            if shard.failure is not None:
                raise RunError(f"k6 shard {shard.shard} failed: {shard.failure}")
            code = shard.exit.code if shard.exit is not None else None
            # 99: a k6 threshold failed (Crucible's always pass); a stop from the REST API ends
            # k6 with its own code, expected when Crucible asked for it.
            if code in (0, 99) or self.halted_at is not None:
                continue
            raise RunError(f"k6 shard {shard.shard} exited with code {code}: "
                           f"{self._log_tail(shard)}")  # fmt: skip

    def _log_tail(self, shard: _Shard) -> str:
        try:
            text = shard.command.log_path.read_text(errors="replace")[-LOG_TAIL:].strip()
        except OSError:
            text = ""
        password = self.settings.password
        if password:
            text = text.replace(password, "***")
        return text or "(no output)"

    def _measurement(self, shards: list[_Shard], started: float) -> Measurement:
        measured_from = started + self.shape.warm_up_s
        hold_end = started + self.shape.planned_s
        ended = hold_end if self.halted_at is None else min(self.halted_at, hold_end)
        ended = max(ended, measured_from)
        queries = []
        for q, name in enumerate(self.names):
            recorder = histogram.LatencyRecorder()
            for shard in shards:
                for index, count in enumerate(shard.reader.recorders[q].counts):
                    if count:
                        recorder.counts[index] += count
            kinds: dict[str, int] = {}
            for shard in shards:
                for kind, count in shard.reader.kinds[q].items():
                    kinds[kind] = kinds.get(kind, 0) + count
            queries.append(
                QueryMeasurement(
                    name=name,
                    count=sum(s.reader.counts[q] for s in shards),
                    errors=sum(s.reader.errors[q] for s in shards),
                    errors_by_kind=dict(sorted(kinds.items())),
                    interrupted=sum(s.reader.interrupted[q] for s in shards),
                    histogram=recorder.to_histogram(),
                    first_error=next(
                        (s.reader.first_errors[q] for s in shards if s.reader.first_errors[q]),
                        None,
                    ),
                )
            )
        setups = [s.reader.setup_ms for s in shards if s.reader.setup_ms is not None]
        skew = max((ms / 1000.0 - started for ms in setups), default=0.0)
        return Measurement(
            started_at=datetime.fromtimestamp(measured_from, UTC),
            ended_at=datetime.fromtimestamp(ended, UTC),
            queries=queries,
            shards=self.shape.shards,
            interrupted_by_stop=self.halted_at is not None,
            start_skew_s=max(skew, 0.0),
            dropped_unassigned=sum(_dropped(s.summary_path) for s in shards),
        )

    def _shard_result(self, shard: _Shard, started: float) -> ShardResult:
        reader = shard.reader
        setup_delay = 0.0 if reader.setup_ms is None else reader.setup_ms / 1000.0 - started
        return ShardResult(
            shard=shard.shard,
            counts=list(reader.counts),
            errors=list(reader.errors),
            errors_by_kind=[dict(sorted(kinds.items())) for kinds in reader.kinds],
            interrupted=list(reader.interrupted),
            histograms=[histogram.encode(r.to_histogram()) for r in reader.recorders],
            first_errors=list(reader.first_errors),
            start_delay_s=max(setup_delay, 0.0),
            dropped_unassigned=_dropped(shard.summary_path),
        )

    def _shut_down(self, shards: list[_Shard]) -> None:
        """No k6 outlives the run: stopped through its API, then its launch thread is awaited."""
        for shard in shards:
            if shard.thread is not None and shard.thread.is_alive():
                self._patch(shard, {"stopped": True})
        for shard in shards:
            if shard.thread is not None:
                shard.thread.join(timeout=STOP_WAIT_S)
        if any(s.thread is not None and s.thread.is_alive() for s in shards):
            # A k6 that never answered its API (stuck before the run): killed by its PID.
            for process in _k6_children(shards):
                with contextlib.suppress(psutil.Error):
                    process.kill()
            for shard in shards:
                if shard.thread is not None:
                    shard.thread.join(timeout=STOP_WAIT_S)
        for shard in shards:
            shard.reader.finish()


def _k6_children(shards: list[_Shard]) -> list[psutil.Process]:
    """This process's k6 children of these shards, found by the driver input in their argv."""
    marks = {str(s.command.argv[-1]) for s in shards}
    fifos = {a for s in shards for a in s.command.argv if a.endswith(".fifo")}
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if marks & set(argv) and fifos & set(argv):
                found.append(child)
    return found


def _dropped(summary_path: Path) -> int:
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return 0
    values = summary.get("metrics", {}).get("dropped_iterations", {}).get("values", {})
    return int(values.get("count", 0))


def _free_port() -> int:
    # Limitation: another process may take the port between this check and k6's bind; k6 then
    # fails to start its API and the run fails with k6's message.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
