"""The SUT lease contract, proved on a SQLite file; the PostgreSQL run reuses `LeaseContract`."""

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Iterator
from datetime import UTC, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from crucible_dagster.errors import LeaseError
from crucible_dagster.lease import Heartbeat, LeaseHolder, LeaseStore, SutLeaseState
from crucible_dagster.settings import get_settings
from crucible_dagster.suts.base import sut_identity

SUT = sut_identity("postgres", "localhost", None, "tpch")
OTHER_SUT = sut_identity("mysql", "db.example", 3306, "shop")

WORKERS = 8
ROUNDS = 20


def _own_event_loop() -> None:
    # A forked child must not share its parent's event loop (and its epoll instance); the
    # asyncpg-based PostgreSQL driver of the integration run would use it.
    asyncio.set_event_loop(asyncio.new_event_loop())


def _compete_in_rounds(
    url: str, schema: str | None, worker: int, barrier: Any, results: Any
) -> None:
    """One process of the round test: every round all try at once, the winner then releases."""
    _own_event_loop()
    store = LeaseStore(url, schema)
    try:
        for round_no in range(ROUNDS):
            barrier.wait(timeout=60)
            lease = store.try_acquire(SUT, f"w{worker}-r{round_no}", "race", None, ttl_s=30)
            results.put((round_no, worker, None if lease is None else lease.token))
            barrier.wait(timeout=60)
            if lease is not None:
                assert store.release(lease)
            barrier.wait(timeout=60)
    finally:
        store.close()


def _take_turns(url: str, schema: str | None, worker: int, turns: int, results: Any) -> None:
    """One process of the overlap test: waits for the lease, holds it briefly, releases it."""
    _own_event_loop()
    store = LeaseStore(url, schema)
    try:
        for turn in range(turns):
            lease = store.acquire(
                SUT, f"w{worker}-t{turn}", "turns", None, wait=True, timeout_s=60, max_poll_s=0.02
            )
            start_ns = time.monotonic_ns()
            time.sleep(0.002)
            end_ns = time.monotonic_ns()
            assert store.release(lease)
            results.put((lease.token, start_ns, end_ns))
    finally:
        store.close()


def _drain(results: Any, count: int) -> list[Any]:
    return [results.get(timeout=60) for _ in range(count)]


def _process_context() -> Any:
    # Fork where the platform has it: spawn re-imports SQLAlchemy in every child, which costs
    # seconds on a two-core machine. The parent holds no lease connection when it forks.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _run_processes(target: Any, args_per_process: list[tuple[Any, ...]]) -> None:
    context = _process_context()
    processes = [context.Process(target=target, args=args) for args in args_per_process]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * len(processes)


