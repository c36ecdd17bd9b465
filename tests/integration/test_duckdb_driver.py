"""The DuckDB driver on a real DuckDB file: sessions, preflight and the native engine."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from crucible_dagster.engine import LoadShape, run_load
from crucible_dagster.engine.model import EngineParam
from crucible_dagster.errors import SutError, ValidationError
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.params import parse_param
from crucible_dagster.storage import LocalStorage
from crucible_dagster.suts import duckdb as duck
from tests.integration.embedded_support import (
    embedded_target,
    read_rows,
    run_sql,
    tpch_loads,
    workload_query,
)

pytestmark = pytest.mark.integration

_driver = duck.DuckDbDriver()


@pytest.fixture
def tpch_file(tmp_path: Path, tpch_sf001: tuple[LocalStorage, FixtureManifest]) -> Path:
    """A DuckDB file holding TPC-H sf0.01's customer, orders and lineitem."""
    storage, _ = tpch_sf001
    path = tmp_path / "tpch.duckdb"
    target = embedded_target("duckdb", path)
    loads = tpch_loads("customer", "orders", "lineitem")
    asyncio.run(_driver.load_fixture_tables(target, storage, loads))
    return path


def test_session_runs_statements_to_the_last_row_and_releases_the_file(tpch_file: Path) -> None:
    async def check() -> tuple[object, ...]:
        session = await _driver.connect(embedded_target("duckdb", tpch_file))
        try:
            count = await (await _driver.prepare(session, "SELECT * FROM lineitem"))()
            keyed = await (
                await _driver.prepare(session, "SELECT * FROM orders WHERE o_orderkey < $1")
            )(100)
            held = duck.open_files()
            return count, keyed, held
        finally:
            await _driver.close(session)

    count, keyed, held = asyncio.run(check())

    assert count == 60175
    assert 0 < keyed < 100  # type: ignore[operator]
    assert held == [tpch_file.resolve()]
    assert duck.open_files() == []


def test_missing_database_file_is_refused_before_any_session(tmp_path: Path) -> None:
    target = embedded_target("duckdb", tmp_path / "never_loaded.duckdb")

    with pytest.raises(SutError, match="does not exist; load a fixture first or check target_db"):
        asyncio.run(_driver.preflight(target, [workload_query("one", "SELECT 1")]))
    assert not (tmp_path / "never_loaded.duckdb").exists()


def test_preflight_reports_every_rejected_query_with_file_and_line(tpch_file: Path) -> None:
    queries = [
        workload_query("fine", "SELECT count(*) FROM orders WHERE o_comment LIKE 'a%'", line=2),
        workload_query("typo", "SELEC o_orderkey FROM orders", line=5),
        workload_query("missing", "SELECT * FROM no_such_table", line=9),
        workload_query("bad_column", "SELECT nope FROM orders", line=12),
        workload_query("two", "SELECT 1; DELETE FROM orders", line=15),
    ]

    with pytest.raises(ValidationError) as error:
        asyncio.run(_driver.preflight(embedded_target("duckdb", tpch_file), queries))

    problems = {p.field: p for p in error.value.problems}
    assert set(problems) == {"typo", "missing", "bad_column", "two"}
    assert str(problems["typo"].location) == "workloads/embedded.sql:5"
    assert "Parser Error" in problems["typo"].message and "SELEC" in problems["typo"].message
    assert str(problems["missing"].location) == "workloads/embedded.sql:9"
    assert "no_such_table" in problems["missing"].message
    assert str(problems["bad_column"].location) == "workloads/embedded.sql:12"
    assert "exactly one statement" in problems["two"].message
    assert read_rows("duckdb", tpch_file, "SELECT COUNT(*) FROM orders") == [(15000,)]
    assert duck.open_files() == []


def test_preflight_accepts_valid_queries_without_running_them(tpch_file: Path) -> None:
    run_sql("duckdb", tpch_file, "CREATE TABLE notes (id INTEGER, note VARCHAR)")
    spec = parse_param("v {type: int, range: [1, 9]}")[1]
    queries = [
        workload_query("insert_literal", "INSERT INTO notes VALUES (1, '100%')"),
        workload_query(
            "insert_param", "INSERT INTO notes VALUES ($1, 'x')", params=(EngineParam("v", spec),)
        ),
        workload_query("delete", "DELETE FROM orders"),
        workload_query("set", "SET threads = 1"),
    ]

    asyncio.run(_driver.preflight(embedded_target("duckdb", tpch_file), queries))

    assert read_rows("duckdb", tpch_file, "SELECT COUNT(*) FROM notes") == [(0,)]
    assert read_rows("duckdb", tpch_file, "SELECT COUNT(*) FROM orders") == [(15000,)]


