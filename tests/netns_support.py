"""A private network namespace joined to the host by a veth pair, and a TCP echo server in it.

Names carry a random suffix and addresses come from 10.231.0.0/16, so that parallel test runs
do not meet; everything is removed when the context ends. Needs root and iproute2.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Serves every connection by echoing what it reads; prints "ready" once it listens.
_ECHO_SERVER = """
import socketserver, sys

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(4096):
            self.request.sendall(data)

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

with Server((sys.argv[1], int(sys.argv[2])), Echo) as server:
    print("ready", flush=True)
    server.serve_forever()
"""


@dataclass(frozen=True)
class PrivateNetns:
    """A namespace `name` reached from the host at `ns_address` over the veth `host_link`."""

    name: str
    host_link: str
    host_address: str
    ns_address: str


def netns_tools_missing() -> str | None:
    """Why these helpers cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    missing = [tool for tool in ("ip", "iptables") if _tool(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    return None


@contextmanager
def private_netns() -> Iterator[PrivateNetns]:
    """Creates the namespace and the veth pair; removes both afterwards."""
    suffix = secrets.token_hex(3)
    name, host_link, ns_link = f"crt-{suffix}", f"crh{suffix}", f"crn{suffix}"
    third, fourth = secrets.randbelow(256), secrets.randbelow(64) * 4
    host_address, ns_address = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        _ip("link", "set", ns_link, "netns", name)
        _ip("addr", "add", f"{host_address}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", name, "addr", "add", f"{ns_address}/30", "dev", ns_link)
        _ip("-n", name, "link", "set", ns_link, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield PrivateNetns(name, host_link, host_address, ns_address)
    finally:
        # Deleting one end of a veth pair deletes the other; the namespace takes its rules along.
        subprocess.run([_ip_path(), "link", "del", host_link], capture_output=True, check=False)
        subprocess.run([_ip_path(), "netns", "del", name], capture_output=True, check=False)


@contextmanager
def echo_server(netns: str, address: str, port: int) -> Iterator[int]:
    """Runs a TCP echo server on `address`:`port` inside `netns`; yields its pid."""
    # `ip netns exec` enters the namespace and then execs the command: the pid is the server's.
    process = subprocess.Popen(
        [
            _ip_path(),
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            _ECHO_SERVER,
            address,
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the echo server did not start: {process.stderr.read()}")  # type: ignore[union-attr]
        yield process.pid
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def iptables_listing(netns: str) -> str:
    """`iptables -L INPUT -v -x -n` inside `netns`: the rules with their packet counters."""
    done = subprocess.run(
        [_ip_path(), "netns", "exec", netns, _tool("iptables") or "iptables",
         "-L", "INPUT", "-v", "-x", "-n"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _ip_path() -> str:
    return _tool("ip") or "ip"


def _ip(*args: str) -> None:
    done = subprocess.run([_ip_path(), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
