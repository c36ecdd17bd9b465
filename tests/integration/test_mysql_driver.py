"""The MySQL-protocol driver against a real MariaDB: sessions, preflight and the native engine."""

import asyncio
import socket
from collections.abc import Iterator
from datetime import date

import pytest
from pydantic import SecretStr

from crucible_dagster.engine import EngineQuery, LoadShape, run_load
from crucible_dagster.engine.model import EngineParam
from crucible_dagster.errors import SutError, ValidationError
from crucible_dagster.local_postgres import free_port
from crucible_dagster.params import parse_param
from crucible_dagster.suts import mysql
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.servers_mariadb import MARIADB_PASSWORD, MariaDB, mariadb, my_database

pytestmark = pytest.mark.integration
__all__ = ["mariadb", "my_database"]  # fixtures used by name below


@pytest.fixture
def database(mariadb: MariaDB, my_database: str) -> str:
    mariadb.query(f"CREATE DATABASE `{my_database}`")
    return my_database


def _query(name: str, sql: str, line: int = 1, params: tuple[EngineParam, ...] = ()) -> EngineQuery:
    return EngineQuery(name, sql, "workloads/my.sql", line, params=params)


def _connect_error(target: SutTarget) -> str:
    with pytest.raises(SutError) as error:
        asyncio.run(mysql.connect(target))
    message = str(error.value)
    assert MARIADB_PASSWORD not in message
    assert MARIADB_PASSWORD not in repr(error.value)
    return message


def test_session_connects_with_the_statement_timeout_set(mariadb: MariaDB, database: str) -> None:
    async def check() -> tuple[object, ...]:
        conn = await mysql.connect(mariadb.target(database, statement_timeout_s=0.5))
        try:
            execute = await mysql.prepare(conn, "SELECT @@max_statement_time, DATABASE()")
            rows = await execute()
            assert not mysql.is_closed(conn)
            return tuple(rows[0])  # type: ignore[index]
        finally:
            await mysql.close(conn)

    timeout, current = asyncio.run(check())
    assert float(timeout) == 0.5  # type: ignore[arg-type]
    assert current == database


def test_wrong_password_says_access_denied_without_the_password(
    mariadb: MariaDB, database: str
) -> None:
    target = mariadb.target(database, password=SecretStr("wrong-" + MARIADB_PASSWORD))
    message = _connect_error(target)
    assert "access denied for user 'root'" in message
    assert f"127.0.0.1:{mariadb.port}" in message


def test_refused_port_says_connection_refused(mariadb: MariaDB) -> None:
    target = mariadb.target("any")
    target = SutTarget(
        sut_identity("mariadb", "127.0.0.1", free_port(), "any"), "root", target.password
    )
    assert "connection refused" in _connect_error(target)


