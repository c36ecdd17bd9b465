"""Weights, sequences and typed parameters on a real PostgreSQL: what the SUT receives."""

import asyncio
from collections import Counter
from dataclasses import replace

import asyncpg
import pytest
from pydantic import SecretStr

from crucible_dagster.engine import EngineQuery, LoadShape, run_load
from crucible_dagster.engine.choice import statements
from crucible_dagster.engine.schedule import shard_seed
from crucible_dagster.errors import ValidationError
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.run import engine_query
from crucible_dagster.suts import postgresql
from crucible_dagster.suts.base import SutTarget, sut_identity
from crucible_dagster.suts.postgresql import PostgresDriver
from crucible_dagster.workload import parse_workload
from tests.conftest import PG_PASSWORD

pytestmark = pytest.mark.integration

WORKLOAD = """\
-- @type: postgresql
-- @name: record
-- @param: v {type: int, range: [1, 1000000], distribution: zipfian}
-- @param: s {type: choice, values: [O, F, P]}
-- @param: d {type: date, range: [1992-01-01, 1998-08-02]}
INSERT INTO seen (q, v, s, d) VALUES ('record', :v, :s, :d)
"""


def target(server: LocalPostgres, database: str) -> SutTarget:
    identity = sut_identity("postgresql", server.host, server.port, database)
    return SutTarget(identity, "postgres", password=SecretStr(PG_PASSWORD))


def engine_queries(text: str, weights: dict[str, float] | None = None) -> list[EngineQuery]:
    """The queries as a run hands them to the engine."""
    workload = parse_workload(text, source="w.sql", workload_id="w")
    queries = []
    for query in workload.queries:
        weight = (weights or {}).get(query.name, query.weight)
        queries.append(engine_query(query, PostgresDriver(), 1.0 if weight is None else weight))
    return queries


async def execute(server: LocalPostgres, database: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user="postgres", password=PG_PASSWORD,
        database=database,
    )  # fmt: skip
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.fixture
def seen(postgres: LocalPostgres, pg_database: str) -> str:
    asyncio.run(execute(postgres, pg_database, "CREATE TABLE seen (id bigserial PRIMARY KEY, "
                        "q text, v int, s text, d date)"))  # fmt: skip
    return pg_database


def rows_in_order(server: LocalPostgres, database: str) -> list[tuple[object, ...]]:
    records = asyncio.run(execute(server, database, "SELECT q, v, s, d FROM seen ORDER BY id"))
    asyncio.run(execute(server, database, "TRUNCATE seen"))
    return [tuple(r) for r in records]


def test_the_same_seed_sends_the_same_statements_and_another_seed_does_not(
    postgres: LocalPostgres, seen: str
) -> None:
    queries = engine_queries(WORKLOAD)

    def received(seed: int) -> list[tuple[object, ...]]:
        run_load(
            target(postgres, seen), queries, LoadShape(concurrency=1, hold_for_s=1.0, seed=seed)
        )
        return rows_in_order(postgres, seen)

    first, again, other = received(5), received(5), received(6)

    common = min(len(first), len(again))
    print(f"\nrows sent: seed 5 {len(first)} and {len(again)}, seed 6 {len(other)}")
    assert common > 100
    assert first[:common] == again[:common]
    assert other[:100] != first[:100]
    # What arrived is what the documented stream of that seed predicts, value for value.
    predicted = statements(queries, "random", shard_seed(5, 0), "0", common)  # type: ignore[arg-type]
    assert [(name, *args) for name, args in predicted] == list(first[:common])


def test_weights_share_the_executions(postgres: LocalPostgres, seen: str) -> None:
    text = (
        "-- @type: sql\n-- @name: heavy\n-- @weight: 3\nINSERT INTO seen (q) VALUES ('heavy')\n"
        "-- @name: light\nINSERT INTO seen (q) VALUES ('light')\n"
        "-- @name: never\n-- @weight: 0\nINSERT INTO seen (q) VALUES ('never')\n"
    )
    shape = LoadShape(concurrency=2, hold_for_s=1.5, shards=2, seed=1)

    measurement = run_load(target(postgres, seen), engine_queries(text), shape)

    counts = {q.name: q.count for q in measurement.queries}
    received = Counter(q for q, *_ in rows_in_order(postgres, seen))
    share = counts["heavy"] / (counts["heavy"] + counts["light"])
    print(f"\nheavy share {share:.3f} of {counts['heavy'] + counts['light']} executions")
    assert counts["never"] == 0 and received["never"] == 0
    assert abs(share - 0.75) < 0.03
    assert received["heavy"] >= counts["heavy"] and received["light"] >= counts["light"]


