"""The Trino driver's statements, names, type mapping and error kinds, without a server."""

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import requests
from pydantic import SecretStr
from trino import exceptions as trino_errors

from crucible_dagster.errors import FixtureError, SutError
from crucible_dagster.fixtures import trino as loader
from crucible_dagster.fixtures.loading import FixtureTableLoad
from crucible_dagster.fixtures.manifest import arrow_type_from_text
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.storage import LocalStorage, S3Storage
from crucible_dagster.suts import trino
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity
from crucible_dagster.suts.driver import driver_for
from crucible_dagster.workload import parse_workload

SECRET = "trino-canary-" + "5ecret"


def _query(sql: str, params: str = "") -> object:
    text = f"-- @type: trino\n-- @name: q\n{params}{sql}\n"
    return parse_workload(text, source="w.sql", workload_id="w").queries[0]


def _target(database: str = "hive.tpch", **kwargs: object) -> SutTarget:
    return SutTarget(sut_identity("trino", "db.example", 8080, database), "loader", **kwargs)  # type: ignore[arg-type]


def _user_error(name: str, message: str = "boom", kind: str = "USER_ERROR") -> Exception:
    error = {"errorName": name, "errorType": kind, "errorCode": 1, "message": message}
    return trino_errors.TrinoUserError(error, "q1")


# -- names and rendering --


def test_trino_sut_type_gets_the_trino_driver() -> None:
    assert isinstance(driver_for("trino"), trino.TrinoDriver)


def test_parameters_become_question_marks_one_per_occurrence() -> None:
    query = _query(
        "SELECT * FROM t WHERE a = :k AND s LIKE '%?%' AND b = :k AND c = :n",
        "-- @param: k {type: int, range: [1, 5]}\n-- @param: n {type: int, range: [1, 5]}\n",
    )
    sql, order = trino.render(query)  # type: ignore[arg-type]
    assert sql == "SELECT * FROM t WHERE a = ? AND s LIKE '%?%' AND b = ? AND c = ?"
    assert order == ("k", "k", "n")


def test_query_without_parameters_is_sent_as_written() -> None:
    query = _query("SELECT count(*) FROM t WHERE name LIKE '%ab%' AND x = ':k'")
    assert trino.render(query) == ("SELECT count(*) FROM t WHERE name LIKE '%ab%' AND x = ':k'", ())  # type: ignore[arg-type]


def test_target_database_is_catalog_and_schema_or_catalog_alone() -> None:
    assert trino.parse_database("hive.tpch") == trino.TrinoDatabase("hive", "tpch")
    assert trino.parse_database("Iceberg") == trino.TrinoDatabase("iceberg", "default")


@pytest.mark.parametrize("text", ["", "a.b.c", "hive.", "1abc", 'hive."x"', "hi-ve"])
def test_target_database_other_shapes_are_refused(text: str) -> None:
    with pytest.raises(SutError, match=r"`catalog\.schema`"):
        trino.parse_database(text)


def test_identifiers_are_double_quoted_with_quotes_doubled() -> None:
    assert trino.quote_identifier('we"ird') == '"we""ird"'
    assert trino.TrinoDatabase("hive", "s").table("t") == '"hive"."s"."t"'
    with pytest.raises(ValueError):
        trino.quote_identifier("")
    with pytest.raises(ValueError):
        trino.quote_identifier("a\nb")


def test_string_literals_double_single_quotes_and_keep_backslashes() -> None:
    assert trino.quote_string("it's \\n") == "'it''s \\n'"
    with pytest.raises(ValueError):
        trino.quote_string("a\x00b")


def test_statement_timeout_becomes_request_limit_and_query_max_run_time() -> None:
    target = _target(connect_timeout_s=3.0, statement_timeout_s=1.5)
    assert trino.request_timeout(target) == (3.0, 1.5)
    assert trino.session_properties(target) == {"query_max_run_time": "1500ms"}
    unlimited = _target(statement_timeout_s=0)
    assert trino.request_timeout(unlimited) == (10.0, None)
    assert trino.session_properties(unlimited) == {}


