import asyncio
import threading
import time
from collections.abc import Iterator

import asyncpg
import psutil
import pytest
from pydantic import SecretStr

from crucible_dagster.engine import (
    EngineQuery,
    LoadShape,
    Measurement,
    Progress,
    run_load,
)
from crucible_dagster.errors import RunError, SutError
from crucible_dagster.local_postgres import LocalPostgres, free_port
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.conftest import PG_PASSWORD
from tests.proxies import LoopbackProxy

pytestmark = pytest.mark.integration


def _shard_processes() -> list[psutil.Process]:
    """Child processes started by multiprocessing's spawn (not its resource tracker)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(autouse=True)
def no_shard_survives() -> Iterator[None]:
    yield
    assert _shard_processes() == []


def _target(server: LocalPostgres, database: str, **overrides: object) -> SutTarget:
    identity = sut_identity("postgresql", server.host, server.port, database)
    settings: dict[str, object] = {"password": SecretStr(PG_PASSWORD)} | overrides
    return SutTarget(identity, "postgres", **settings)  # type: ignore[arg-type]


def _query(name: str, sql: str, line: int = 1) -> EngineQuery:
    return EngineQuery(name, sql, "workloads/test.sql", line)


def _by_name(measurement: Measurement) -> dict[str, object]:
    return {q.name: q for q in measurement.queries}


def test_short_run_measures_every_query_across_two_shards(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [_query("one", "SELECT 1"), _query("series", "SELECT generate_series(1, 100)")]
    shape = LoadShape(concurrency=4, ramp_up_s=0.5, hold_for_s=2.0, shards=2, seed=3)
    progress: list[Progress] = []

    measurement = run_load(
        _target(postgres, pg_database), queries, shape, on_progress=progress.append
    )

    assert measurement.shards == 2
    assert not measurement.interrupted_by_stop
    assert measurement.duration_s == pytest.approx(2.5, abs=0.01)
    assert [q.name for q in measurement.queries] == ["one", "series"]
    for query in measurement.queries:
        assert query.count > 0
        assert query.errors == 0
        assert query.histogram.get_total_count() == query.count - query.errors
        assert query.histogram.get_value_at_percentile(50) > 0
    assert progress and progress[-1].completed > 0
    assert max(p.active_vus for p in progress) <= 4


def test_failing_query_is_counted_by_sqlstate_while_others_keep_running(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [_query("ok", "SELECT 1"), _query("divide", "SELECT 1 / (random() * 0)::int")]
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=1.5, shards=2, seed=1)

    measurement = run_load(_target(postgres, pg_database), queries, shape)
    ok, divide = measurement.queries

    assert divide.count > 0
    assert divide.errors == divide.count
    assert divide.errors_by_kind == {"22": divide.count}
    assert divide.first_error is not None and "division by zero" in divide.first_error
    assert divide.histogram.get_total_count() == 0
    assert ok.count > 0 and ok.errors == 0
    assert ok.histogram.get_total_count() == ok.count


def test_statement_longer_than_the_timeout_counts_as_timeout(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [_query("sleepy", "SELECT pg_sleep(2)")]
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=1.5, shards=1)
    target = _target(postgres, pg_database, statement_timeout_s=0.2)

    measurement = run_load(target, queries, shape)
    sleepy = measurement.queries[0]

    assert sleepy.count > 0
    assert sleepy.errors_by_kind == {"timeout": sleepy.errors}
    assert sleepy.errors == sleepy.count


def test_in_flight_queries_past_the_graceful_stop_are_interrupted(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [_query("long", "SELECT pg_sleep(20)")]
    shape = LoadShape(concurrency=3, ramp_up_s=0.0, hold_for_s=0.5, shards=1, graceful_stop_s=0.5)

    started = time.monotonic()
    measurement = run_load(_target(postgres, pg_database), queries, shape)

    assert time.monotonic() - started < 10
    long = measurement.queries[0]
    assert long.interrupted == 3
    assert long.count == 0


def test_stop_event_ends_the_run_early(postgres: LocalPostgres, pg_database: str) -> None:
    queries = [_query("one", "SELECT 1"), _query("long", "SELECT pg_sleep(20)")]
    shape = LoadShape(concurrency=4, ramp_up_s=0.0, hold_for_s=60.0, shards=2, seed=5)
    stop = threading.Event()

    def stop_after_a_second(progress: Progress) -> None:
        if progress.elapsed_s >= 1.0:
            stop.set()

    started = time.monotonic()
    measurement = run_load(
        _target(postgres, pg_database), queries, shape, on_progress=stop_after_a_second, stop=stop
    )

    assert time.monotonic() - started < 15
    assert measurement.interrupted_by_stop
    assert measurement.duration_s < 5
    one, long = measurement.queries
    assert one.count > 0
    assert long.interrupted > 0
    assert long.count == 0


def test_lost_connections_count_as_connection_errors_and_users_reconnect(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [_query("one", "SELECT 1")]
    shape = LoadShape(concurrency=3, ramp_up_s=0.0, hold_for_s=3.0, shards=1)
    load_running = threading.Event()
    sessions_after_kill: list[int] = []
    count_sessions = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'crucible' "
        "AND datname = $1 AND pid <> pg_backend_pid()"
    )

    async def kill_then_count() -> None:
        conn = await asyncpg.connect(
            host=postgres.host, port=postgres.port, user="postgres", password=PG_PASSWORD
        )
        try:
            await asyncio.to_thread(load_running.wait, 30)
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'crucible' AND datname = $1",
                pg_database,
            )
            await asyncio.sleep(1.0)
            sessions_after_kill.append(await conn.fetchval(count_sessions, pg_database))
        finally:
            await conn.close()

    def on_progress(progress: Progress) -> None:
        if progress.elapsed_s >= 0.9:
            load_running.set()

    killer = threading.Thread(target=asyncio.run, args=(kill_then_count(),))
    killer.start()
    try:
        measurement = run_load(
            _target(postgres, pg_database), queries, shape, on_progress=on_progress
        )
    finally:
        load_running.set()
        killer.join()
    one = measurement.queries[0]

    assert one.errors_by_kind.get("connection", 0) >= 1, one.first_error
    assert set(one.errors_by_kind) == {"connection"}, one.first_error
    assert sessions_after_kill == [3]
    assert one.histogram.get_total_count() == one.count - one.errors


def test_wrong_password_fails_before_any_load(postgres: LocalPostgres, pg_database: str) -> None:
    target = _target(postgres, pg_database, password=SecretStr("wrong-" + PG_PASSWORD))
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=5.0, shards=2)

    with pytest.raises(SutError, match="authentication failed for user 'postgres'") as raised:
        run_load(target, [_query("one", "SELECT 1")], shape)

    assert PG_PASSWORD not in str(raised.value)


def test_closed_port_fails_before_any_load() -> None:
    port = free_port()
    target = SutTarget(sut_identity("postgresql", "localhost", port, "tpch"), "postgres")
    shape = LoadShape(concurrency=1, ramp_up_s=0.0, hold_for_s=5.0)

    with pytest.raises(SutError) as raised:
        run_load(target, [_query("one", "SELECT 1")], shape)

    assert (
        str(raised.value) == f"cannot reach postgresql://127.0.0.1:{port}/tpch: connection refused"
    )


class _BlackHoleProxy(LoopbackProxy):
    """Once `swallow` is set, drops the SUT's replies."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.swallow = threading.Event()

    async def relay(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, drop: bool) -> None:
            while data := await r.read(65536):
                if drop and self.swallow.is_set():
                    continue
                w.write(data)
                await w.drain()

        await asyncio.gather(
            pipe(client_r, server_w, drop=False),
            pipe(server_r, client_w, drop=True),
            return_exceptions=True,
        )


