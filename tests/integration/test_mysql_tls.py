"""TLS to MariaDB: a server with a private certificate authority."""

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from crucible_dagster.errors import SutError
from crucible_dagster.suts import mysql
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity
from tests.certificates import make_certificates
from tests.servers_mariadb import MARIADB_PASSWORD, MariaDB, mariadb_available, start_mariadb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
    pytest.mark.skipif(not mariadb_available(), reason="needs Debian's mariadb-server"),
]


@pytest.fixture(scope="module")
def tls_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MariaDB, Path]]:
    root = tmp_path_factory.mktemp("mariadb-tls")
    ca_file = make_certificates(root / "certs")
    certs = root / "certs"
    server = start_mariadb(
        root / "server",
        extra_args=(f"--ssl-ca={ca_file}", f"--ssl-cert={certs / 'server.crt'}",
                    f"--ssl-key={certs / 'server.key'}"),
    )  # fmt: skip
    try:
        yield server, ca_file
    finally:
        server.stop()


def target(server: MariaDB, tls: TlsSettings | None) -> SutTarget:
    identity = sut_identity("mariadb", "127.0.0.1", server.port, "")
    return SutTarget(identity, "root", SecretStr(MARIADB_PASSWORD), connect_timeout_s=5, tls=tls)


async def _cipher(sut: SutTarget) -> str:
    conn = await mysql.connect(sut, database="")
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = await cursor.fetchone()
        return str(row[1]) if row else ""
    finally:
        await mysql.close(conn)


def test_tls_with_the_servers_authority_connects_encrypted(
    tls_mariadb: tuple[MariaDB, Path],
) -> None:
    server, ca_file = tls_mariadb

    assert asyncio.run(_cipher(target(server, TlsSettings(ca_file=str(ca_file))))) != ""
    assert asyncio.run(_cipher(target(server, None))) == ""


def test_a_certificate_from_an_unknown_authority_is_refused(
    tls_mariadb: tuple[MariaDB, Path],
) -> None:
    server, _ = tls_mariadb

    with pytest.raises(SutError) as raised:
        asyncio.run(_cipher(target(server, TlsSettings())))
    assert MARIADB_PASSWORD not in str(raised.value)
    print(f"\nunknown authority: {raised.value}")


def test_tls_asked_of_a_server_without_tls_is_refused_not_downgraded(tmp_path: Path) -> None:
    server = start_mariadb(tmp_path / "plain")
    try:
        with pytest.raises(SutError) as raised:
            asyncio.run(_cipher(target(server, TlsSettings(verify=False))))
    finally:
        server.stop()
    assert MARIADB_PASSWORD not in str(raised.value)
    print(f"\nno TLS on the server: {raised.value}")