def test_preflight_explains_the_query_on_its_own_line_and_shifts_locations_back() -> None:
    assert trino.preflight_statement("SELECT 1") == "EXPLAIN (TYPE VALIDATE)\nSELECT 1"
    assert (
        trino.query_message("line 3:8: Column 'x' cannot be resolved")
        == "Column 'x' cannot be resolved (line 2, column 8 of the query)"
    )
    assert trino.query_message("line 1:1: mismatched input") == "mismatched input"
    assert trino.query_message("no location") == "no location"


# -- connections --


def test_password_over_plain_http_is_refused_before_sending_it() -> None:
    with pytest.raises(SutError) as error:
        trino.open_connection(_target(password=SecretStr(SECRET)), trino.TrinoDatabase("h", "s"))
    message = str(error.value)
    assert "only over HTTPS" in message and "cluster_info.tls" in message
    assert SECRET not in message


def test_connection_carries_user_source_tags_catalog_schema_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    target = _target(password=SecretStr(SECRET), tls=TlsSettings(ca_file=str(ca)))
    conn = trino.open_connection(target, trino.parse_database(target.database))
    try:
        assert (conn.host, conn.port, conn.user) == ("db.example", 8080, "loader")
        assert (conn.catalog, conn.schema, conn.source) == ("hive", "tpch", "crucible")
        assert conn.client_tags == ["crucible"]
        assert conn.http_scheme == "https"
        assert conn._http_session.verify == str(ca)
        assert conn.max_attempts == 1
        assert SECRET not in repr(conn.auth)
    finally:
        conn.close()


def test_unverified_tls_and_plain_connections_choose_their_scheme() -> None:
    plain = trino.open_connection(_target(), trino.TrinoDatabase("h", "s"))
    assert plain.http_scheme == "http" and plain.auth is None
    loose = trino.open_connection(
        _target(tls=TlsSettings(verify=False)), trino.TrinoDatabase("h", "s")
    )
    assert loose.http_scheme == "https" and loose._http_session.verify is False


def test_worker_pool_grows_with_open_sessions() -> None:
    pool = trino.WorkerPool()
    for _ in range(10):
        pool.opened()
    assert pool.capacity >= 12
    first = pool.executor
    for _ in range(30):
        pool.opened()
    assert pool.capacity >= 42
    assert pool.executor is not first


# -- errors --


def test_errors_are_classified_by_trino_error_name() -> None:
    assert trino.classify_error(_user_error("TABLE_NOT_FOUND")) == "TABLE_NOT_FOUND"
    memory = trino_errors.TrinoQueryError(
        {"errorName": "EXCEEDED_GLOBAL_MEMORY_LIMIT", "errorType": "INSUFFICIENT_RESOURCES"}
    )
    assert trino.classify_error(memory) == "EXCEEDED_GLOBAL_MEMORY_LIMIT"
    external = trino_errors.TrinoExternalError(
        {"errorName": "HIVE_CURSOR_ERROR", "errorType": "EXTERNAL"}
    )
    assert trino.classify_error(external) == "HIVE_CURSOR_ERROR"
    unnamed = trino_errors.TrinoQueryError({"errorType": "INTERNAL_ERROR"})
    assert trino.classify_error(unnamed) == "internal_error"


def test_time_limits_and_read_timeouts_are_timeouts() -> None:
    limit = trino_errors.TrinoQueryError(
        {"errorName": "EXCEEDED_TIME_LIMIT", "errorType": "INSUFFICIENT_RESOURCES"}
    )
    assert trino.classify_error(limit) == "timeout"
    try:
        try:
            raise requests.ReadTimeout("Read timed out. (read timeout=0.5)")
        except requests.RequestException as exc:
            raise trino_errors.TrinoConnectionError(f"failed to fetch: {exc}") from None
    except trino_errors.TrinoConnectionError as wrapped:
        # `from None` hides the cause from tracebacks but keeps it as the context.
        assert trino.classify_error(wrapped) == "timeout"