def test_plan_weights_override_the_workload(postgres: LocalPostgres, seen: str) -> None:
    text = (
        "-- @type: sql\n-- @name: a\n-- @weight: 3\nINSERT INTO seen (q) VALUES ('a')\n"
        "-- @name: b\nINSERT INTO seen (q) VALUES ('b')\n"
    )
    shape = LoadShape(concurrency=1, hold_for_s=1.0, seed=2)

    measurement = run_load(target(postgres, seen), engine_queries(text, {"a": 0}), shape)

    assert [q.count > 0 for q in measurement.queries] == [False, True]


def test_a_sequence_runs_each_virtual_user_through_the_queries_in_order(
    postgres: LocalPostgres, seen: str
) -> None:
    text = (
        "-- @type: sql\n-- @name: a\n-- @weight: 2\nINSERT INTO seen (q) VALUES ('a')\n"
        "-- @name: b\nINSERT INTO seen (q) VALUES ('b')\n"
    )
    shape = LoadShape(concurrency=1, hold_for_s=1.0, seed=3, query_choice="sequence")

    run_load(target(postgres, seen), engine_queries(text), shape)

    order = [q for q, *_ in rows_in_order(postgres, seen)]
    assert len(order) > 30
    assert order == (["a", "a", "b"] * len(order))[: len(order)]


def test_an_open_model_sequence_keeps_one_order_across_shards(
    postgres: LocalPostgres, seen: str
) -> None:
    text = (
        "-- @type: sql\n-- @name: a\nINSERT INTO seen (q) VALUES ('a')\n"
        "-- @name: b\nINSERT INTO seen (q) VALUES ('b')\n"
        "-- @name: c\nINSERT INTO seen (q) VALUES ('c')\n"
    )
    shape = LoadShape(
        model="constant_arrival_rate", rate=300, duration_s=2.0, shards=2,
        pre_allocated_vus=4, max_vus=4, query_choice="sequence", seed=4,
    )  # fmt: skip

    measurement = run_load(target(postgres, seen), engine_queries(text), shape)

    counts = [q.count for q in measurement.queries]
    print(f"\nopen sequence counts {counts}")
    assert sum(counts) > 500 and max(counts) - min(counts) <= 2


def test_a_parameter_of_the_wrong_type_fails_preflight_with_its_location(
    postgres: LocalPostgres, pg_database: str
) -> None:
    text = (
        "-- @type: sql\n-- @name: mismatch\n-- @param: n {type: int, range: [1, 9]}\n"
        "SELECT 1 WHERE 'x' = :n\n"
        "-- @name: fine\n-- @param: n {type: int, range: [1, 9]}\nSELECT :n::int + 1\n"
    )

    with pytest.raises(ValidationError) as caught:
        asyncio.run(postgresql.preflight(target(postgres, pg_database), engine_queries(text)))

    [problem] = caught.value.problems
    assert (problem.location.file, problem.location.line) == ("w.sql", 2)
    assert problem.message == (
        "query 'mismatch': parameter :n gives integer values, but PostgreSQL expects text "
        "there; cast it in the SQL (:n::bigint) or declare another parameter type"
    )


def test_an_integer_range_beyond_the_inferred_type_fails_preflight(
    postgres: LocalPostgres, pg_database: str
) -> None:
    text = (
        "-- @type: sql\n-- @name: wide\n-- @param: n {type: int, range: [1, 3000000000]}\n"
        "SELECT :n::int\n"
    )

    with pytest.raises(ValidationError) as caught:
        asyncio.run(postgresql.preflight(target(postgres, pg_database), engine_queries(text)))

    [problem] = caught.value.problems
    assert "ranges over [1, 3000000000], but PostgreSQL's int4 there holds" in problem.message


def test_the_suggested_cast_makes_the_query_acceptable(
    postgres: LocalPostgres, pg_database: str
) -> None:
    text = "-- @type: sql\n-- @name: fixed\n-- @param: n {type: int, range: [1, 9]}\n"
    text += "SELECT 1 WHERE '1' = :n::bigint::text\n"

    asyncio.run(postgresql.preflight(target(postgres, pg_database), engine_queries(text)))


def test_an_argument_the_driver_cannot_encode_is_counted_and_the_run_still_ends(
    postgres: LocalPostgres, pg_database: str
) -> None:
    text = "-- @type: sql\n-- @name: huge\n"
    text += "-- @param: n {type: int, range: [1, 99999999999999999999]}\nSELECT :n::numeric\n"
    queries = [replace(q, sql="SELECT $1::int8") for q in engine_queries(text)]
    shape = LoadShape(concurrency=1, hold_for_s=1.0, seed=1, graceful_stop_s=1.0)

    measurement = run_load(target(postgres, pg_database), queries, shape)

    [huge] = measurement.queries
    assert measurement.duration_s == pytest.approx(1.0, abs=0.05)
    assert huge.errors > 0
