"""The native engine's open models and timings against real PostgreSQL servers on loopback."""

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import uvloop
from pydantic import SecretStr

from crucible_dagster.engine import EngineQuery, LoadShape, Progress, run_load
from crucible_dagster.engine import histogram as hdr
from crucible_dagster.local_postgres import LocalPostgres, start_local_postgres
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.conftest import PG_PASSWORD
from tests.proxies import LoopbackProxy

pytestmark = pytest.mark.integration


def _target(host: str, port: int, database: str) -> SutTarget:
    identity = sut_identity("postgresql", host, port, database)
    return SutTarget(identity, "postgres", SecretStr(PG_PASSWORD))


def _query(name: str, sql: str) -> EngineQuery:
    return EngineQuery(name, sql, "workloads/test.sql", 1)


def _ms(value_us: float) -> float:
    return value_us / 1000.0


def _intervals(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL of this test's own, so pausing it cannot disturb other tests."""
    server = start_local_postgres(tmp_path / "pg", password=PG_PASSWORD)
    yield server
    server.stop()


def _pause(pid: int) -> list[psutil.Process]:
    postmaster = psutil.Process(pid)
    paused = [postmaster, *postmaster.children(recursive=True)]
    for process in paused:
        process.send_signal(signal.SIGSTOP)
    return paused


def _resume(paused: list[psutil.Process]) -> None:
    for process in paused:
        try:
            process.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            continue


def test_a_frozen_sut_shows_as_a_freeze_in_latency_not_in_service_time(
    private_postgres: LocalPostgres, tmp_path: Path
) -> None:
    shape = LoadShape(
        model="constant_arrival_rate", rate=50, duration_s=12, pre_allocated_vus=2, max_vus=20,
        seed=1,
    )  # fmt: skip
    intervals_path = tmp_path / "intervals.ndjson"
    frozen = threading.Event()
    window: list[float] = []

    def freeze_for_five_seconds() -> None:
        frozen.wait(30)
        paused = _pause(private_postgres.pid)
        try:
            window.append(time.time())
            time.sleep(5.0)
        finally:
            _resume(paused)
            window.append(time.time())

    def on_progress(progress: Progress) -> None:
        if progress.elapsed_s >= 3.0:
            frozen.set()

    freezer = threading.Thread(target=freeze_for_five_seconds)
    freezer.start()
    try:
        measurement = run_load(
            _target(private_postgres.host, private_postgres.port, "postgres"),
            [_query("one", "SELECT 1")],
            shape,
            on_progress=on_progress,
            intervals_path=intervals_path,
        )
    finally:
        frozen.set()
        freezer.join()
        _resume(_pause_targets_if_any(private_postgres.pid))
    one = measurement.queries[0]
    assert one.latency_histogram is not None

    latency_p99_ms = _ms(one.latency_histogram.get_value_at_percentile(99))
    service_p99_ms = _ms(one.histogram.get_value_at_percentile(99))
    seen = f"latency p99 {latency_p99_ms:.0f} ms, service p99 {service_p99_ms:.2f} ms"
    assert one.errors == 0, one.first_error
    assert latency_p99_ms >= 4000, seen
    assert service_p99_ms < latency_p99_ms / 10, seen  # only the 2 sessions caught mid-query waited
    assert one.late >= 10  # starts that waited for a session opened during the freeze
    assert one.dropped >= 150  # 250 starts were due in the freeze; 20 sessions took 20
    assert one.count + one.dropped + one.interrupted == 600

    seconds = _intervals(intervals_path)
    counts = [s["queries"]["one"]["count"] for s in seconds]
    assert sum(counts) == one.count
    assert sum(s["queries"]["one"]["dropped"] for s in seconds) == one.dropped
    started_s = measurement.started_at.timestamp()
    frozen_seconds = range(int(window[0] - started_s) + 1, int(window[1] - started_s))
    assert len(frozen_seconds) >= 3
    assert all(counts[t] == 0 for t in frozen_seconds), counts
    assert max(counts) >= 40  # the seconds around the freeze ran at the rate


def _pause_targets_if_any(pid: int) -> list[psutil.Process]:
    """Every process of the server, to resume whatever a failed test may have left paused."""
    try:
        postmaster = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    return [postmaster, *postmaster.children(recursive=True)]


_COARSE_SLEEP_S = 0.002


class _DelayProxy(LoopbackProxy):
    """Delivers every server-to-client chunk `delay_s` after it came."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        # uvloop relays bytes with less overhead of its own than asyncio's selector loop.
        super().__init__(upstream_port, uvloop.new_event_loop)
        self.delay_s = delay_s

    async def relay(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        await asyncio.gather(self._forward(client_r, server_w), self._delayed(server_r, client_w))

    @staticmethod
    async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clock = time.monotonic  # uvloop's loop.time() only has millisecond resolution
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    return
                # Event-loop timers round to whole milliseconds; the last stretch is slept with
                # time.sleep, which is precise to microseconds.
                if due - clock() > _COARSE_SLEEP_S:
                    await asyncio.sleep(due - clock() - _COARSE_SLEEP_S)
                if due - clock() > 0:
                    time.sleep(due - clock())
                writer.write(data)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        while data := await reader.read(65536):
            chunks.put_nowait((clock() + self.delay_s, data))
        chunks.put_nowait((0.0, b""))
        await delivery


def test_service_time_includes_a_known_network_delay_exactly(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [_query("one", "SELECT 1")]
    shape = LoadShape(concurrency=1, ramp_up_s=0.0, hold_for_s=2.0, seed=2)

    direct = run_load(_target(postgres.host, postgres.port, pg_database), queries, shape)
    with _DelayProxy(postgres.port, delay_s=0.020) as proxy:
        delayed = run_load(_target("127.0.0.1", proxy.port, pg_database), queries, shape)

    direct_p50_ms = _ms(direct.queries[0].histogram.get_value_at_percentile(50))
    delayed_p50_ms = _ms(delayed.queries[0].histogram.get_value_at_percentile(50))
    seen = f"direct p50 {direct_p50_ms:.3f} ms, via the proxy {delayed_p50_ms:.3f} ms"
    # The direct p50 at one virtual user is the generator's own overhead plus the SUT's work.
    print(f"\nlow-load overhead: {seen}")
    assert delayed.queries[0].errors == 0
    assert delayed.queries[0].count >= 50
    assert abs(delayed_p50_ms - (20.0 + direct_p50_ms)) <= 1.0, seen
    assert delayed.queries[0].latency_histogram is None  # a closed model has no intended start


def test_warm_up_is_excluded_from_counts_and_the_window(
    postgres: LocalPostgres, pg_database: str, tmp_path: Path
) -> None:
    shape = LoadShape(
        model="constant_arrival_rate", rate=20, duration_s=3, pre_allocated_vus=2, max_vus=4,
        shards=2, warm_up_s=1.0, seed=4,
    )  # fmt: skip
    intervals_path = tmp_path / "intervals.ndjson"
    released = time.time()

    measurement = run_load(
        _target(postgres.host, postgres.port, pg_database),
        [_query("one", "SELECT 1"), _query("two", "SELECT 2")],
        shape,
        intervals_path=intervals_path,
    )

    # Starts are due at k/20 s; those in [1 s, 3 s) are k = 20..59, so exactly 40 are measured.
    assert sum(q.count for q in measurement.queries) == 40
    assert all(q.errors == 0 and q.dropped == 0 for q in measurement.queries)
    assert measurement.duration_s == pytest.approx(2.0, abs=0.01)
    assert measurement.started_at.timestamp() - released >= 1.0
    seconds = _intervals(intervals_path)
    assert [s["t"] for s in seconds][:2] == [0, 1]
    for q in measurement.queries:
        assert sum(s["queries"][q.name]["count"] for s in seconds) == q.count
        merged = hdr.merge(
            hdr.decode(s["queries"][q.name]["latency_hist"])
            for s in seconds
            if s["queries"][q.name]["latency_hist"]
        )
        assert q.latency_histogram is not None
        assert merged.get_total_count() == q.latency_histogram.get_total_count() == q.count
    assert [h.shard for h in measurement.shard_health] == [0, 1]
    for health in measurement.shard_health:
        assert 0.0 < health.cpu_percent < 80.0
        assert 0.0 <= health.loop_lag_mean_ms <= health.loop_lag_max_ms < 100.0
    assert measurement.generator_bottleneck is None


def test_warm_up_of_a_closed_run_measures_only_the_window(
    postgres: LocalPostgres, pg_database: str
) -> None:
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=2.5, warm_up_s=1.0)

    measurement = run_load(
        _target(postgres.host, postgres.port, pg_database),
        [_query("nap", "SELECT pg_sleep(0.1)")],
        shape,
    )
    nap = measurement.queries[0]

    # Two sessions at ~10 naps a second each: ~30 in the 1.5 s window, ~50 with the warm-up.
    assert measurement.duration_s == pytest.approx(1.5, abs=0.01)
    assert 26 <= nap.count <= 32
    assert nap.histogram.get_total_count() == nap.count


def test_starts_beyond_max_vus_are_dropped_per_query(
    postgres: LocalPostgres, pg_database: str
) -> None:
    shape = LoadShape(
        model="constant_arrival_rate", rate=40, duration_s=2, pre_allocated_vus=2, max_vus=2,
        seed=7,
    )  # fmt: skip
    queries = [_query("nap", "SELECT pg_sleep(0.2)"), _query("quick", "SELECT 1")]

    measurement = run_load(_target(postgres.host, postgres.port, pg_database), queries, shape)
    nap, quick = measurement.queries

    assert nap.dropped > 0 and quick.dropped > 0
    assert sum(q.count + q.dropped + q.interrupted for q in measurement.queries) == 80
    assert nap.errors == quick.errors == 0
    # Two sessions, mostly napping: far fewer than 80 starts could run.
    assert nap.count + quick.count < 40
