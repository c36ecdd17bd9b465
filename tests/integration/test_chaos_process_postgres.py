"""Pause, kill and restart of a real PostgreSQL by the local backend's process faults.

Each test starts its own server (the shared one must survive), and stops it at teardown by the
pid its pid file names then, which a kill or a restart has changed.
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from crucible_dagster.chaos.base import ChaosError, PlannedFault
from crucible_dagster.chaos.process import ProcessFaults
from crucible_dagster.local_postgres import SERVER_USER, LocalPostgres, start_local_postgres
from crucible_dagster.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def server(crucible_home: Path) -> Iterator[LocalPostgres]:
    # Not under pytest's temporary folder, for the reason tests/conftest.py gives.
    root = Path(tempfile.mkdtemp(prefix="crucible-test-chaos-pg-"))
    started = start_local_postgres(root / "data")
    yield started
    pid_file = started.data_dir / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split("\n")[0])
        # A failed test may leave it paused; a stopped server ignores the shutdown signal.
        # Its children come and go meanwhile, which is no failure of the test.
        with contextlib.suppress(psutil.NoSuchProcess):
            main = psutil.Process(pid)
            for process in [main, *main.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGCONT)
            LocalPostgres(data_dir=started.data_dir, port=started.port, pid=pid).stop()
    shutil.rmtree(root, ignore_errors=True)


def start_command(server: LocalPostgres) -> list[str]:
    """The server's own command line, as start_local_postgres runs it, as the server user."""
    postgres = [
        str(server.bin("postgres")),
        "-D", str(server.data_dir),
        "-p", str(server.port),
        "-c", "listen_addresses=127.0.0.1",
        "-c", f"unix_socket_directories={server.data_dir}",
        "-c", "fsync=off",
    ]  # fmt: skip
    if os.geteuid() != 0:
        return postgres
    return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--clear-groups",
            *postgres]  # fmt: skip


def fault(server: LocalPostgres, fault_type: str, **parameters: str) -> PlannedFault:
    target: dict[str, object] = {"pid_file": str(server.data_dir / "postmaster.pid")}
    if fault_type != "pause":
        target["start_command"] = start_command(server)
    return PlannedFault(
        name=f"{fault_type}-postgres",
        backend="local",
        fault_type=fault_type,
        target=target,
        parameters=parameters,
        start_s=0.0,
        end_s=10.0,
        run_id="chaos_20250101-0000_0badcafe",
        sut_key="postgresql:127.0.0.1:5432:postgres",
        sut_host=server.host,
        sut_port=server.port,
    )


def recover_elsewhere(recipe: object) -> str:
    """Recovers in a fresh Python process that knows nothing but the recipe's JSON."""
    code = (
        "import json, sys\n"
        "from crucible_dagster.chaos.process import ProcessFaults\n"
        "print(ProcessFaults().recover(json.loads(sys.argv[1])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(recipe)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return done.stdout.strip()


def postmaster_pid(server: LocalPostgres) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split("\n")[0])


async def select_one(server: LocalPostgres) -> int:
    conn = await asyncpg.connect(server.dsn(), timeout=5)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def test_paused_postgres_answers_an_open_session_only_after_recover(
    server: LocalPostgres,
) -> None:
    backend = ProcessFaults()
    planned = fault(server, "pause")
    assert backend.problems(planned) == []

    async def scenario() -> tuple[str, bool, int, float]:
        conn = await asyncpg.connect(server.dsn(), timeout=5)
        try:
            injected = await asyncio.to_thread(backend.inject, planned)
            query = asyncio.ensure_future(conn.fetchval("SELECT 1"))
            done, _ = await asyncio.wait({query}, timeout=1.5)
            blocked = not done
            resumed_at = time.monotonic()
            status = await asyncio.to_thread(recover_elsewhere, injected.recipe)
            answer = await asyncio.wait_for(query, 10)
            return status, blocked, answer, time.monotonic() - resumed_at
        finally:
            await conn.close()

    status, blocked, answer, waited_s = asyncio.run(scenario())

    assert blocked
    assert answer == 1
    assert status.startswith("resumed ")
    # The postmaster and at least the session's own backend process were stopped.
    resumed, total = (int(n) for n in status.split()[1:4:2])
    assert resumed == total >= 2
    print(f"status {status!r}; the query answered {waited_s:.2f}s after recover began")