def test_unreachable_and_unavailable_servers_are_connection_errors() -> None:
    refused = trino_errors.TrinoConnectionError("failed to execute: refused")
    assert trino.classify_error(refused) == "connection"
    assert (
        trino.classify_error(trino_errors.Http503Error("error 503: service unavailable"))
        == "connection"
    )
    assert trino.classify_error(trino_errors.HttpError("error 401: Unauthorized")) == "http_401"
    assert trino.classify_error(trino_errors.OperationalError("error 403")) == "http_403"
    assert trino.classify_error(ValueError("x")) == "other"


def test_description_names_error_and_type_on_one_line() -> None:
    error = _user_error("SYNTAX_ERROR", "line 1:1: mismatched input 'SELEC'.\nExpecting: ...")
    assert trino.describe_error(error) == (
        "SYNTAX_ERROR (USER_ERROR): line 1:1: mismatched input 'SELEC'. Expecting: ..."
    )


def test_refused_statement_keeps_the_session_and_lost_connection_does_not() -> None:
    session = trino.TrinoSession(
        conn=None,  # type: ignore[arg-type]
        pool=trino.WorkerPool(),
        key="k",
        database=trino.TrinoDatabase("h", "s"),
    )
    assert not trino.session_lost(session, _user_error("TABLE_NOT_FOUND"))
    assert trino.session_lost(session, trino_errors.TrinoConnectionError("failed"))
    assert trino.session_lost(session, trino_errors.Http503Error("error 503"))
    session.closed = True
    assert trino.session_lost(session, _user_error("TABLE_NOT_FOUND"))


def test_wrong_password_and_missing_catalog_say_so_without_the_password() -> None:
    target = _target("nocat.s", password=SecretStr(SECRET), tls=TlsSettings())
    denied = trino.connect_error(trino_errors.HttpError("error 401: Unauthorized"), target)
    assert denied is not None and "access denied for user 'loader'" in str(denied)
    missing = trino.connect_error(_user_error("CATALOG_NOT_FOUND"), target)
    assert missing is not None and "catalog 'nocat' does not exist" in str(missing)
    assert SECRET not in str(denied) + str(missing)


# -- fixture type mapping --


@pytest.mark.parametrize(
    ("arrow_type", "expected"),
    [
        (pa.bool_(), "BOOLEAN"),
        (pa.int8(), "TINYINT"),
        (pa.int16(), "SMALLINT"),
        (pa.int32(), "INTEGER"),
        (pa.int64(), "BIGINT"),
        (pa.uint8(), "SMALLINT"),
        (pa.uint16(), "INTEGER"),
        (pa.uint32(), "BIGINT"),
        (pa.uint64(), "DECIMAL(20,0)"),
        (pa.float32(), "REAL"),
        (pa.float64(), "DOUBLE"),
        (pa.decimal128(15, 2), "DECIMAL(15,2)"),
        (pa.decimal128(38, 10), "DECIMAL(38,10)"),
        (pa.date32(), "DATE"),
        (pa.date64(), "DATE"),
        (pa.timestamp("us"), "TIMESTAMP"),
        (pa.timestamp("ns", tz="UTC"), "TIMESTAMP"),
        (pa.string(), "VARCHAR"),
        (pa.large_string(), "VARCHAR"),
        (pa.string_view(), "VARCHAR"),
        (pa.binary_view(), "VARBINARY"),
        (pa.dictionary(pa.int32(), pa.string()), "VARCHAR"),
        (pa.binary(), "VARBINARY"),
        (pa.large_binary(), "VARBINARY"),
        (pa.binary(16), "VARBINARY"),
        (pa.list_(pa.int32()), "ARRAY(INTEGER)"),
        (pa.large_list(pa.string()), "ARRAY(VARCHAR)"),
        (pa.map_(pa.string(), pa.float64()), "MAP(VARCHAR, DOUBLE)"),
        (pa.struct([("a", pa.int64()), ('b"c', pa.string())]), 'ROW("a" BIGINT, "b""c" VARCHAR)'),
    ],
)
def test_arrow_types_map_to_trino_types(arrow_type: pa.DataType, expected: str) -> None:
    assert loader.trino_type(arrow_type) == expected


