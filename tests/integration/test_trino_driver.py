"""The Trino driver through the real `trino` client against the stand-in server.

The stand-in (tests/trino_standin.py) speaks Trino's client protocol over HTTP and runs the SQL
on DuckDB; it is not Trino. These tests prove the driver's protocol use, its statements and
their order, and its error handling; not Trino's SQL semantics.
"""

import asyncio
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from crucible_dagster.engine import EngineQuery, LoadShape, run_load
from crucible_dagster.engine.model import EngineParam
from crucible_dagster.errors import FixtureError, SutError, ValidationError
from crucible_dagster.fixtures import trino as loader
from crucible_dagster.fixtures.loading import FixtureTableLoad, TableLoadReport
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.fixtures.tpch import generate_tpch
from crucible_dagster.local_postgres import free_port
from crucible_dagster.params import parse_param
from crucible_dagster.storage import LocalStorage, S3Storage
from crucible_dagster.suts import trino
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity
from tests.certificates import make_certificates
from tests.servers_s3 import S3Server
from tests.trino_standin import TrinoStandIn

pytestmark = pytest.mark.integration

PASSWORD = "trino-canary-" + "pw"


@pytest.fixture
def standin() -> Iterator[TrinoStandIn]:
    server = TrinoStandIn(page_rows=3).start()
    yield server
    server.stop()


def _target(port: int, database: str = "memory.default", **kwargs: object) -> SutTarget:
    return SutTarget(sut_identity("trino", "127.0.0.1", port, database), "crucible", **kwargs)  # type: ignore[arg-type]


def _query(name: str, sql: str, line: int = 1, params: tuple[EngineParam, ...] = ()) -> EngineQuery:
    return EngineQuery(name, sql, "workloads/trino.sql", line, params=params)


def _connect_error(target: SutTarget) -> str:
    with pytest.raises(SutError) as error:
        asyncio.run(trino.connect(target))
    assert PASSWORD not in str(error.value) and PASSWORD not in repr(error.value)
    return str(error.value)


async def _run(target: SutTarget, sql: str, *args: object) -> object:
    session = await trino.connect(target)
    try:
        execute = await trino.prepare(session, sql)
        return await execute(*args)
    finally:
        await trino.close(session)


# -- sessions --


def test_session_sends_user_source_tags_schema_and_time_limit(standin: TrinoStandIn) -> None:
    target = _target(standin.port, statement_timeout_s=2.5)
    rows = asyncio.run(_run(target, "SELECT ? + 1, ?", 41, "it's"))

    assert rows == [[42, "it's"]]
    last = standin.posts()[-1]
    assert last.body == "EXECUTE IMMEDIATE 'SELECT ? + 1, ?' USING 41,'it''s'"
    assert last.headers["x-trino-user"] == "crucible"
    assert last.headers["x-trino-source"] == "crucible"
    assert last.headers["x-trino-client-tags"] == "crucible"
    assert last.headers["x-trino-catalog"] == "memory"
    assert last.headers["x-trino-schema"] == "default"
    assert last.headers["x-trino-session"] == "query_max_run_time=2500ms"
    assert "authorization" not in last.headers


def test_driver_follows_next_uri_through_every_page(standin: TrinoStandIn) -> None:
    standin.query("CREATE TABLE memory.main.ten AS SELECT range AS x FROM range(10)")
    sql = "SELECT x FROM memory.main.ten ORDER BY x"

    rows = asyncio.run(_run(_target(standin.port), sql))

    assert rows == [[x] for x in range(10)]
    assert standin.fetches(sql) == 4  # pages of 3, 3, 3 and 1 rows


def test_old_server_without_execute_immediate_gets_prepare_execute_deallocate() -> None:
    server = TrinoStandIn(execute_immediate=False).start()
    try:
        rows = asyncio.run(_run(_target(server.port), "SELECT ? * 2", 21))
        statements = server.statements
    finally:
        server.stop()

    assert rows == [[42]]
    assert statements[0] == "EXECUTE IMMEDIATE 'SELECT 1'"  # the probe, answered with an error
    prepare, execute, deallocate = statements[-3:]
    name = re.fullmatch(r"PREPARE (st_\w+) FROM SELECT \? \* 2", prepare)
    assert name is not None
    assert execute == f"EXECUTE {name.group(1)} USING 21"
    assert deallocate == f"DEALLOCATE PREPARE {name.group(1)}"


def test_refused_port_says_connection_refused() -> None:
    assert "connection refused" in _connect_error(_target(free_port()))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections but never answers (a stalled coordinator)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_server_that_never_answers_times_out(silent_port: int) -> None:
    target = _target(silent_port, connect_timeout_s=0.5)
    assert "no answer within 0.5s" in _connect_error(target)


