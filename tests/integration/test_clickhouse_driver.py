"""The ClickHouse driver against a real ClickHouse 18.16: sessions, preflight, load, plan job."""

import asyncio
import datetime
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from pydantic import SecretStr

from crucible_dagster.defs import build_definitions
from crucible_dagster.engine import EngineQuery, LoadShape, run_load
from crucible_dagster.engine.model import EngineParam
from crucible_dagster.errors import SutError, ValidationError
from crucible_dagster.local_postgres import free_port
from crucible_dagster.params import parse_param
from crucible_dagster.results import latest_result
from crucible_dagster.run import RUN_ID_TAG, mint_run_id
from crucible_dagster.settings import get_settings
from crucible_dagster.storage import storage_from_url
from crucible_dagster.suts import clickhouse as driver_module
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity
from crucible_dagster.suts.driver import driver_for
from tests import servers_clickhouse
from tests.integration import test_plan_job as plan_job_tests
from tests.servers_clickhouse import CH_PASSWORD, ClickHouseServer
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration

clickhouse = servers_clickhouse.clickhouse


@pytest.fixture
def ch_database(clickhouse: ClickHouseServer) -> Iterator[str]:
    """A fresh, empty database on the session server, dropped after the test."""
    name = "t_" + secrets.token_hex(6)
    clickhouse.query(f"CREATE DATABASE {name}")
    yield name
    clickhouse.query(f"DROP DATABASE IF EXISTS {name}")


def _target(server: ClickHouseServer, database: str, **overrides: object) -> SutTarget:
    identity = sut_identity("clickhouse", server.host, server.http_port, database)
    settings: dict[str, object] = {"password": SecretStr(CH_PASSWORD)} | overrides
    return SutTarget(identity, server.user, **settings)  # type: ignore[arg-type]


def _query(name: str, sql: str, line: int = 1, params: tuple[EngineParam, ...] = ()) -> EngineQuery:
    return EngineQuery(name, sql, "workloads/test.sql", line, params=params)


def _connect_error(target: SutTarget) -> str:
    async def attempt() -> None:
        session = await driver_for("clickhouse").connect(target)
        await driver_for("clickhouse").close(session)

    with pytest.raises(SutError) as caught:
        asyncio.run(attempt())
    message = str(caught.value)
    assert CH_PASSWORD not in message
    assert CH_PASSWORD not in repr(caught.value)
    return message


