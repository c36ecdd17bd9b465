"""The SUT lease contract against a real PostgreSQL server, in a `crucible` schema."""

import asyncio
import importlib.util
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from crucible_dagster.errors import LeaseError
from crucible_dagster.lease import LeaseStore
from crucible_dagster.local_postgres import LocalPostgres
from tests.conftest import PG_PASSWORD
from tests.unit.test_lease import SUT, LeaseContract

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The async_fallback dialect argument is deprecated"),
]

HAS_PSYCOPG2 = importlib.util.find_spec("psycopg2") is not None


def _url(postgres: LocalPostgres, database: str, password: str = PG_PASSWORD) -> str:
    if HAS_PSYCOPG2:
        return f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{postgres.port}/{database}"
    # Without psycopg2 (dagster-postgres brings it in production), asyncpg stands in through
    # SQLAlchemy's synchronous fallback, which needs an event loop set in the calling thread.
    return (
        f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{postgres.port}/{database}"
        "?async_fallback=true"
    )


@pytest.fixture
def lease_database(pg_database: str) -> Iterator[str]:
    """A fresh database for the lease tables (set up after `pg_database`, which resets the loop)."""
    if HAS_PSYCOPG2:
        yield pg_database
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield pg_database
    asyncio.set_event_loop(None)
    loop.close()


class TestLeaseOnPostgres(LeaseContract):
    @pytest.fixture
    def lease_url(self, postgres: LocalPostgres, lease_database: str) -> tuple[str, str | None]:
        return _url(postgres, lease_database), "crucible"

    @pytest.fixture
    def threads_ok(self) -> None:
        if not HAS_PSYCOPG2:
            pytest.skip("asyncpg's synchronous fallback cannot be used from several threads")


def test_lease_tables_live_in_the_crucible_schema(
    postgres: LocalPostgres, lease_database: str
) -> None:
    store = LeaseStore(_url(postgres, lease_database), schema="crucible")
    try:
        store.acquire(SUT, "run-a", "plan_a", None, wait=False, timeout_s=0)
    finally:
        store.close()

    engine = sa.create_engine(_url(postgres, lease_database))
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'crucible' ORDER BY table_name"
                )
            ).scalars()
            assert list(tables) == ["crucible_faults", "crucible_lease_waiters", "crucible_leases"]
            column_type = conn.execute(
                sa.text(
                    "SELECT data_type FROM information_schema.columns WHERE table_schema = "
                    "'crucible' AND table_name = 'crucible_leases' AND column_name = 'expires_at'"
                )
            ).scalar_one()
            assert column_type == "timestamp with time zone"
    finally:
        engine.dispose()


def test_database_errors_never_show_the_password(
    postgres: LocalPostgres, lease_database: str
) -> None:
    wrong = "wrong-" + PG_PASSWORD
    store = LeaseStore(_url(postgres, lease_database, password=wrong), schema="crucible")

    with pytest.raises(LeaseError) as raised:
        store.holder(SUT)

    assert "postgres:***@127.0.0.1" in str(raised.value)
    assert wrong not in str(raised.value) and wrong not in repr(store)
    store.close()
