"""Fixtures for integration tests: the S3 server, generated TPC-H data, PostgreSQL targets."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.fixtures.tpch import generate_tpch
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.storage import LocalStorage
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.conftest import PG_PASSWORD
from tests.servers_s3 import S3Server, start_s3_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on private loopback ports; `make_bucket()` gives each test its own bucket."""
    server = start_s3_server(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(
    s3_server: S3Server, crucible_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Makes Crucible's storage a fresh bucket of the S3 server for one test; its name."""
    from crucible_dagster.settings import get_settings

    bucket = s3_server.make_bucket()
    monkeypatch.setenv("CRUCIBLE_STORAGE_URL", f"s3://{bucket}/crucible")
    monkeypatch.setenv("CRUCIBLE_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    get_settings.cache_clear()
    yield bucket
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tpch_sf001(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStorage, FixtureManifest]:
    """TPC-H at scale 0.01, generated once per session into a local storage."""
    storage = LocalStorage(tmp_path_factory.mktemp("tpch-sf001"))
    return storage, generate_tpch(storage, "0.01")


@pytest.fixture
def pg_target(postgres: LocalPostgres, pg_database: str) -> SutTarget:
    """The fresh test database on the session PostgreSQL, as a SUT target."""
    identity = sut_identity("postgresql", postgres.host, postgres.port, pg_database)
    return SutTarget(identity=identity, user="postgres", password=SecretStr(PG_PASSWORD))