def test_a_sut_that_stops_answering_times_out_on_the_client_side(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [_query("one", "SELECT 1")]
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=8.5, shards=1)

    with _BlackHoleProxy(postgres.port) as proxy:
        identity = sut_identity("postgresql", "127.0.0.1", proxy.port, pg_database)
        target = SutTarget(
            identity,
            "postgres",
            SecretStr(PG_PASSWORD),
            connect_timeout_s=1.0,
            statement_timeout_s=0.5,
        )

        def black_hole_after_a_second(progress: Progress) -> None:
            if progress.elapsed_s >= 1.0:
                proxy.swallow.set()

        measurement = run_load(target, queries, shape, on_progress=black_hole_after_a_second)
    one = measurement.queries[0]

    assert one.histogram.get_total_count() > 0  # answered before the black hole
    assert one.errors_by_kind.get("timeout") == 2
    assert one.first_error == "no answer within 5.5s (statement timeout 0.5s plus 5s)"
    # Reconnecting through the black hole cannot succeed either.
    assert one.errors_by_kind.get("connection", 0) >= 1


def test_a_shard_killed_mid_run_fails_the_run_and_leaves_no_process(
    postgres: LocalPostgres, pg_database: str
) -> None:
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=30.0, shards=2)
    killed: list[int] = []

    def kill_one_shard(progress: Progress) -> None:
        if not killed and progress.elapsed_s >= 0.5:
            victim = _shard_processes()[0]
            killed.append(victim.pid)
            victim.kill()

    started = time.monotonic()
    with pytest.raises(RunError, match=r"shard [01] exited with code -9 before reporting results"):
        run_load(
            _target(postgres, pg_database),
            [_query("one", "SELECT 1")],
            shape,
            on_progress=kill_one_shard,
        )

    assert killed
    assert time.monotonic() - started < 20
