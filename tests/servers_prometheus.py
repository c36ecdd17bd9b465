"""A real Pushgateway and a Prometheus scraping it every second, on loopback, stopped by PID."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PUSHGATEWAY_BIN = "prometheus-pushgateway"
PROMETHEUS_BIN = "prometheus"

# Where each started server writes its output, to show it when one dies while starting.
process_logs: dict[int, Path] = {}


def missing_binaries() -> list[str]:
    """The Debian binaries these servers need that are not on PATH."""
    return [name for name in (PUSHGATEWAY_BIN, PROMETHEUS_BIN) if shutil.which(name) is None]


@dataclass
class PrometheusServers:
    """A running Pushgateway and Prometheus: their URLs and process ids."""

    pushgateway_url: str
    prometheus_url: str
    pids: list[int]
    work_dir: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(self, promql: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Polls until the query returns samples; fails with the query after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            samples = self.query(promql)
            if samples or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert samples, f"no samples for {promql} within {timeout_s:.0f} s"
        return samples

    def stop(self) -> None:
        """SIGTERM to each server's own process group, SIGKILL if it lingers."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        for pid in self.pids:
            if not _reaped_within(pid, 10.0):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _reaped_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        time.sleep(0.1)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prometheus_servers(work_dir: Path, timeout_s: float = 30.0) -> PrometheusServers:
    """Starts the Pushgateway, then Prometheus scraping it; waits until both say ready."""
    work_dir.mkdir(parents=True, exist_ok=True)
    gateway_port, prometheus_port = free_port(), free_port()
    while prometheus_port == gateway_port:
        prometheus_port = free_port()
    config = work_dir / "prometheus.yml"
    # honor_labels keeps the pushed job and grouping labels instead of the scrape target's.
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{gateway_port}']\n"
    )
    servers = PrometheusServers(
        pushgateway_url=f"http://127.0.0.1:{gateway_port}",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        pids=[],
        work_dir=work_dir,
    )
    try:
        gateway = _spawn(
            [PUSHGATEWAY_BIN, f"--web.listen-address=127.0.0.1:{gateway_port}"],
            work_dir / "pushgateway.log",
            work_dir,
        )
        servers.pids.append(gateway.pid)
        _wait_ready(f"{servers.pushgateway_url}/-/ready", gateway, timeout_s)
        prometheus = _spawn(
            [
                PROMETHEUS_BIN,
                f"--config.file={config}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--storage.tsdb.retention.time=1h",
                # The k6 engine's live metrics arrive by remote write.
                "--web.enable-remote-write-receiver",
            ],
            work_dir / "prometheus.log",
            work_dir,
        )
        servers.pids.append(prometheus.pid)
        _wait_ready(f"{servers.prometheus_url}/-/ready", prometheus, timeout_s)
    except BaseException:
        servers.stop()
        raise
    return servers


def _spawn(args: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    process_logs[process.pid] = log_path
    return process


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_path = process_logs.get(process.pid)
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"server for {url} exited while starting:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last_error = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f} s: {last_error}")