def test_unknown_database_is_named(mariadb: MariaDB) -> None:
    message = _connect_error(mariadb.target("no_such_db"))
    assert "database 'no_such_db' does not exist" in message


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections but never speaks (as a stalled server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_server_that_never_answers_times_out(mariadb: MariaDB, silent_port: int) -> None:
    target = SutTarget(
        sut_identity("mariadb", "127.0.0.1", silent_port, "any"),
        "root",
        SecretStr(MARIADB_PASSWORD),
        connect_timeout_s=0.5,
    )
    assert "no answer within 0.5s" in _connect_error(target)


def test_preflight_reports_every_rejected_query_with_file_and_line(
    mariadb: MariaDB, database: str
) -> None:
    mariadb.query(f"CREATE TABLE `{database}`.t (id INT, name VARCHAR(20))")
    queries = [
        _query("fine", "SELECT id FROM t WHERE name LIKE 'a%'", line=2),
        _query("typo", "SELEC id FROM t", line=5),
        _query("missing", "SELECT * FROM no_such_table", line=9),
        _query("bad_column", "SELECT nope FROM t", line=12),
    ]

    with pytest.raises(ValidationError) as error:
        asyncio.run(mysql.preflight(mariadb.target(database), queries))

    problems = {p.field: p for p in error.value.problems}
    assert set(problems) == {"typo", "missing", "bad_column"}
    assert str(problems["typo"].location) == "workloads/my.sql:5"
    assert "1064" in problems["typo"].message and "SELEC" in problems["typo"].message
    assert str(problems["missing"].location) == "workloads/my.sql:9"
    assert "1146" in problems["missing"].message
    assert "no_such_table" in problems["missing"].message
    assert str(problems["bad_column"].location) == "workloads/my.sql:12"
    assert MARIADB_PASSWORD not in str(error.value)


def test_preflight_accepts_valid_queries_without_running_them(
    mariadb: MariaDB, database: str
) -> None:
    mariadb.query(f"CREATE TABLE `{database}`.t (id INT, note VARCHAR(20))")
    spec = parse_param("v {type: int, range: [1, 9]}")[1]
    queries = [
        _query("insert_literal", "INSERT INTO t VALUES (1, '100%')"),
        _query(
            "insert_param", "INSERT INTO t VALUES (%s, 'x%%')", params=(EngineParam("v", spec),)
        ),
        _query("sleep", "SELECT SLEEP(5)"),
    ]

    asyncio.run(mysql.preflight(mariadb.target(database), queries))

    assert mariadb.query(f"SELECT COUNT(*) FROM `{database}`.t") == [(0,)]


def test_closed_load_over_two_shards_measures_both_queries(mariadb: MariaDB, database: str) -> None:
    queries = [
        _query("one", "SELECT 1"),
        _query("tables", "SELECT table_name FROM information_schema.tables LIMIT 20"),
    ]
    shape = LoadShape(concurrency=4, ramp_up_s=0.2, hold_for_s=1.5, shards=2, seed=3)

    measurement = run_load(mariadb.target(database), queries, shape)

    assert measurement.shards == 2
    assert [q.name for q in measurement.queries] == ["one", "tables"]
    for query in measurement.queries:
        assert query.count > 0
        assert query.errors == 0
        assert query.histogram.get_total_count() == query.count


def test_failing_query_is_counted_by_its_error_code(mariadb: MariaDB, database: str) -> None:
    queries = [_query("ok", "SELECT 1"), _query("missing", "SELECT * FROM no_such_table")]
    shape = LoadShape(concurrency=2, hold_for_s=1.0, shards=1, seed=1)

    ok, missing = run_load(mariadb.target(database), queries, shape).queries

    assert missing.count > 0
    assert missing.errors_by_kind == {"1146": missing.count}
    assert missing.first_error is not None and missing.first_error.startswith("1146: ")
    assert ok.count > 0 and ok.errors == 0


def test_statement_past_the_timeout_counts_as_timeout(mariadb: MariaDB, database: str) -> None:
    queries = [_query("sleepy", "SELECT SLEEP(2)")]
    shape = LoadShape(concurrency=2, hold_for_s=1.5, shards=1)

    (sleepy,) = run_load(mariadb.target(database, statement_timeout_s=0.5), queries, shape).queries

    assert sleepy.count > 0
    assert sleepy.errors > 0
    assert sleepy.errors_by_kind == {"timeout": sleepy.errors}
    # MariaDB sometimes ends an interrupted SLEEP() with the result 1 instead of the timeout
    # error; such an execution still stopped at the timeout, long before its two seconds.
    if sleepy.errors < sleepy.count:
        assert sleepy.histogram.get_max_value() < 1_500_000  # microseconds


def test_parameters_arrive_as_values(mariadb: MariaDB, database: str) -> None:
    mariadb.query(f"CREATE TABLE `{database}`.seen (v INT, s VARCHAR(4), d DATE, note VARCHAR(10))")
    params = tuple(
        EngineParam(*parse_param(text))
        for text in (
            "v {type: int, range: [1, 1000]}",
            "s {type: choice, values: [O, F, P]}",
            "d {type: date, range: [1992-01-01, 1998-08-02]}",
        )
    )
    queries = [
        _query("record", "INSERT INTO seen VALUES (%s, %s, %s, '100%%')", params=params),
    ]
    shape = LoadShape(concurrency=2, hold_for_s=1.0, shards=2, seed=7)

    (record,) = run_load(mariadb.target(database), queries, shape).queries

    assert record.count > 0 and record.errors == 0
    rows = mariadb.query(f"SELECT v, s, d, note FROM `{database}`.seen")
    assert len(rows) == record.count
    assert {note for *_, note in rows} == {"100%"}
    assert all(1 <= v <= 1000 for v, *_ in rows)
    assert {s for _, s, *_ in rows} <= {"O", "F", "P"}
    assert all(date(1992, 1, 1) <= d <= date(1998, 8, 2) for _, _, d, _ in rows)
    assert len({v for v, *_ in rows}) > 1


def test_a_parameter_used_twice_sends_one_value_to_both_places(
    mariadb: MariaDB, database: str
) -> None:
    from crucible_dagster.run import engine_query
    from crucible_dagster.suts.mysql import MysqlDriver
    from crucible_dagster.workload import parse_workload

    mariadb.query(f"CREATE TABLE `{database}`.twice (a VARCHAR(20), b VARCHAR(20), n INT)")
    text = "-- @type: sql\n-- @name: twice\n-- @param: s {type: string, length: 12}\n"
    text += "-- @param: n {type: int, range: [1, 9]}\nINSERT INTO twice VALUES (:s, :s, :n)\n"
    [query] = parse_workload(text, source="w.sql", workload_id="w").queries
    engine = engine_query(query, MysqlDriver(), 1.0)
    shape = LoadShape(concurrency=1, hold_for_s=0.5, seed=3)

    run_load(mariadb.target(database), [engine], shape)

    rows = mariadb.query(f"SELECT a, b, n FROM `{database}`.twice")
    assert len(rows) > 10
    assert all(a == b for a, b, _ in rows)
    assert len({a for a, _, _ in rows}) > 1
