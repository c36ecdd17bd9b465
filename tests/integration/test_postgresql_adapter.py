import asyncio
import re

import pytest
from pydantic import SecretStr

from crucible_dagster.engine import EngineQuery
from crucible_dagster.errors import SutError, ValidationError
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.suts import postgresql
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.conftest import PG_PASSWORD

pytestmark = pytest.mark.integration


def _target(server: LocalPostgres, database: str, password: str = PG_PASSWORD) -> SutTarget:
    identity = sut_identity("postgresql", server.host, server.port, database)
    return SutTarget(identity, "postgres", SecretStr(password), statement_timeout_s=1.5)


def test_session_carries_the_statement_timeout(postgres: LocalPostgres, pg_database: str) -> None:
    async def show() -> str:
        conn = await postgresql.connect(_target(postgres, pg_database))
        try:
            return str(await conn.fetchval("SHOW statement_timeout"))
        finally:
            await conn.close()

    assert asyncio.run(show()) == "1500ms"


def test_wrong_password_is_reported_without_the_password(
    postgres: LocalPostgres, pg_database: str
) -> None:
    target = _target(postgres, pg_database, password="not-" + PG_PASSWORD)

    with pytest.raises(SutError) as raised:
        asyncio.run(postgresql.connect(target))

    assert str(raised.value) == (
        f"postgresql://127.0.0.1:{postgres.port}/{pg_database}: "
        "authentication failed for user 'postgres'"
    )
    assert PG_PASSWORD not in str(raised.value)


def test_unknown_database_is_reported(postgres: LocalPostgres, pg_database: str) -> None:
    target = _target(postgres, pg_database)

    with pytest.raises(SutError, match="database 'no_such_db' does not exist"):
        asyncio.run(postgresql.connect(target, database="no_such_db"))


def test_preflight_accepts_valid_queries(postgres: LocalPostgres, pg_database: str) -> None:
    queries = [
        EngineQuery("one", "SELECT 1", "workloads/ok.sql", 2),
        EngineQuery("divide", "SELECT 1 / 0", "workloads/ok.sql", 5),  # fails only when run
    ]

    asyncio.run(postgresql.preflight(_target(postgres, pg_database), queries))


def test_preflight_reports_every_rejected_query_with_its_line(
    postgres: LocalPostgres, pg_database: str
) -> None:
    queries = [
        EngineQuery("good", "SELECT 1", "workloads/mixed.sql", 2),
        EngineQuery("typo", "SELEC 1", "workloads/mixed.sql", 5),
        EngineQuery("missing", "SELECT *\nFROM no_such_table", "workloads/mixed.sql", 8),
    ]

    with pytest.raises(ValidationError) as raised:
        asyncio.run(postgresql.preflight(_target(postgres, pg_database), queries))

    problems = raised.value.problems
    assert [str(p.location) for p in problems] == ["workloads/mixed.sql:5", "workloads/mixed.sql:8"]
    assert [p.field for p in problems] == ["typo", "missing"]
    assert 'syntax error at or near "SELEC"' in problems[0].message
    assert 'relation "no_such_table" does not exist' in problems[1].message
    assert "(line 2 of the query)" in problems[1].message


def test_preflight_on_an_unreachable_sut_is_a_sut_error(postgres: LocalPostgres) -> None:
    target = SutTarget(sut_identity("postgresql", "127.0.0.1", 1, "tpch"), "postgres")

    with pytest.raises(SutError, match=re.escape("cannot reach postgresql://127.0.0.1:1/tpch")):
        asyncio.run(postgresql.preflight(target, [EngineQuery("one", "SELECT 1", "w.sql", 1)]))
