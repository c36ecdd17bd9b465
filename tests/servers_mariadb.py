"""A private MariaDB server for tests: its own datadir and socket, on 127.0.0.1, stopped by PID."""

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncmy
import pytest
from pydantic import SecretStr

from crucible_dagster.local_postgres import free_port
from crucible_dagster.suts.base import SutTarget, sut_identity

MARIADBD = Path("/usr/sbin/mariadbd")
INSTALL_DB = Path("/usr/bin/mariadb-install-db")

# A password that must never show up in messages, logs or results; tests look for it.
MARIADB_PASSWORD = "canary-my-" + secrets.token_hex(8)


@dataclass
class MariaDB:
    """A running server: root with `password` over TCP on 127.0.0.1:`port`."""

    port: int
    pid: int
    base_dir: Path
    socket_path: Path
    password: str
    version: str = ""
    user: str = "root"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "error.log"

    def target(self, database: str, sut_type: str = "mariadb", **settings: object) -> SutTarget:
        identity = sut_identity(sut_type, self.host, self.port, database)
        options: dict[str, object] = {"password": SecretStr(self.password)} | settings
        return SutTarget(identity, self.user, **options)  # type: ignore[arg-type]

    async def execute(self, sql: str, args: tuple[object, ...] | None = None) -> list[tuple]:
        """Runs one statement as root over the private socket and returns its rows."""
        conn = await asyncmy.connect(
            unix_socket=str(self.socket_path), user="root", password=self.password, autocommit=True
        )
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql, args)
                return list(await cursor.fetchall())
        finally:
            await conn.ensure_closed()

    def query(self, sql: str, args: tuple[object, ...] | None = None) -> list[tuple]:
        return asyncio.run(self.execute(sql, args))

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (a clean shutdown) to the server's own PID, then SIGKILL if it lingers."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def mariadb_available() -> bool:
    return MARIADBD.is_file() and INSTALL_DB.is_file()


def start_mariadb(
    base_dir: Path,
    password: str = MARIADB_PASSWORD,
    timeout_s: float = 30.0,
    extra_args: tuple[str, ...] = (),
) -> MariaDB:
    """Initialises a datadir under `base_dir`, starts mariadbd on a free loopback port and sets
    the root password; the server accepts TCP on 127.0.0.1 only. `extra_args` are more server
    options (`--ssl-cert=...`)."""
    base_dir = base_dir.resolve()
    data_dir = base_dir / "data"
    base_dir.mkdir(parents=True, exist_ok=True)
    if not data_dir.exists():
        done = subprocess.run(
            [
                str(INSTALL_DB),
                "--no-defaults",
                f"--datadir={data_dir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{done.stdout}\n{done.stderr}")

    port = free_port()
    socket_path = base_dir / "mariadb.sock"
    args = [
        str(MARIADBD),
        "--no-defaults",
        f"--datadir={data_dir}",
        f"--socket={socket_path}",
        f"--port={port}",
        "--skip-networking=0",
        "--bind-address=127.0.0.1",
        "--user=root",
        f"--pid-file={base_dir / 'mariadb.pid'}",
        f"--log-error={base_dir / 'error.log'}",
        "--skip-log-bin",
        "--local-infile=1",
        "--max-connections=200",
        "--innodb-buffer-pool-size=128M",
        # Durability does not matter for a throwaway test server; load speed does.
        "--innodb-flush-log-at-trx-commit=2",
        *extra_args,
    ]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    server = MariaDB(port, process.pid, base_dir, socket_path, password)
    try:
        _wait_ready(server, process, timeout_s)
        server.version = asyncio.run(_set_root_password(server))
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: MariaDB, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mariadbd exited while starting:\n{tail}")
        if server.socket_path.exists():
            return
        time.sleep(0.05)
    raise RuntimeError(f"mariadbd did not open its socket within {timeout_s:.0f} s")


async def _set_root_password(server: MariaDB) -> str:
    """Gives every root account the password (a fresh datadir has an empty one)."""
    conn = None
    for _ in range(100):
        try:
            conn = await asyncmy.connect(
                unix_socket=str(server.socket_path), user="root", password="", autocommit=True
            )
            break
        except asyncmy.errors.OperationalError as exc:
            if exc.args and exc.args[0] == 1045:  # a reused datadir already has the password
                conn = await asyncmy.connect(
                    unix_socket=str(server.socket_path),
                    user="root",
                    password=server.password,
                    autocommit=True,
                )
                break
            await asyncio.sleep(0.05)
    if conn is None:
        raise RuntimeError("mariadbd does not accept connections on its socket")
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT Host FROM mysql.user WHERE User = 'root'")
            hosts = {row[0] for row in await cursor.fetchall()}
            if "127.0.0.1" not in hosts:
                await cursor.execute("CREATE USER 'root'@'127.0.0.1'")
                hosts.add("127.0.0.1")
            for host in sorted(hosts):
                await cursor.execute(
                    "ALTER USER 'root'@%s IDENTIFIED BY %s", (host, server.password)
                )
                await cursor.execute("GRANT ALL ON *.* TO 'root'@%s WITH GRANT OPTION", (host,))
            await cursor.execute("SELECT VERSION()")
            (version,) = await cursor.fetchone()
            return str(version)
    finally:
        await conn.ensure_closed()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A real MariaDB on 127.0.0.1 with a root password; skips where MariaDB is not installed."""
    if not mariadb_available():
        pytest.skip("MariaDB server binaries (mariadbd, mariadb-install-db) are not installed")
    server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    yield server
    server.stop()
    shutil.rmtree(server.base_dir / "data", ignore_errors=True)


@pytest.fixture
def my_database(mariadb: MariaDB) -> Iterator[str]:
    """A fresh database name on the session server (not created), dropped after the test."""
    name = "t_" + secrets.token_hex(6)
    yield name
    mariadb.query(f"DROP DATABASE IF EXISTS `{name}`")