@pytest.mark.parametrize(
    "arrow_type", [pa.decimal256(40, 2), pa.time64("us"), pa.null(), pa.float16(), pa.duration("s")]
)
def test_arrow_types_trino_cannot_hold_are_refused(arrow_type: pa.DataType) -> None:
    with pytest.raises(FixtureError, match="Trino"):
        loader.trino_type(arrow_type)


@pytest.mark.parametrize(
    "arrow_type",
    [
        pa.int64(),
        pa.int32(),
        pa.uint16(),
        pa.bool_(),
        pa.float32(),
        pa.float64(),
        pa.string(),
        pa.large_string(),
        pa.string_view(),
        pa.binary(),
        pa.date32(),
        pa.date64(),
        pa.decimal128(15, 2),
        pa.timestamp("ms"),
        pa.timestamp("us", tz="UTC"),
    ],
)
def test_manifest_type_names_read_back_as_the_arrow_type(arrow_type: pa.DataType) -> None:
    assert arrow_type_from_text(str(arrow_type)) == arrow_type


def test_unknown_manifest_type_name_is_a_fixture_error() -> None:
    with pytest.raises(FixtureError, match="list<item"):
        arrow_type_from_text("list<item: int64>")


# -- fixture statements --

REF = FixtureRef("tpch", "0.01", "nation")


def test_external_location_is_the_table_prefix_in_s3_or_s3a() -> None:
    storage = S3Storage("fixtures-bucket", "team/a", endpoint_url="http://127.0.0.1:1")
    assert (
        loader.external_location(storage, REF)
        == "s3://fixtures-bucket/team/a/fixtures/tpch/sf0.01/nation/"
    )
    assert loader.external_location(storage, REF, "s3a").startswith("s3a://fixtures-bucket/")


def test_local_storage_cannot_be_read_by_trino(tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match="cannot read this machine's directories"):
        loader.external_location(LocalStorage(tmp_path), REF)


def test_external_table_declares_quoted_typed_columns_and_escaped_location() -> None:
    schema = pa.schema([("n_nationkey", pa.int32()), ('odd"name', pa.string())])
    sql = loader.create_external_table_sql('"hive"."st"."x"', schema, "s3://b/it's/")
    assert sql == (
        'CREATE TABLE "hive"."st"."x" ("n_nationkey" INTEGER, "odd""name" VARCHAR) '
        "WITH (external_location = 's3://b/it''s/', format = 'PARQUET')"
    )


def test_unmappable_column_is_named_in_the_error() -> None:
    schema = pa.schema([("t", pa.time32("s"))])
    with pytest.raises(FixtureError, match="column 't'"):
        loader.create_external_table_sql('"h"."s"."x"', schema, "s3://b/p/")


def test_columns_differing_only_in_case_collide() -> None:
    with pytest.raises(FixtureError, match="appears twice"):
        loader.check_columns("t", pa.schema([("A", pa.int32()), ("a", pa.int32())]))


def test_staging_name_is_crucibles_own_and_versioned() -> None:
    assert loader.staging_name("nation", "abcdef0123456789") == "crucible_stage_nation_abcdef01"


def test_state_rows_are_appended_with_escaped_literals() -> None:
    database = trino.TrinoDatabase("memory", "default")
    load = FixtureTableLoad(REF, "nation")
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    sql = loader.state_insert_sql(database, load, "v'1", 25, when, None, 17)
    assert sql == (
        'INSERT INTO "memory"."default"."crucible_fixture_state" (table_name, dataset, scale, '
        'source_table, data_version, "rows", loaded_at, loaded_by_run, recorded_us) VALUES '
        "('nation', 'tpch', '0.01', 'nation', 'v''1', 25, TIMESTAMP '2026-01-02 03:04:05.678', "
        "CAST(NULL AS VARCHAR), 17)"
    )


def test_rename_qualifies_the_new_name() -> None:
    database = trino.TrinoDatabase("iceberg", "s")
    assert loader.rename_table_sql(database, "t_crucible_load", "t") == (
        'ALTER TABLE "iceberg"."s"."t_crucible_load" RENAME TO "iceberg"."s"."t"'
    )


def test_staging_catalog_names_are_validated() -> None:
    with pytest.raises(FixtureError, match="catalog"):
        loader.validate_name('hive"; DROP', "catalog")
