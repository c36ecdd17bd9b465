"""A real S3 server for tests: SeaweedFS (`weed mini`) on loopback, stopped by its PID."""

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

from crucible_dagster.storage import S3Storage

WEED_BIN = Path(sys.executable).parent / "weed"

# Every listener weed mini opens and can be told about; each gets its own free port, so that
# parallel test sessions do not collide (the defaults are fixed numbers).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass
class S3Server:
    """A running SeaweedFS: its S3 endpoint, the credentials it accepts, and its process."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    pid: int
    data_dir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Creates a fresh bucket and returns its name."""
        bucket = name or "t-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def storage(self, bucket: str | None = None, prefix: str = "") -> S3Storage:
        """An S3Storage on a fresh bucket (or the given one)."""
        return S3Storage(
            bucket=bucket or self.make_bucket(),
            prefix=prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def stop(self) -> None:
        """SIGKILL to the process group started for the server (weed drains slowly on SIGTERM)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is picked, so the ports are distinct.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_s3_server(work_dir: Path, timeout_s: float = 30.0) -> S3Server:
    """Starts `weed mini` with private ports and data under `work_dir`; waits until S3 answers."""
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = work_dir / "data"
    data_dir.mkdir(exist_ok=True)
    access_key = "crucible-test-" + secrets.token_hex(4)
    secret_key = secrets.token_hex(16)
    config_path = work_dir / "s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config_path.write_text(json.dumps({"identities": [identity]}))
    config_path.chmod(0o600)

    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    args = [
        str(WEED_BIN),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        # Like real S3: a missing bucket is an error, not created on first upload.
        "-s3.autoCreateBucket=false",
        f"-s3.config={config_path}",
        f"-filer.localSocket={work_dir / 'filer.sock'}",
        f"-s3.localSocket={work_dir / 's3.sock'}",
        "-master.volumeSizeLimitMB=64",
    ]
    log_path = work_dir / "weed.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir, start_new_session=True
        )
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        region="us-east-1",
        pid=process.pid,
        data_dir=data_dir,
        log_path=log_path,
        ports=ports,
    )
    try:
        _wait_ready(server, process, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed mini exited while starting:\n{tail}")
        try:
            client.list_buckets()
            return
        except Exception as exc:
            last_error = exc
            time.sleep(0.2)
    raise RuntimeError(f"weed mini did not answer S3 within {timeout_s:.0f} s: {last_error}")