def test_connect_opens_a_session_that_runs_statements(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    driver = driver_for("clickhouse")

    async def run() -> tuple[bool, bool]:
        session = await driver.connect(_target(clickhouse, ch_database))
        execute = await driver.prepare(session, "SELECT currentDatabase()")
        tail = await execute()
        assert isinstance(tail, bytes) and tail.strip().decode() == ch_database
        open_before = driver.is_closed(session)
        await driver.close(session)
        return open_before, driver.is_closed(session)

    assert asyncio.run(run()) == (False, True)


def test_wrong_password_is_an_authentication_error(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    target = _target(clickhouse, ch_database, password=SecretStr("not-" + CH_PASSWORD))
    message = _connect_error(target)
    assert message == (
        f"clickhouse://127.0.0.1:{clickhouse.http_port}/{ch_database}: "
        f"authentication failed for user '{clickhouse.user}'"
    )


def test_refused_port_says_connection_refused() -> None:
    port = free_port()
    identity = sut_identity("clickhouse", "127.0.0.1", port, "default")
    message = _connect_error(SutTarget(identity, "crucible", SecretStr(CH_PASSWORD)))
    assert message == f"cannot reach clickhouse://127.0.0.1:{port}/default: connection refused"


def test_tls_to_the_plain_http_port_says_tls_is_not_served(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    target = _target(clickhouse, ch_database, tls=TlsSettings(verify=False), connect_timeout_s=3)
    message = _connect_error(target)
    key = f"clickhouse://127.0.0.1:{clickhouse.http_port}/{ch_database}"
    # ClickHouse answers a TLS hello in plain text once the hello's random bytes hold a newline,
    # and otherwise waits for one: either way the message says TLS is the likely cause.
    assert message in (
        f"{key}: the server did not answer in TLS; cluster_info.tls is on, but TLS is not served "
        "on this port",
        f"cannot reach {key}: no answer within 3s; cluster_info.tls is on: is TLS served on this "
        "port?",
    )


def test_unknown_database_is_named(clickhouse: ClickHouseServer) -> None:
    message = _connect_error(_target(clickhouse, "no_such_db"))
    assert message.endswith(": database 'no_such_db' does not exist")


def test_preflight_reports_every_rejected_query_at_its_line_without_running_any(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    clickhouse.query(f"CREATE TABLE {ch_database}.seen (v String) ENGINE = Memory")
    queries = [
        _query("ok", "SELECT count() FROM seen", line=2),
        _query("writes", "INSERT INTO seen VALUES ('preflight ran me')", line=4),
        _query("typo", "SELECT 1\nFROM seen\nWHER v = 'x'", line=6),
        _query("missing", "SELECT * FROM no_such_table", line=9),
        _query("slow", "SELECT sleep(3)", line=11),
    ]

    with pytest.raises(ValidationError) as caught:
        asyncio.run(driver_for("clickhouse").preflight(_target(clickhouse, ch_database), queries))

    problems = {str(p.field): p for p in caught.value.problems}
    assert sorted(problems) == ["missing", "typo"]
    assert str(problems["typo"].location) == "workloads/test.sql:6"
    assert "62: Syntax error" in problems["typo"].message
    assert "(line 3 of the query)" in problems["typo"].message
    assert str(problems["missing"].location) == "workloads/test.sql:9"
    assert "60: Table" in problems["missing"].message
    assert "no_such_table" in problems["missing"].message
    assert clickhouse.query(f"SELECT count() FROM {ch_database}.seen").strip() == "0"


def test_preflight_accepts_valid_queries_quickly(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    queries = [
        _query("one", "SELECT 1;"),
        _query("series", "SELECT number FROM system.numbers LIMIT 10\n-- trailing comment"),
        _query("formatted", "SELECT 1 FORMAT JSON"),
        _query("create", "CREATE TABLE IF NOT EXISTS made (a UInt8) ENGINE = Memory"),
    ]
    asyncio.run(driver_for("clickhouse").preflight(_target(clickhouse, ch_database), queries))
    assert clickhouse.query(f"EXISTS TABLE {ch_database}.made").strip() == "0"


def test_short_run_measures_two_queries_across_two_shards(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    queries = [
        _query("one", "SELECT 1"),
        _query("numbers", "SELECT number FROM system.numbers LIMIT 100000"),
    ]
    shape = LoadShape(concurrency=4, ramp_up_s=0.5, hold_for_s=2.0, shards=2, seed=3)

    measurement = run_load(_target(clickhouse, ch_database), queries, shape)

    assert measurement.shards == 2
    assert [q.name for q in measurement.queries] == ["one", "numbers"]
    for query in measurement.queries:
        assert query.count > 0
        assert query.errors == 0, query.first_error
        assert query.histogram.get_total_count() == query.count


def test_failing_query_is_counted_by_its_code_while_others_keep_running(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    queries = [_query("ok", "SELECT 1"), _query("missing", "SELECT * FROM no_such_table")]
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=1.5, shards=1, seed=1)

    ok, missing = run_load(_target(clickhouse, ch_database), queries, shape).queries

    assert missing.count > 0
    assert missing.errors_by_kind == {"60": missing.count}
    assert missing.first_error is not None and missing.first_error.startswith("60: Table ")
    assert ok.count > 0 and ok.errors == 0


def test_statement_longer_than_the_timeout_counts_as_timeout(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    queries = [
        _query("sleepy", "SELECT sleep(2)"),
        _query("endless", "SELECT count() FROM system.numbers"),
    ]
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=3.0, shards=1, seed=2)
    target = _target(clickhouse, ch_database, statement_timeout_s=0.5)

    measurement = run_load(target, queries, shape)

    for query in measurement.queries:
        assert query.count > 0, query.name
        assert query.errors_by_kind == {"timeout": query.count}, query.first_error
        assert query.first_error is not None
        assert not query.first_error.startswith("ReadTimeout"), query.first_error


def test_parameters_arrive_as_the_values_sent_and_hostile_strings_stay_data(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    clickhouse.query(
        f"CREATE TABLE {ch_database}.seen (n Int64, s String, d Date, f Float64) ENGINE = Memory"
    )
    clickhouse.query(f"CREATE TABLE {ch_database}.x (a UInt8) ENGINE = Memory")
    hostile = ["it's", "back\\slash", "'; DROP TABLE x; --", "\\'); DROP TABLE x; --", "tab\tnew\n"]
    specs = {
        "n": parse_param("n {type: int, range: [-5, 5]}")[1],
        # JSON is YAML: the hostile strings reach the spec exactly as written here.
        "s": parse_param(f"s {{type: choice, values: {json.dumps(hostile)}}}")[1],
        "d": parse_param("d {type: date, range: [1992-01-01, 1992-01-31]}")[1],
        "f": parse_param("f {type: float, range: [0, 1]}")[1],
    }
    params = (
        EngineParam("n", specs["n"]),
        EngineParam("s", specs["s"]),
        EngineParam("d", specs["d"]),
        EngineParam("f", specs["f"]),
    )
    m = driver_module.MARKER
    sql = f"INSERT INTO seen VALUES ({m}, {m}, {m}, {m})"
    queries = [_query("record", sql, params=params)]
    shape = LoadShape(concurrency=2, ramp_up_s=0.0, hold_for_s=1.0, shards=1, seed=4)

    measurement = run_load(_target(clickhouse, ch_database), queries, shape)

    record = measurement.queries[0]
    assert record.count > 0 and record.errors == 0, record.first_error
    rows = clickhouse.query(
        f"SELECT n, s, toString(d), f FROM {ch_database}.seen FORMAT JSONEachRow"
    ).splitlines()
    seen = [json.loads(row) for row in rows]
    assert len(seen) >= record.count
    assert {row["s"] for row in seen} <= set(hostile)
    assert len({row["s"] for row in seen}) > 1
    assert all(-5 <= int(row["n"]) <= 5 for row in seen)
    first, last = datetime.date(1992, 1, 1), datetime.date(1992, 1, 31)
    assert all(first <= datetime.date.fromisoformat(row["toString(d)"]) <= last for row in seen)
    assert all(0 <= row["f"] <= 1 for row in seen)
    assert clickhouse.query(f"EXISTS TABLE {ch_database}.x").strip() == "1"


def test_a_lost_connection_counts_as_connection_and_the_session_is_replaced(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    driver = driver_for("clickhouse")

    async def run() -> tuple[str, bool]:
        session = await driver.connect(_target(clickhouse, ch_database))
        await session.aclose()
        execute = await driver.prepare(session, "SELECT 1")
        try:
            await execute()
        except Exception as exc:
            return driver.classify_error(exc), driver.session_lost(session, exc)
        raise AssertionError("a closed session ran a statement")

    kind, lost = asyncio.run(run())
    assert lost
    assert kind in ("connection", "other")


CH_WORKLOAD = """\
-- @type: clickhouse
-- @name: nations_per_region
SELECT r_name, count() FROM region ALL INNER JOIN nation ON r_regionkey = n_regionkey GROUP BY r_name;
-- @name: big_orders
-- @param: floor {type: int, range: [100000, 400000]}
SELECT count() FROM orders WHERE o_totalprice > :floor
"""  # noqa: E501


def write_plan(folder: Path, name: str, *, port: int, database: str) -> Path:
    return plan_job_tests.write_plan(
        folder, name, port=port, database=database, workload=CH_WORKLOAD, workload_id="ch",
        sut_type="clickhouse", username=servers_clickhouse.CH_USER,
        password_env="CRUCIBLE_TEST_CH_PASSWORD", tables=("region", "nation", "orders"),
    )  # fmt: skip


@pytest.fixture
def instance(crucible_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    monkeypatch.setenv("CRUCIBLE_TEST_CH_PASSWORD", CH_PASSWORD)
    with dg.instance_for_test() as instance:
        yield instance


def test_plan_job_loads_tpch_fixtures_from_s3_and_runs_to_a_passed_verdict(
    clickhouse: ClickHouseServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    database = "plan_" + secrets.token_hex(4)  # the loader creates it
    plan = write_plan(tmp_path / "plans", "ch_smoke", port=clickhouse.http_port, database=database)
    run_id = mint_run_id("ch_smoke")
    try:
        outcome = (
            build_definitions(plan.parent)
            .resolve_job_def("ch_smoke")
            .execute_in_process(instance=instance, tags={RUN_ID_TAG: run_id}, raise_on_error=False)
        )
        settings = get_settings()
        storage = storage_from_url(settings.storage_url, settings)
        result = json.loads(storage.get_bytes(f"results/{run_id}/result.json"))
    finally:
        clickhouse.query(f"DROP DATABASE IF EXISTS {database}")

    assert outcome.success, result.get("error")
    assert result["status"] == "completed"
    assert result["verdict"] == "passed"
    assert [q["name"] for q in result["queries"]] == ["nations_per_region", "big_orders"]
    for query in result["queries"]:
        assert query["count"] > 0
        assert query["errors"] == 0, query
    fixtures = {f["table"]: f["rows"] for f in result["fixtures"]}
    assert fixtures == {"region": 5, "nation": 25, "orders": 15000}
    latest = latest_result(storage, "ch_smoke")
    assert latest is not None and latest.run_id == run_id
    keys = {info.key for info in s3_server.storage(s3_bucket, "crucible").list("")}
    assert "fixtures/tpch/sf0.01/_manifest.json" in keys
    assert CH_PASSWORD not in json.dumps(result)
    for run in instance.get_runs():
        assert all(CH_PASSWORD not in str(r) for r in instance.all_logs(run.run_id))


def test_a_parameter_used_twice_sends_one_value_to_both_places(
    clickhouse: ClickHouseServer, ch_database: str
) -> None:
    from crucible_dagster.run import engine_query
    from crucible_dagster.suts.clickhouse import ClickHouseDriver
    from crucible_dagster.workload import parse_workload

    clickhouse.query("CREATE TABLE twice (a String, b String) ENGINE = Log", ch_database)
    text = "-- @type: sql\n-- @name: twice\n-- @param: s {type: string, length: 12}\n"
    text += "INSERT INTO twice VALUES (:s, :s)\n"
    [query] = parse_workload(text, source="w.sql", workload_id="w").queries
    engine = engine_query(query, ClickHouseDriver(), 1.0)
    shape = LoadShape(concurrency=1, hold_for_s=0.5, seed=3)

    run_load(_target(clickhouse, ch_database), [engine], shape)

    rows = [
        line.split("\t")
        for line in clickhouse.query("SELECT a, b FROM twice", ch_database).splitlines()
    ]
    assert len(rows) > 10
    assert all(a == b for a, b in rows)
    assert len({a for a, _ in rows}) > 1