class LeaseContract:
    """Behaviour every lease database must show; subclasses provide `lease_url`."""

    @pytest.fixture
    def lease_url(self) -> tuple[str, str | None]:
        raise NotImplementedError

    @pytest.fixture
    def threads_ok(self) -> None:
        """Skips a test that needs the store from several threads where the driver cannot."""

    @pytest.fixture
    def store(self, lease_url: tuple[str, str | None]) -> Iterator[LeaseStore]:
        store = LeaseStore(*lease_url)
        yield store
        store.close()

    def test_second_run_on_same_sut_fails_fast_naming_the_holder(self, store: LeaseStore) -> None:
        first = store.acquire(SUT, "run-a", "plan_a", "dagster-a", wait=False, timeout_s=0)

        started = time.monotonic()
        with pytest.raises(LeaseError) as raised:
            store.acquire(SUT, "run-b", "plan_b", "dagster-b", wait=False, timeout_s=30)

        assert time.monotonic() - started < 5
        message = str(raised.value)
        assert SUT.key in message
        assert "run-a" in message and "plan_a" in message and "dagster-a" in message
        assert "since" in message and "expires" in message
        holder = store.holder(SUT)
        assert holder is not None and (holder.run_id, holder.token) == ("run-a", first.token)

    def test_waiting_run_gets_the_lease_after_the_holder_releases(self, store: LeaseStore) -> None:
        first = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)
        seen: list[LeaseHolder] = []

        def holder_finishes(holder: LeaseHolder) -> None:
            seen.append(holder)
            store.release(first)

        second = store.acquire(
            SUT, "run-b", "plan_b", None, wait=True, timeout_s=10, on_wait=holder_finishes
        )

        assert [h.run_id for h in seen] == ["run-a"]
        assert seen[0].plan == "plan_a"
        assert second.run_id == "run-b" and second.token == first.token + 1
        assert store.holder(SUT).run_id == "run-b"  # type: ignore[union-attr]

    def test_second_run_on_same_sut_waits_for_lease(
        self, store: LeaseStore, threads_ok: None
    ) -> None:
        first = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)
        releaser = threading.Timer(0.3, store.release, args=(first,))
        releaser.start()
        try:
            started = time.monotonic()
            second = store.acquire(
                SUT, "run-b", "plan_b", None, wait=True, timeout_s=10, max_poll_s=0.05
            )
        finally:
            releaser.join()

        assert 0.25 <= time.monotonic() - started < 5
        assert second.run_id == "run-b"

    def test_wait_timeout_names_the_holder(self, store: LeaseStore) -> None:
        store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)

        started = time.monotonic()
        with pytest.raises(LeaseError) as raised:
            store.acquire(SUT, "run-b", "plan_b", None, wait=True, timeout_s=0.3, max_poll_s=0.05)

        assert 0.3 <= time.monotonic() - started < 5
        message = str(raised.value)
        assert "gave up waiting" in message and SUT.key in message
        assert "run-a" in message and "plan_a" in message and "since" in message
        assert store.inventory()[0].waiters == []

    def test_expired_lease_is_taken_over_and_the_old_holder_is_fenced(
        self, store: LeaseStore
    ) -> None:
        stale = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0, ttl_s=0.2)
        time.sleep(0.3)

        successor = store.acquire(SUT, "run-b", "plan_b", None, wait=False, timeout_s=0)

        assert successor.token > stale.token
        with pytest.raises(LeaseError, match="lease lost") as raised:
            store.heartbeat(stale)
        assert "run-b" in str(raised.value)
        with pytest.raises(LeaseError, match="lease lost"):
            store.check(stale)
        assert store.release(stale) is False
        assert store.release(SUT, "run-a") is False
        assert store.holder(SUT).run_id == "run-b"  # type: ignore[union-attr]
        store.check(successor)

    def test_check_fails_on_an_expired_lease_that_nobody_took(self, store: LeaseStore) -> None:
        lease = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0, ttl_s=0.2)
        time.sleep(0.3)

        with pytest.raises(LeaseError, match="expired or was released"):
            store.check(lease)
        assert store.holder(SUT) is None

        # Nobody else held it, so the token is unchanged and a heartbeat revives it.
        store.heartbeat(lease)
        store.check(lease)

    def test_release_is_idempotent_and_tokens_keep_growing(self, store: LeaseStore) -> None:
        first = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)

        assert store.release(first) is True
        assert store.release(first) is False
        assert store.release(SUT, "run-a") is False
        assert store.holder(SUT) is None
        assert store.inventory() == []

        second = store.acquire(SUT, "run-b", "plan_b", None, wait=False, timeout_s=0)
        assert second.token == first.token + 1

    def test_same_run_reacquiring_keeps_its_token(self, store: LeaseStore) -> None:
        first = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0, ttl_s=5)
        again = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0, ttl_s=5)

        assert again.token == first.token
        assert again.expires_at >= first.expires_at
        store.check(first)
        assert store.release(first) is True

    def test_different_suts_do_not_block_each_other(self, store: LeaseStore) -> None:
        one = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)
        two = store.acquire(OTHER_SUT, "run-b", "plan_b", None, wait=False, timeout_s=0)

        assert one.token == 1 and two.token == 1
        assert store.holder(SUT).run_id == "run-a"  # type: ignore[union-attr]
        assert store.holder(OTHER_SUT).run_id == "run-b"  # type: ignore[union-attr]

    def test_same_sut_spelled_differently_shares_one_lease(self, store: LeaseStore) -> None:
        store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)
        same = sut_identity("postgresql", "127.0.0.1:5432", None, "tpch")

        assert store.try_acquire(same, "run-b", "plan_b", None) is None

    def test_release_run_frees_every_lease_of_that_run_only(self, store: LeaseStore) -> None:
        third = sut_identity("clickhouse", "ch", None, "default")
        store.acquire(SUT, "dead-run", "plan_a", None, wait=False, timeout_s=0)
        store.acquire(OTHER_SUT, "dead-run", "plan_a", None, wait=False, timeout_s=0)
        store.acquire(third, "live-run", "plan_b", None, wait=False, timeout_s=0)

        freed = store.release_run("dead-run")

        assert freed == sorted([SUT.key, OTHER_SUT.key])
        assert store.holder(SUT) is None and store.holder(OTHER_SUT) is None
        assert store.holder(third).run_id == "live-run"  # type: ignore[union-attr]
        assert store.release_run("dead-run") == []

    def test_inventory_shows_holder_and_waiters(self, store: LeaseStore) -> None:
        holder_lease = store.acquire(SUT, "run-a", "plan_a", "dagster-a", wait=False, timeout_s=0)
        store.acquire(OTHER_SUT, "run-c", "plan_c", None, wait=False, timeout_s=0)
        during_wait: list[list[SutLeaseState]] = []

        def look_then_release(_holder: LeaseHolder) -> None:
            during_wait.append(store.inventory())
            store.release(holder_lease)

        store.acquire(
            SUT, "run-b", "plan_b", None, wait=True, timeout_s=10, on_wait=look_then_release
        )

        by_key = {state.sut_key: state for state in during_wait[0]}
        assert set(by_key) == {SUT.key, OTHER_SUT.key}
        waited = by_key[SUT.key]
        assert waited.holder is not None and waited.holder.run_id == "run-a"
        assert waited.holder.dagster_run_id == "dagster-a"
        assert [(w.run_id, w.plan) for w in waited.waiters] == [("run-b", "plan_b")]
        assert waited.waiters[0].since.tzinfo is not None
        assert by_key[OTHER_SUT.key].waiters == []

        after = {state.sut_key: state for state in store.inventory()}
        assert after[SUT.key].holder.run_id == "run-b"  # type: ignore[union-attr]
        assert after[SUT.key].waiters == []

    def test_lease_times_are_utc_and_follow_the_ttl(self, store: LeaseStore) -> None:
        lease = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0, ttl_s=30)
        holder = store.holder(SUT)

        assert holder is not None
        assert holder.acquired_at.utcoffset() == timedelta(0)
        assert holder.expires_at == lease.expires_at
        assert holder.expires_at - holder.acquired_at == timedelta(seconds=30)
        assert lease.expires_at.tzinfo == UTC

    def test_heartbeat_keeps_lease_alive_past_its_ttl(
        self, store: LeaseStore, threads_ok: None
    ) -> None:
        lease = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0, ttl_s=0.3)

        with Heartbeat(store, lease, interval_s=0.05) as heartbeat:
            time.sleep(0.8)
            assert store.try_acquire(SUT, "run-b", "plan_b", None) is None
            store.check(lease)

        assert heartbeat.lost is None
        assert not heartbeat._thread.is_alive()

    def test_heartbeat_reports_loss_when_stolen_after_expiry(
        self, store: LeaseStore, threads_ok: None
    ) -> None:
        lease = store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0, ttl_s=0.2)
        losses: list[LeaseError] = []

        with Heartbeat(store, lease, interval_s=0.4, on_lost=losses.append) as heartbeat:
            time.sleep(0.25)
            thief = store.acquire(SUT, "run-b", "plan_b", None, wait=False, timeout_s=0)
            deadline = time.monotonic() + 5
            while heartbeat.lost is None and time.monotonic() < deadline:
                time.sleep(0.02)

        assert heartbeat.lost is not None and losses == [heartbeat.lost]
        assert "lease lost" in str(heartbeat.lost) and "run-b" in str(heartbeat.lost)
        with pytest.raises(LeaseError):
            heartbeat.raise_if_lost()
        store.check(thief)

    def test_concurrent_threads_exactly_one_wins_each_round(
        self, store: LeaseStore, threads_ok: None
    ) -> None:
        barrier = threading.Barrier(WORKERS)
        won: dict[int, list[int]] = {r: [] for r in range(ROUNDS)}
        failures: list[BaseException] = []

        def compete(worker: int) -> None:
            try:
                for round_no in range(ROUNDS):
                    barrier.wait(timeout=30)
                    lease = store.try_acquire(SUT, f"t{worker}-r{round_no}", "race", None)
                    if lease is not None:
                        won[round_no].append(lease.token)
                    barrier.wait(timeout=30)
                    if lease is not None:
                        store.release(lease)
                    barrier.wait(timeout=30)
            except BaseException as exc:
                failures.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=compete, args=(w,)) for w in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert failures == []
        assert [len(won[r]) for r in range(ROUNDS)] == [1] * ROUNDS
        assert [won[r][0] for r in range(ROUNDS)] == list(range(1, ROUNDS + 1))

    def test_concurrent_processes_exactly_one_wins_each_round(
        self, lease_url: tuple[str, str | None]
    ) -> None:
        context = _process_context()
        barrier = context.Barrier(WORKERS)
        results = context.Queue()

        _run_processes(
            _compete_in_rounds, [(*lease_url, w, barrier, results) for w in range(WORKERS)]
        )

        tokens_by_round: dict[int, list[int]] = {r: [] for r in range(ROUNDS)}
        for round_no, _worker, token in _drain(results, WORKERS * ROUNDS):
            if token is not None:
                tokens_by_round[round_no].append(token)
        assert [len(tokens_by_round[r]) for r in range(ROUNDS)] == [1] * ROUNDS
        assert [tokens_by_round[r][0] for r in range(ROUNDS)] == list(range(1, ROUNDS + 1))

    def test_waiting_processes_never_hold_the_lease_at_once(
        self, lease_url: tuple[str, str | None]
    ) -> None:
        turns = 5
        context = _process_context()
        results = context.Queue()

        _run_processes(_take_turns, [(*lease_url, w, turns, results) for w in range(WORKERS)])

        held = sorted(_drain(results, WORKERS * turns))
        assert [token for token, _, _ in held] == list(range(1, WORKERS * turns + 1))
        for (_, _, earlier_end), (_, later_start, _) in pairwise(held):
            assert earlier_end <= later_start