def test_closed_load_measures_tpch_queries_with_parameters(tpch_file: Path) -> None:
    day = EngineParam(*parse_param("day {type: date, range: [1993-01-01, 1997-12-31]}"))
    key = EngineParam(*parse_param("key {type: int, range: [1, 1500]}"))
    queries = [
        workload_query(
            "pricing",
            "SELECT l_returnflag, l_linestatus, sum(l_extendedprice * (1 - l_discount)) "
            "FROM lineitem WHERE l_shipdate <= $1 GROUP BY ALL ORDER BY ALL",
            params=(day,),
        ),
        workload_query(
            "customer_orders",
            "SELECT o_orderkey, o_totalprice FROM orders WHERE o_custkey = $1",
            params=(key,),
        ),
    ]
    asyncio.run(_driver.preflight(embedded_target("duckdb", tpch_file), queries))
    shape = LoadShape(concurrency=4, ramp_up_s=0.2, hold_for_s=1.5, shards=1, seed=3)

    measurement = run_load(embedded_target("duckdb", tpch_file), queries, shape)

    assert [q.name for q in measurement.queries] == ["pricing", "customer_orders"]
    for query in measurement.queries:
        assert query.count > 0
        assert query.errors == 0
        assert query.histogram.get_total_count() == query.count
    assert duck.open_files() == []


def test_failing_query_is_counted_by_its_error_type(tpch_file: Path) -> None:
    queries = [
        workload_query("ok", "SELECT 1"),
        workload_query("missing", "SELECT * FROM no_such_table"),
    ]
    shape = LoadShape(concurrency=2, hold_for_s=1.0, shards=1, seed=1)

    ok, missing = run_load(embedded_target("duckdb", tpch_file), queries, shape).queries

    assert missing.count > 0
    assert missing.errors_by_kind == {"catalog": missing.count}
    assert missing.first_error is not None and missing.first_error.startswith("Catalog Error")
    assert ok.count > 0 and ok.errors == 0


def test_statement_past_the_timeout_is_interrupted_and_counts_as_timeout(
    tpch_file: Path,
) -> None:
    queries = [workload_query("endless", "SELECT count(*) FROM range(100000000000) t(a)")]
    shape = LoadShape(concurrency=2, hold_for_s=1.5, shards=1)
    target = embedded_target("duckdb", tpch_file, statement_timeout_s=0.3)

    started = time.monotonic()
    (endless,) = run_load(target, queries, shape).queries

    assert endless.count > 0
    assert endless.errors == endless.count
    assert endless.errors_by_kind == {"timeout": endless.count}
    assert "0.3s statement timeout" in (endless.first_error or "")
    assert time.monotonic() - started < 20


def test_parameters_arrive_as_values_and_a_repeated_one_once(tpch_file: Path) -> None:
    from crucible_dagster.run import engine_query
    from crucible_dagster.workload import parse_workload

    run_sql("duckdb", tpch_file, "CREATE TABLE seen (v INTEGER, w INTEGER, s VARCHAR, d DATE)")
    text = (
        "-- @type: sql\n-- @name: record\n-- @param: v {type: int, range: [1, 1000]}\n"
        "-- @param: s {type: choice, values: [O, F, P]}\n"
        "-- @param: d {type: date, range: [1992-01-01, 1998-08-02]}\n"
        "INSERT INTO seen VALUES (:v, :v, :s, :d)\n"
    )
    [query] = parse_workload(text, source="w.sql", workload_id="w").queries
    shape = LoadShape(concurrency=2, hold_for_s=1.0, shards=1, seed=7)

    (record,) = run_load(
        embedded_target("duckdb", tpch_file), [engine_query(query, _driver, 1.0)], shape
    ).queries

    assert record.count > 0 and record.errors == 0
    rows = read_rows("duckdb", tpch_file, "SELECT v, w, s, d FROM seen")
    assert len(rows) == record.count
    assert all(v == w and 1 <= v <= 1000 for v, w, _, _ in rows)
    assert {s for _, _, s, _ in rows} <= {"O", "F", "P"}
    assert all(date(1992, 1, 1) <= d <= date(1998, 8, 2) for *_, d in rows)
    assert len({v for v, *_ in rows}) > 1


@pytest.fixture
def held_by_another_process(tpch_file: Path) -> Iterator[Path]:
    """The DuckDB file opened read-write by a separate Python process, stopped by its PID."""
    script = (
        "import sys, time, duckdb\n"
        "c = duckdb.connect(sys.argv[1])\n"
        "print('open', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tpch_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        yield tpch_file
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_file_held_by_another_process_is_a_clear_error(held_by_another_process: Path) -> None:
    target = embedded_target("duckdb", held_by_another_process)

    with pytest.raises(SutError, match="is in use by another process"):
        asyncio.run(_driver.preflight(target, [workload_query("one", "SELECT 1")]))
    assert duck.open_files() == []


def test_file_that_is_not_a_duckdb_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n" * 1000)

    with pytest.raises(SutError, match=r"cannot open database file .*notes\.duckdb"):
        asyncio.run(_driver.connect(embedded_target("duckdb", path)))
    assert duck.open_files() == []


def test_a_sqlite_file_named_as_a_duckdb_database_says_so(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (a INTEGER)").connection.commit()
    with pytest.raises(SutError, match="is a SQLite database, not a DuckDB one"):
        asyncio.run(_driver.connect(embedded_target("duckdb", path)))
