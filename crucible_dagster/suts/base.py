"""What every SUT adapter shares: the SUT's identity and the settings to connect to it."""

import hashlib
import re
import ssl
from dataclasses import dataclass, field

from pydantic import SecretStr

# Port used when a plan gives none, per SUT type.
DEFAULT_PORTS: dict[str, int] = {
    "postgresql": 5432,
    "mysql": 3306,
    "mariadb": 3306,
    "doris": 9030,
    "starrocks": 9030,
    "clickhouse": 8123,
    "trino": 8080,
    "cassandra": 9042,
    "scylla": 9042,
    "duckdb": 0,
    "sqlite": 0,
}

SUT_TYPE_ALIASES: dict[str, str] = {"postgres": "postgresql"}

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "::1", "[::1]"}
_LABEL_MAX = 63
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def canonical_sut_type(sut_type: str) -> str:
    lowered = sut_type.strip().lower()
    return SUT_TYPE_ALIASES.get(lowered, lowered)


@dataclass(frozen=True)
class SutIdentity:
    """The normalised name of one SUT: two plans that reach the same database share it."""

    sut_type: str
    host: str
    port: int
    database: str

    @property
    def key(self) -> str:
        """A readable unique key, e.g. `postgresql://127.0.0.1:5432/tpch`, or for an embedded
        SUT its database file, `duckdb:///data/tpch.duckdb`."""
        if not self.host:
            return f"{self.sut_type}://{self.database}"
        return f"{self.sut_type}://{self.host}:{self.port}/{self.database}"

    @property
    def tag_value(self) -> str:
        """The key as a valid Kubernetes label value (hashed when too long), for `crucible/sut`."""
        readable = _LABEL_UNSAFE.sub(
            "-", f"{self.sut_type}.{self.host}.{self.port}.{self.database}"
        )
        readable = readable.strip("-_.")
        if len(readable) <= _LABEL_MAX:
            return readable
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:10]
        return readable[: _LABEL_MAX - len(digest) - 1].rstrip("-_.") + "-" + digest

    def __str__(self) -> str:
        return self.key


def normalise_host(host: str) -> str:
    lowered = host.strip().lower()
    if lowered.startswith("[") and lowered.endswith("]"):
        lowered = lowered[1:-1]
    if lowered in _LOOPBACK_NAMES or lowered.startswith("127."):
        return "127.0.0.1"
    return lowered


def split_host_port(host: str, port: int | None) -> tuple[str, int | None]:
    """`db:5432` → (`db`, 5432). An explicit `port` wins, as in the original plan format."""
    text = host.strip()
    if text.startswith("["):  # [::1]:5432
        closing = text.find("]")
        name, rest = text[: closing + 1], text[closing + 1 :]
        embedded = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return name, port if port is not None else embedded
    if text.count(":") == 1:
        name, _, tail = text.partition(":")
        if tail.isdigit():
            return name, port if port is not None else int(tail)
    return text, port


def host_problem(host: str) -> str | None:
    """Why `host` (with or without `:port`) cannot be connected to, or None."""
    text = host.strip()
    if text.startswith("["):
        closing = text.find("]")
        rest = text[closing + 1 :] if closing > 0 else None
        if rest is None or (rest and not rest.startswith(":")):
            return (
                f"host {host!r}: an IPv6 address in brackets is written [address] or [address]:port"
            )
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        port_text = text.partition(":")[2]
    else:
        port_text = None  # a name, an IPv4 address, or a bare IPv6 address
    if port_text is not None and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        return f"host {host!r}: the part after ':' must be a port from 1 to 65535"
    return None


def connect_address(host: str) -> str:
    """The host part of `host` as a connection wants it: `[::1]:5432` → `::1`."""
    name, _ = split_host_port(host, None)
    return name.strip().strip("[]")


def sut_identity(sut_type: str, host: str, port: int | None, database: str) -> SutIdentity:
    """Builds the normalised identity: `localhost:5432` and `127.0.0.1` are the same SUT."""
    canonical = canonical_sut_type(sut_type)
    name, explicit = split_host_port(host, port)
    resolved_port = explicit if explicit is not None else DEFAULT_PORTS.get(canonical, 0)
    return SutIdentity(canonical, normalise_host(name), resolved_port, database)


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the SUT. With `verify`, the server's certificate must chain to `ca_file` (or to the
    system's authorities) and name the host; `cert_file` and `key_file` give a client
    certificate."""

    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """The client's SSLContext; an unreadable file is an OSError naming it."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class SutTarget:
    """How to connect to a SUT. The password is a secret: it never prints or logs.

    `tls` None means a plain connection. `address` is the host as the plan wrote it (without
    brackets), which the connection uses: the identity's normalised host names the SUT, but
    `::1` is not `127.0.0.1` to a server listening on one of them, nor to a TLS certificate.
    `connect_port` replaces the identity's port for connecting, when traffic goes through a
    proxy in front of the SUT (the local chaos backend's); the identity still names the SUT.
    """

    identity: SutIdentity
    user: str
    password: SecretStr = field(default_factory=lambda: SecretStr(""))
    connect_timeout_s: float = 10.0
    statement_timeout_s: float = 60.0
    tls: TlsSettings | None = None
    address: str | None = None
    connect_port: int | None = None

    @property
    def host(self) -> str:
        """The host to connect to."""
        return self.address or self.identity.host

    @property
    def port(self) -> int:
        """The port to connect to."""
        return self.connect_port or self.identity.port

    @property
    def database(self) -> str:
        return self.identity.database


# OpenSSL's reasons when the other end answers a TLS hello in plain text.
_PLAIN_TEXT_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                       "HTTP_REQUEST", "UNKNOWN_PROTOCOL")  # fmt: skip


def tls_mismatch(error: BaseException) -> str | None:
    """Says so when `error` (or its cause) shows that the server does not speak TLS on the port
    TLS was asked for: OpenSSL's own words for it are obscure."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        text = f"{getattr(seen, 'reason', '')} {seen}"
        if isinstance(seen, ssl.SSLError | OSError) and any(r in text for r in _PLAIN_TEXT_REASONS):
            return (
                "the server did not answer in TLS; cluster_info.tls is on, but TLS is not "
                "served on this port"
            )
        seen = seen.__cause__ or seen.__context__
    return None