def test_unknown_catalog_and_schema_are_named(standin: TrinoStandIn) -> None:
    assert "catalog 'nocat' does not exist" in _connect_error(_target(standin.port, "nocat.x"))
    message = _connect_error(_target(standin.port, "memory.nope"))
    assert "schema 'nope' does not exist in catalog 'memory'" in message


@pytest.fixture
def tls_standin(tmp_path: Path) -> Iterator[tuple[TrinoStandIn, Path]]:
    ca = make_certificates(tmp_path / "certs")
    server = TrinoStandIn(
        password=PASSWORD, tls_files=(ca.parent / "server.crt", ca.parent / "server.key")
    ).start()
    yield server, ca
    server.stop()


def test_password_goes_as_basic_auth_over_verified_https(
    tls_standin: tuple[TrinoStandIn, Path],
) -> None:
    server, ca = tls_standin
    target = _target(server.port, password=SecretStr(PASSWORD), tls=TlsSettings(ca_file=str(ca)))

    assert asyncio.run(_run(target, "SELECT 7")) == [[7]]
    assert server.posts()[-1].headers["authorization"].startswith("Basic ")


def test_wrong_password_says_access_denied_without_the_password(
    tls_standin: tuple[TrinoStandIn, Path],
) -> None:
    server, ca = tls_standin
    target = _target(
        server.port, password=SecretStr("wrong-" + PASSWORD), tls=TlsSettings(ca_file=str(ca))
    )
    assert "access denied for user 'crucible' (wrong password?)" in _connect_error(target)


def test_untrusted_certificate_fails_the_tls_handshake(
    tls_standin: tuple[TrinoStandIn, Path],
) -> None:
    server, _ = tls_standin
    target = _target(server.port, password=SecretStr(PASSWORD), tls=TlsSettings())
    assert "the TLS handshake failed" in _connect_error(target)


# -- preflight --


def test_preflight_reports_every_rejected_query_with_file_and_line(standin: TrinoStandIn) -> None:
    standin.query("CREATE TABLE memory.main.t (id INTEGER, name VARCHAR)")
    spec = parse_param("k {type: int, range: [1, 9]}")[1]
    queries = [
        _query("fine", "SELECT id FROM t WHERE name LIKE 'a%'", line=2),
        _query("typo", "SELEC id FROM t", line=5),
        _query("missing", "SELECT * FROM no_such_table", line=9),
        _query(
            "bad_column",
            "SELECT id\nFROM t WHERE nope = ?",
            line=12,
            params=(EngineParam("k", spec),),
        ),
    ]

    with pytest.raises(ValidationError) as error:
        asyncio.run(trino.preflight(_target(standin.port), queries))

    problems = {p.field: p for p in error.value.problems}
    assert set(problems) == {"typo", "missing", "bad_column"}
    assert str(problems["typo"].location) == "workloads/trino.sql:5"
    assert "SYNTAX_ERROR (USER_ERROR)" in problems["typo"].message
    assert "(line 1, column 1 of the query)" in problems["typo"].message
    assert str(problems["missing"].location) == "workloads/trino.sql:9"
    assert "TABLE_NOT_FOUND" in problems["missing"].message
    assert "no_such_table" in problems["missing"].message
    assert str(problems["bad_column"].location) == "workloads/trino.sql:12"
    assert "COLUMN_NOT_FOUND" in problems["bad_column"].message
    assert "(line 2," in problems["bad_column"].message
    sent = [s for s in standin.statements if "VALIDATE" in s]
    assert sent[0] == "EXPLAIN (TYPE VALIDATE)\nSELECT id FROM t WHERE name LIKE 'a%'"
    assert sent[-1].startswith("EXECUTE IMMEDIATE 'EXPLAIN (TYPE VALIDATE)\nSELECT id")
    assert sent[-1].endswith("USING 1") or re.search(r"USING \d+$", sent[-1])


def test_preflight_accepts_valid_queries_without_running_them(standin: TrinoStandIn) -> None:
    standin.query("CREATE TABLE memory.main.t (id INTEGER, note VARCHAR)")
    queries = [_query("insert", "INSERT INTO t VALUES (1, 'x')")]

    asyncio.run(trino.preflight(_target(standin.port), queries))

    assert standin.query("SELECT count(*) FROM memory.main.t") == [(0,)]


