"""The shipped TPC-H workload runs on PostgreSQL 18 over real scale-factor 0.01 data."""

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.workload import Query, load_workload_file
from tests.conftest import PG_PASSWORD

pytestmark = pytest.mark.integration

WORKLOAD = Path(__file__).parents[2] / "plans" / "workloads" / "tpch_postgresql.sql"
TABLES = ("region", "nation", "supplier", "part", "partsupp", "customer", "orders", "lineitem")
# Connect plus query; on an idle machine the slowest query takes about 0.15 s.
QUERY_LIMIT_S = 2.0


def _column_type(arrow_type: pa.DataType) -> str:
    # This test loads the tables itself, with the simplest faithful mapping of tpchgen's types.
    if pa.types.is_int64(arrow_type):
        return "bigint"
    if pa.types.is_int32(arrow_type):
        return "integer"
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision}, {arrow_type.scale})"
    if pa.types.is_date32(arrow_type):
        return "date"
    return "text"


async def _load(postgres: LocalPostgres, database: str, data_dir: Path) -> None:
    admin = await asyncpg.connect(postgres.dsn(), password=PG_PASSWORD)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(postgres.dsn(database), password=PG_PASSWORD)
    try:
        for table in TABLES:
            data = pq.read_table(data_dir / f"{table}.parquet")
            columns = ", ".join(f"{f.name} {_column_type(f.type)} not null" for f in data.schema)
            await conn.execute(f"CREATE TABLE {table} ({columns})")
            rows = [tuple(row.values()) for row in data.to_pylist()]
            await conn.copy_records_to_table(table, records=rows, columns=data.column_names)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def tpch_database(
    postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("tpch-sf0.01")
    tpchgen = Path(sys.executable).parent / "tpchgen-cli"
    subprocess.run(
        [str(tpchgen), "parquet", "-s", "0.01", f"--output-dir={data_dir}"],
        check=True,
        capture_output=True,
    )
    database = "tpch_" + secrets.token_hex(4)
    asyncio.run(_load(postgres, database, data_dir))
    yield database

    async def drop() -> None:
        admin = await asyncpg.connect(postgres.dsn(), password=PG_PASSWORD)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


QUERIES = load_workload_file(WORKLOAD, "tpch_postgresql").queries


def test_workload_has_the_22_tpch_queries() -> None:
    assert [q.name for q in QUERIES] == [f"q{n:02d}" for n in range(1, 23)]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.name)
def test_tpch_query_returns_rows_on_sf001(
    postgres: LocalPostgres, tpch_database: str, query: Query
) -> None:
    async def run() -> tuple[int, float]:
        conn = await asyncpg.connect(postgres.dsn(tpch_database), password=PG_PASSWORD)
        try:
            started = time.perf_counter()
            rows = await conn.fetch(query.sql)
            return len(rows), time.perf_counter() - started
        finally:
            await conn.close()

    count, elapsed_s = asyncio.run(run())

    assert count > 0
    assert elapsed_s < QUERY_LIMIT_S
