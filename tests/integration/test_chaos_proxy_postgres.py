"""The fault proxy between asyncpg and a real PostgreSQL: added latency and resets."""

import asyncio
import statistics
import time
from collections.abc import Iterator

import asyncpg
import pytest

from crucible_dagster.chaos.base import PlannedFault
from crucible_dagster.chaos.proxy import FaultProxy, ProxyFaults
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.suts.postgresql import classify_error
from tests.conftest import PG_PASSWORD

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(postgres: LocalPostgres) -> Iterator[FaultProxy]:
    with FaultProxy(postgres.host, postgres.port) as running:
        yield running


async def _connect(proxy: FaultProxy) -> asyncpg.Connection:
    host, port = proxy.address
    return await asyncpg.connect(host=host, port=port, user="postgres", password=PG_PASSWORD)


async def _median_select_1_ms(conn: asyncpg.Connection, count: int = 20) -> float:
    times_ms = []
    for _ in range(count):
        started = time.perf_counter()
        assert await conn.fetchval("SELECT 1") == 1
        times_ms.append((time.perf_counter() - started) * 1000)
    return statistics.median(times_ms)


def _fault(fault_type: str, **parameters: str) -> PlannedFault:
    return PlannedFault(
        name=f"proxy-{fault_type}",
        backend="local",
        fault_type=fault_type,
        target={},
        parameters=parameters,
        start_s=0.0,
        end_s=10.0,
        run_id="chaos_20250101-0000_0badcafe",
        sut_key="postgresql/127.0.0.1/5432/postgres",
    )


def test_latency_fault_adds_50ms_to_each_query_and_recovery_restores_it(
    proxy: FaultProxy,
) -> None:
    faults = ProxyFaults(proxy)

    async def measure() -> tuple[float, float, float]:
        conn = await _connect(proxy)
        try:
            await _median_select_1_ms(conn, 5)  # prepares and caches the statement
            base_ms = await _median_select_1_ms(conn)
            injected = faults.inject(_fault("latency", latency="50ms"))
            slowed_ms = await _median_select_1_ms(conn)
            faults.recover(injected.recipe)
            restored_ms = await _median_select_1_ms(conn)
        finally:
            await conn.close()
        return base_ms, slowed_ms, restored_ms

    base_ms, slowed_ms, restored_ms = asyncio.run(measure())
    print(f"SELECT 1 median: {base_ms:.2f} ms, {slowed_ms:.2f} ms, {restored_ms:.2f} ms")
    assert 40 <= slowed_ms - base_ms <= 90
    assert restored_ms < base_ms + 5


def test_jitter_keeps_queries_correct_and_spreads_their_latency(proxy: FaultProxy) -> None:
    proxy.add_latency("jittery", 0.02, jitter_s=0.01, seed=3)

    async def run() -> list[float]:
        conn = await _connect(proxy)
        try:
            times_ms = []
            for number in range(20):
                started = time.perf_counter()
                assert await conn.fetchval("SELECT $1::int * 2", number) == number * 2
                times_ms.append((time.perf_counter() - started) * 1000)
            return times_ms
        finally:
            await conn.close()

    times_ms = asyncio.run(run())
    assert min(times_ms) >= 10
    assert max(times_ms) - min(times_ms) >= 5


def test_reset_fails_an_open_connection_and_new_ones_work_after_recovery(
    proxy: FaultProxy,
) -> None:
    faults = ProxyFaults(proxy)

    async def run() -> str:
        conn = await _connect(proxy)
        assert await conn.fetchval("SELECT 1") == 1
        injected = faults.inject(_fault("reset"))
        try:
            await conn.fetchval("SELECT 1")
        except Exception as error:  # the kind is what the test checks
            kind = classify_error(error)
        else:
            kind = "none"
        finally:
            conn.terminate()

        # While the reset stays, new connections fail too.
        with pytest.raises((OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)):
            await _connect(proxy)

        faults.recover(injected.recipe)
        fresh = await _connect(proxy)
        try:
            assert await fresh.fetchval("SELECT 1") == 1
        finally:
            await fresh.close()
        return kind

    assert asyncio.run(run()) == "connection"
    assert proxy.resets >= 2