def test_preflight_on_unreachable_server_is_a_sut_error() -> None:
    with pytest.raises(SutError, match="connection refused"):
        asyncio.run(trino.preflight(_target(free_port()), [_query("q", "SELECT 1")]))


# -- the engine --


def test_closed_load_over_two_shards_measures_both_queries(standin: TrinoStandIn) -> None:
    standin.query("CREATE TABLE memory.main.n AS SELECT range AS x FROM range(20)")
    spec = parse_param("k {type: int, range: [1, 15]}")[1]
    queries = [
        _query("one", "SELECT 1"),
        _query("paged", "SELECT x FROM n WHERE x > ?", params=(EngineParam("k", spec),)),
    ]
    shape = LoadShape(concurrency=4, ramp_up_s=0.2, hold_for_s=1.5, shards=2, seed=3)

    measurement = run_load(_target(standin.port), queries, shape)

    assert measurement.shards == 2
    assert [q.name for q in measurement.queries] == ["one", "paged"]
    for query in measurement.queries:
        assert query.count > 0
        assert query.errors == 0, query.first_error
        assert query.histogram.get_total_count() == query.count


def test_failing_query_is_counted_by_its_trino_error_name(standin: TrinoStandIn) -> None:
    queries = [_query("ok", "SELECT 1"), _query("missing", "SELECT * FROM no_such_table")]
    shape = LoadShape(concurrency=2, hold_for_s=1.0, shards=1, seed=1)

    ok, missing = run_load(_target(standin.port), queries, shape).queries

    assert missing.count > 0
    assert missing.errors_by_kind == {"TABLE_NOT_FOUND": missing.count}
    assert missing.first_error is not None
    assert missing.first_error.startswith("TABLE_NOT_FOUND (USER_ERROR): ")
    assert ok.count > 0 and ok.errors == 0


# -- fixture load --