class TestLeaseOnSqlite(LeaseContract):
    @pytest.fixture
    def lease_url(self, tmp_path: Path) -> tuple[str, str | None]:
        return f"sqlite:///{tmp_path / 'leases' / 'crucible.db'}", None


def test_store_uses_crucible_home_database(crucible_home: Path) -> None:
    store = LeaseStore(get_settings().database_url)
    try:
        store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)
    finally:
        store.close()

    assert (crucible_home / "crucible.db").is_file()
    reopened = LeaseStore(get_settings().database_url)
    try:
        assert reopened.holder(SUT).run_id == "run-a"  # type: ignore[union-attr]
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("url", "schema", "expected"),
    [
        ("sqlite:///x.db", "crucible", "applies to PostgreSQL only"),
        ("sqlite://", None, "in-memory"),
        ("sqlite:///:memory:", None, "in-memory"),
        ("mysql://u:secret-pw@db/x", None, "expected a sqlite:// or postgresql:// URL"),
        ("not a url", None, "not a SQLAlchemy URL"),
    ],
)
def test_unusable_lease_database_is_refused(url: str, schema: str | None, expected: str) -> None:
    with pytest.raises(LeaseError, match=expected) as raised:
        LeaseStore(url, schema)

    assert "secret-pw" not in str(raised.value)


def test_zero_ttl_is_refused(tmp_path: Path) -> None:
    store = LeaseStore(f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(LeaseError, match="ttl_s must be > 0"):
        store.try_acquire(SUT, "run-a", "plan_a", None, ttl_s=0)