def test_pause_recovered_twice_says_nothing_was_stopped(server: LocalPostgres) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault(server, "pause"))
    backend.recover(injected.recipe)

    status = backend.recover(injected.recipe)

    assert status.startswith("resumed 0 of ")
    assert "were not stopped" in status
    assert asyncio.run(select_one(server)) == 1


def test_killed_postgres_is_back_after_recover_with_its_start_command(
    server: LocalPostgres,
) -> None:
    backend = ProcessFaults()
    planned = fault(server, "kill", ready_timeout="30s")
    assert backend.problems(planned) == []
    old_pid = postmaster_pid(server)

    injected = backend.inject(planned)

    assert not psutil.pid_exists(old_pid)
    with pytest.raises(OSError):
        asyncio.run(select_one(server))
    status = recover_elsewhere(injected.recipe)
    assert status.startswith("start_command run (pid ")
    assert asyncio.run(select_one(server)) == 1
    assert postmaster_pid(server) != old_pid
    assert Path(injected.recipe["log_path"]).exists()
    assert "nothing to start" in backend.recover(injected.recipe)


def test_restart_stops_and_starts_postgres_within_inject(server: LocalPostgres) -> None:
    backend = ProcessFaults()
    old_pid = postmaster_pid(server)

    # PostgreSQL's SIGINT is its fast shutdown: it ends open sessions instead of waiting.
    injected = backend.inject(fault(server, "restart", stop_signal="SIGINT"))

    assert "stopped by SIGINT" in injected.status
    assert postmaster_pid(server) != old_pid
    assert asyncio.run(select_one(server)) == 1
    assert "nothing to start" in backend.recover(injected.recipe)


def test_restart_kills_a_server_that_ignores_the_stop_signal_past_stop_timeout(
    server: LocalPostgres,
) -> None:
    backend = ProcessFaults()

    async def restart_with_open_session() -> str:
        # An open session keeps PostgreSQL's smart shutdown (SIGTERM) waiting.
        conn = await asyncpg.connect(server.dsn(), timeout=5)
        try:
            planned = fault(server, "restart", stop_timeout="1s")
            return (await asyncio.to_thread(backend.inject, planned)).status
        finally:
            conn.terminate()

    status = asyncio.run(restart_with_open_session())

    assert "killed after SIGTERM left it running for 1s" in status
    assert asyncio.run(select_one(server)) == 1


def test_recover_after_restart_starts_a_server_that_went_down(server: LocalPostgres) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault(server, "restart", stop_signal="SIGINT"))
    # Down again before the window ends, by another hand.
    LocalPostgres(data_dir=server.data_dir, port=server.port, pid=postmaster_pid(server)).stop()
    time.sleep(0.5)

    status = recover_elsewhere(injected.recipe)

    assert status.startswith("start_command run (pid ")
    assert asyncio.run(select_one(server)) == 1


def test_start_command_that_fails_is_reported_with_its_log(server: LocalPostgres) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault(server, "kill"))
    broken = {**injected.recipe, "start_command": [*start_command(server), "-c", "no_such=1"]}

    with pytest.raises(ChaosError) as raised:
        backend.recover(broken)

    message = str(raised.value)
    assert "start_command exited with status" in message
    assert "no_such" in message  # PostgreSQL's complaint, from the log's tail
    assert injected.recipe["log_path"] in message
    assert backend.recover(injected.recipe).startswith("start_command run (pid ")


def test_start_command_that_never_listens_times_out(server: LocalPostgres) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault(server, "kill"))
    waiter = {**injected.recipe, "start_command": ["sleep", "3"], "ready_timeout_s": 1.0}

    with pytest.raises(ChaosError) as raised:
        backend.recover(waiter)

    assert "did not accept connections within 1s" in str(raised.value)
    assert backend.recover(injected.recipe).startswith("start_command run (pid ")