@pytest.fixture(scope="module")
def tpch_s3(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> tuple[S3Storage, FixtureManifest]:
    storage = s3_server.storage(prefix="team")
    return storage, generate_tpch(storage, "0.01", work_dir=tmp_path_factory.mktemp("tpch-gen"))


def _reading_from(storage: S3Storage, work_dir: Path) -> Callable[[str], Path]:
    """How the stand-in reads an `s3://` location: downloads its Parquet objects, as Trino's
    Hive connector would read them in place."""
    bucket_prefix = f"s3://{storage.bucket}/{storage.prefix}"

    def locate(location: str) -> Path:
        assert location.startswith(bucket_prefix), location
        prefix = location[len(bucket_prefix) :]
        folder = Path(tempfile.mkdtemp(dir=work_dir))
        for info in storage.list(prefix):
            if info.key.endswith(".parquet"):
                storage.download_file(info.key, folder / Path(info.key).name)
        return folder

    return locate


@pytest.fixture
def loading_standin(
    tpch_s3: tuple[S3Storage, FixtureManifest], tmp_path: Path
) -> Iterator[TrinoStandIn]:
    storage, _ = tpch_s3
    server = TrinoStandIn(locations=_reading_from(storage, tmp_path)).start()
    yield server
    server.stop()


def _loads(*tables: str, reload: str = "auto") -> list[FixtureTableLoad]:
    return [FixtureTableLoad(FixtureRef("tpch", "0.01", t), t, reload) for t in tables]  # type: ignore[arg-type]


def _load(
    server: TrinoStandIn, storage: S3Storage, loads: list[FixtureTableLoad]
) -> list[TableLoadReport]:
    return asyncio.run(
        loader.load_fixture_tables(_target(server.port, "memory.tpch"), storage, loads, run_id="r1")
    )


def _load_statements(server: TrinoStandIn) -> list[str]:
    """What the loader sent, without the client's probe."""
    return [s for s in server.statements if s != "EXECUTE IMMEDIATE 'SELECT 1'"]


def test_fixture_load_has_trino_read_the_parquet_in_place(
    loading_standin: TrinoStandIn, tpch_s3: tuple[S3Storage, FixtureManifest]
) -> None:
    storage, manifest = tpch_s3
    version = manifest.tables["nation"]

    (report,) = _load(loading_standin, storage, _loads("nation"))

    assert report.action == "loaded" and report.rows == version.rows == 25
    assert loading_standin.query("SELECT count(*) FROM memory.tpch.nation") == [(25,)]
    stage = f'"hive"."crucible_staging"."crucible_stage_nation_{report.data_version[:8]}"'
    location = f"s3://{storage.bucket}/team/fixtures/tpch/sf0.01/nation/"
    state = '"memory"."tpch"."crucible_fixture_state"'
    sent = _load_statements(loading_standin)
    assert sent[:3] == [
        'CREATE SCHEMA IF NOT EXISTS "memory"."tpch"',
        'CREATE SCHEMA IF NOT EXISTS "hive"."crucible_staging"',
        f"CREATE TABLE IF NOT EXISTS {state} (table_name VARCHAR, dataset VARCHAR, scale VARCHAR, "
        'source_table VARCHAR, data_version VARCHAR, "rows" BIGINT, loaded_at TIMESTAMP, '
        "loaded_by_run VARCHAR, recorded_us BIGINT)",
    ]
    assert sent[3].startswith(f'SELECT data_version, "rows", recorded_us FROM {state} WHERE')
    assert sent[4].startswith('SELECT count(*) FROM "memory".information_schema.tables')
    assert sent[5].startswith(f"INSERT INTO {state}") and "'loading:" in sent[5]
    assert sent[6:10] == [
        f"DROP TABLE IF EXISTS {stage}",
        f'CREATE TABLE {stage} ("n_nationkey" BIGINT, "n_name" VARCHAR, "n_regionkey" BIGINT, '
        f"\"n_comment\" VARCHAR) WITH (external_location = '{location}', format = 'PARQUET')",
        f'CREATE TABLE "memory"."tpch"."nation" AS SELECT * FROM {stage}',
        f"DROP TABLE IF EXISTS {stage}",
    ]
    assert sent[10].startswith(f"INSERT INTO {state}")
    assert f"'{report.data_version}', 25," in sent[10] and "'r1'" in sent[10]
    assert len(sent) == 11


def test_second_load_of_the_same_version_is_skipped(
    loading_standin: TrinoStandIn, tpch_s3: tuple[S3Storage, FixtureManifest]
) -> None:
    storage, _ = tpch_s3
    _load(loading_standin, storage, _loads("region"))
    before = len(loading_standin.statements)

    (report,) = _load(loading_standin, storage, _loads("region"))

    assert report.action == "skipped" and report.rows == 5
    new = [s for s in loading_standin.statements[before:] if "SELECT 1'" not in s]
    assert not any(s.startswith(('CREATE TABLE "', "DROP", "INSERT")) for s in new)


def test_reload_always_builds_beside_and_renames_into_place(
    loading_standin: TrinoStandIn, tpch_s3: tuple[S3Storage, FixtureManifest]
) -> None:
    storage, _ = tpch_s3
    (first,) = _load(loading_standin, storage, _loads("region"))
    before = len(loading_standin.statements)

    (report,) = _load(loading_standin, storage, _loads("region", reload="always"))

    assert report.action == "loaded" and report.replaced_data_version == first.data_version
    stage = f'"hive"."crucible_staging"."crucible_stage_region_{report.data_version[:8]}"'
    building = '"memory"."tpch"."region_crucible_load"'
    ddl = [
        s
        for s in loading_standin.statements[before:]
        if s.startswith(("DROP", "ALTER", 'CREATE TABLE "memory"."tpch"."region'))
    ]
    assert ddl == [
        f"DROP TABLE IF EXISTS {stage}",
        f"DROP TABLE IF EXISTS {building}",
        f"CREATE TABLE {building} AS SELECT * FROM {stage}",
        'DROP TABLE "memory"."tpch"."region"',
        f'ALTER TABLE {building} RENAME TO "memory"."tpch"."region"',
        f"DROP TABLE IF EXISTS {stage}",
    ]
    assert loading_standin.query("SELECT count(*) FROM memory.tpch.region") == [(5,)]


def test_table_crucible_did_not_create_is_left_alone(
    loading_standin: TrinoStandIn, tpch_s3: tuple[S3Storage, FixtureManifest]
) -> None:
    storage, _ = tpch_s3
    loading_standin.query("CREATE SCHEMA memory.tpch")
    loading_standin.query("CREATE TABLE memory.tpch.nation (keep INTEGER)")
    loading_standin.query("INSERT INTO memory.tpch.nation VALUES (1)")

    with pytest.raises(FixtureError, match="was not created by Crucible"):
        _load(loading_standin, storage, _loads("nation", reload="always"))

    assert loading_standin.query("SELECT keep FROM memory.tpch.nation") == [(1,)]


def test_local_storage_is_refused_before_any_statement(
    standin: TrinoStandIn, tmp_path: Path
) -> None:
    with pytest.raises(FixtureError, match="cannot read this machine's directories"):
        asyncio.run(
            loader.load_fixture_tables(
                _target(standin.port, "memory.tpch"), LocalStorage(tmp_path), _loads("nation")
            )
        )
    assert standin.statements == []
