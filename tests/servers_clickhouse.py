"""A real ClickHouse for tests: the Debian server on private loopback ports, stopped by its PID.

The Debian config is copied and rewritten: every path moves under the work directory, every
port is a free one, the server listens on 127.0.0.1 only, and the users file holds one user
with a password, allowed from 127.0.0.1 only.
"""

import contextlib
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers_s3 import free_ports

CLICKHOUSE_BIN = Path("/usr/sbin/clickhouse-server")
DEBIAN_CONFIG_DIR = Path("/etc/clickhouse-server")

# A password that must never show up in messages, logs or results; tests grep for it.
CH_PASSWORD = "canary-ch-" + secrets.token_hex(8)
CH_USER = "crucible"


@dataclass
class ClickHouseServer:
    """A running ClickHouse: where its HTTP interface listens, the user it accepts, its PID."""

    host: str
    http_port: int
    tcp_port: int
    user: str
    password: str
    pid: int
    work_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}/"

    def query(self, sql: str, database: str = "default") -> str:
        """Runs one statement over HTTP as the test user and returns the response text."""
        request = urllib.request.Request(
            f"{self.url}?database={database}",
            data=sql.encode(),
            headers={"X-ClickHouse-User": self.user, "X-ClickHouse-Key": self.password},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(exc.read().decode(errors="replace")) from None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _set(root: ET.Element, tag: str, value: str) -> None:
    element = root.find(tag)
    if element is None:
        element = ET.SubElement(root, tag)
    element.text = value


def _write_config(work_dir: Path, http_port: int, tcp_port: int, interserver_port: int) -> Path:
    config = ET.parse(DEBIAN_CONFIG_DIR / "config.xml").getroot()
    for tag in ("listen_host", "https_port", "tcp_port_secure", "graphite", "remote_servers"):
        for element in config.findall(tag):
            config.remove(element)
    ET.SubElement(config, "listen_host").text = "127.0.0.1"
    _set(config, "http_port", str(http_port))
    _set(config, "tcp_port", str(tcp_port))
    _set(config, "interserver_http_port", str(interserver_port))
    _set(config, "path", f"{work_dir}/data/")
    _set(config, "tmp_path", f"{work_dir}/tmp/")
    _set(config, "user_files_path", f"{work_dir}/user_files/")
    _set(config, "format_schema_path", f"{work_dir}/format_schemas/")
    _set(config, "users_config", str(work_dir / "users.xml"))
    logger = config.find("logger")
    assert logger is not None
    _set(logger, "level", "warning")
    _set(logger, "log", str(work_dir / "server.log"))
    _set(logger, "errorlog", str(work_dir / "server.err.log"))
    # System log tables and their flushing threads only slow a test server down.
    for tag in ("query_log", "query_thread_log", "part_log", "trace_log"):
        for element in config.findall(tag):
            config.remove(element)
    path = work_dir / "config.xml"
    ET.ElementTree(config).write(path)
    return path


def _write_users(work_dir: Path, password: str) -> None:
    users = ET.parse(DEBIAN_CONFIG_DIR / "users.xml").getroot()
    section = users.find("users")
    assert section is not None
    for element in list(section):
        section.remove(element)
    user = ET.SubElement(section, CH_USER)
    ET.SubElement(user, "password").text = password
    networks = ET.SubElement(user, "networks")
    ET.SubElement(networks, "ip").text = "127.0.0.1"
    ET.SubElement(user, "profile").text = "default"
    ET.SubElement(user, "quota").text = "default"
    path = work_dir / "users.xml"
    ET.ElementTree(users).write(path)
    path.chmod(0o600)


def start_clickhouse(work_dir: Path, timeout_s: float = 30.0) -> ClickHouseServer:
    """Starts a private ClickHouse under `work_dir`; waits until `SELECT 1` answers over HTTP."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "tmp", "user_files", "format_schemas"):
        (work_dir / sub).mkdir(exist_ok=True)
    http_port, tcp_port, interserver_port = free_ports(3)
    config = _write_config(work_dir, http_port, tcp_port, interserver_port)
    _write_users(work_dir, CH_PASSWORD)
    log_path = work_dir / "stdout.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(CLICKHOUSE_BIN), f"--config-file={config}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
            start_new_session=True,
        )
    server = ClickHouseServer(
        "127.0.0.1", http_port, tcp_port, CH_USER, CH_PASSWORD, process.pid, work_dir, log_path
    )
    try:
        _wait_ready(server, process, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(
    server: ClickHouseServer, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (server.work_dir / "server.err.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"clickhouse-server exited while starting:\n{tail}")
        try:
            if server.query("SELECT 1").strip() == "1":
                return
        except (OSError, RuntimeError) as exc:
            last_error = exc
        time.sleep(0.05)
    raise RuntimeError(f"clickhouse-server did not answer within {timeout_s:.0f} s: {last_error}")


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """A real ClickHouse 18.16 on 127.0.0.1 with a password-protected user."""
    if not CLICKHOUSE_BIN.exists():
        pytest.skip(f"{CLICKHOUSE_BIN} is not installed")
    server = start_clickhouse(tmp_path_factory.mktemp("clickhouse"))
    yield server
    server.stop()
