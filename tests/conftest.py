"""Fixtures shared by every test: real servers on loopback, started and stopped by PID."""

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from crucible_dagster.local_postgres import LocalPostgres, start_local_postgres

# A password that must never show up in logs, metadata or results; tests grep for it.
PG_PASSWORD = "canary-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A real PostgreSQL 18 server on 127.0.0.1 with password authentication."""
    # Not under pytest's temporary folder: another pytest session starting on this machine
    # makes that folder private to root again, and the server user would lose its data.
    root = Path(tempfile.mkdtemp(prefix="crucible-test-pg-"))
    server = start_local_postgres(root / "data", password=PG_PASSWORD)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server for one test, for faults that would hurt every other test's."""
    root = Path(tempfile.mkdtemp(prefix="crucible-test-own-pg-"))
    server = start_local_postgres(root / "data", password=PG_PASSWORD)
    yield server
    for process in server_processes(server):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.resume()  # whatever a failed test left paused
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def server_processes(server: LocalPostgres) -> list[psutil.Process]:
    """The server's postmaster and its children, as they are now."""
    try:
        main = psutil.Process(server.pid)
        return [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def paused(server: LocalPostgres) -> bool:
    """Whether any process of the server is stopped (SIGSTOP)."""
    for process in server_processes(server):
        # Children come and go (autovacuum workers, ended sessions).
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() == psutil.STATUS_STOPPED:
                return True
    return False


def answers(server: LocalPostgres) -> bool:
    """Whether the server answers a query on a new connection within a few seconds."""
    import asyncio

    async def ask() -> int:
        conn = await asyncpg.connect(server.dsn(), password=PG_PASSWORD, timeout=5)
        try:
            return int(await asyncio.wait_for(conn.fetchval("SELECT 41 + 1"), 5))
        finally:
            await conn.close()

    return asyncio.run(ask()) == 42


@pytest.fixture
def pg_database(postgres: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the session server, dropped after the test."""
    import asyncio

    name = "t_" + secrets.token_hex(6)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(
            host=postgres.host, port=postgres.port, user="postgres", password=PG_PASSWORD
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def crucible_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private CRUCIBLE_HOME (storage, lease database, Dagster instance) for one test."""
    from crucible_dagster.settings import get_settings

    home = tmp_path / "crucible-home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    monkeypatch.delenv("CRUCIBLE_STORAGE_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
