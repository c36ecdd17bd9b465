"""The Cassandra fixture loader: statements, type mapping, value conversion and streaming.

No CQL server runs on this platform. The streaming tests drive the loader against the
stand-in session of tests/cql_standin.py, which prepares real driver statements and decodes
every bound value with cassandra-driver's deserialisers; failures are the driver's real
exception types.
"""

import asyncio
import datetime
import decimal
from pathlib import Path

import cassandra
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cassandra import protocol
from cassandra.query import UNSET_VALUE
from pydantic import SecretStr

from crucible_dagster.errors import FixtureError, SutError
from crucible_dagster.fixtures import cassandra as loader
from crucible_dagster.fixtures.loading import (
    FixtureTableLoad,
    ReloadPolicy,
    TableLoadReport,
    fixture_source,
)
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.storage import LocalStorage
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.cql_standin import PROTOCOL_VERSION, StandInSession, cql_class

KS = "ks"


def _write_timeout() -> BaseException:
    return cassandra.WriteTimeout(
        "timed out", consistency=1, required_responses=1, write_type=cassandra.WriteType.SIMPLE
    )


# -- type mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrow_type", "expected"),
    [
        (pa.int8(), "tinyint"),
        (pa.int16(), "smallint"),
        (pa.int32(), "int"),
        (pa.int64(), "bigint"),
        (pa.uint8(), "smallint"),
        (pa.uint16(), "int"),
        (pa.uint32(), "bigint"),
        (pa.uint64(), "varint"),
        (pa.float16(), "float"),
        (pa.float32(), "float"),
        (pa.float64(), "double"),
        (pa.decimal128(15, 2), "decimal"),
        (pa.decimal256(60, 10), "decimal"),
        (pa.string(), "text"),
        (pa.large_string(), "text"),
        (pa.string_view(), "text"),
        (pa.dictionary(pa.int32(), pa.string()), "text"),
        (pa.null(), "text"),
        (pa.binary(), "blob"),
        (pa.large_binary(), "blob"),
        (pa.binary(16), "blob"),
        (pa.date32(), "date"),
        (pa.date64(), "date"),
        (pa.timestamp("s"), "timestamp"),
        (pa.timestamp("ns", "UTC"), "timestamp"),
        (pa.time32("ms"), "time"),
        (pa.time64("ns"), "time"),
        (pa.bool_(), "boolean"),
        (pa.list_(pa.int32()), "list<int>"),
        (pa.large_list(pa.string()), "list<text>"),
        (pa.map_(pa.string(), pa.float64()), "map<text, double>"),
    ],
)
def test_arrow_types_map_to_cql_types(arrow_type: pa.DataType, expected: str) -> None:
    assert loader.cql_type(arrow_type) == expected


@pytest.mark.parametrize(
    "arrow_type",
    [
        pa.struct([("a", pa.int32())]),
        pa.duration("s"),
        pa.list_(pa.list_(pa.int32())),
        pa.month_day_nano_interval(),
    ],
)
def test_arrow_types_without_a_cql_mapping_are_a_fixture_error(arrow_type: pa.DataType) -> None:
    with pytest.raises(FixtureError, match=r"CQL|inside a list"):
        loader.cql_type(arrow_type)


# -- value conversion, checked with the driver's own serialisers -------------------------------


def _round_trip(array: pa.Array) -> list[object]:
    """The column's values as a server receives them: converted, encoded by the driver for the
    mapped CQL type, and decoded again."""
    cql_type = cql_class(loader.cql_type(array.type))
    decoded = []
    for value in loader.column_values(array):
        encoded = None if value is None else cql_type.serialize(value, PROTOCOL_VERSION)
        decoded.append(cql_type.from_binary(encoded, PROTOCOL_VERSION))
    return decoded


def test_integers_floats_booleans_and_strings_keep_their_values_and_nulls() -> None:
    assert _round_trip(pa.array([-128, None, 127], pa.int8())) == [-128, None, 127]
    assert _round_trip(pa.array([2**63 - 1, None], pa.int64())) == [2**63 - 1, None]
    assert _round_trip(pa.array([2**64 - 1], pa.uint64())) == [2**64 - 1]
    assert _round_trip(pa.array([65535], pa.uint16())) == [65535]
    assert _round_trip(pa.array([1.5, None], pa.float16())) == [1.5, None]
    assert _round_trip(pa.array([0.1], pa.float64())) == [0.1]
    assert _round_trip(pa.array([True, None, False])) == [True, None, False]
    assert _round_trip(pa.array(["it's", 'say "hi"', None, "ünï"])) == [
        "it's",
        'say "hi"',
        None,
        "ünï",
    ]
    assert _round_trip(pa.array(["a", "b", "a"]).dictionary_encode()) == ["a", "b", "a"]
    assert _round_trip(pa.array([None, None], pa.null())) == [None, None]


def test_decimals_keep_their_exact_digits() -> None:
    values = [decimal.Decimal("12345.67"), None, decimal.Decimal("-0.01")]
    assert _round_trip(pa.array(values, pa.decimal128(15, 2))) == values


def test_dates_before_and_after_the_epoch_keep_their_day() -> None:
    days = [datetime.date(1969, 12, 31), datetime.date(1992, 1, 2), None]
    decoded = _round_trip(pa.array(days, pa.date32()))
    assert [None if d is None else d.date() for d in decoded] == days  # type: ignore[attr-defined]
    decoded64 = _round_trip(pa.array(days, pa.date64()))
    assert [None if d is None else d.date() for d in decoded64] == days  # type: ignore[attr-defined]


def test_timestamps_become_utc_milliseconds_truncating_finer_units() -> None:
    naive = pa.array([datetime.datetime(1998, 8, 2, 12, 30, 1, 123456), None], pa.timestamp("us"))
    assert _round_trip(naive) == [datetime.datetime(1998, 8, 2, 12, 30, 1, 123000), None]
    berlin = pa.array([datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC)]).cast(
        pa.timestamp("ns", "Europe/Berlin")
    )
    assert _round_trip(berlin) == [datetime.datetime(2024, 1, 1, 12)]  # the UTC wall time


def test_times_blobs_lists_and_maps_convert() -> None:
    times = pa.array([datetime.time(23, 59, 58, 999999), None], pa.time64("us"))
    decoded = _round_trip(times)
    assert str(decoded[0]) == "23:59:58.999999000" and decoded[1] is None
    assert _round_trip(pa.array([b"\x00\xff", None], pa.binary())) == [b"\x00\xff", None]
    assert _round_trip(pa.array([[1, 2], None, []], pa.list_(pa.int32()))) == [[1, 2], None, []]
    maps = pa.array([[("a", 1.5)], None], pa.map_(pa.string(), pa.float64()))
    assert [None if m is None else dict(m) for m in _round_trip(maps)] == [{"a": 1.5}, None]  # type: ignore[call-overload]


def test_rows_number_the_generated_key_send_nulls_unset_and_refuse_null_keys() -> None:
    batch = pa.record_batch({"name": pa.array(["a", None]), "n": pa.array([1, 2], pa.int32())})
    generated = loader.TableLayout(partition_key=(loader.ROW_KEY,), generated=True)
    assert loader.batch_rows(batch, generated, 10) == [(10, "a", 1), (11, UNSET_VALUE, 2)]
    assert loader.batch_rows(batch, generated, 0, unset_nulls=False)[1] == (1, None, 2)
    keyed = loader.TableLayout(partition_key=("name",))
    with pytest.raises(FixtureError, match="row 6 has no value for key column 'name'"):
        loader.batch_rows(batch, keyed, 5)


# -- statements ---------------------------------------------------------------------------------


def test_keyspace_is_created_with_simple_strategy_and_factor_one_by_default() -> None:
    assert loader.create_keyspace_cql("tpch") == (
        "CREATE KEYSPACE IF NOT EXISTS \"tpch\" WITH replication = {'class': 'SimpleStrategy', "
        "'replication_factor': 1}"
    )
    assert loader.create_keyspace_cql(
        "tpch", {"class": "NetworkTopologyStrategy", "dc1": 3, "it's": "2"}
    ) == (
        "CREATE KEYSPACE IF NOT EXISTS \"tpch\" WITH replication = {'class': "
        "'NetworkTopologyStrategy', 'dc1': 3, 'it''s': '2'}"
    )
    with pytest.raises(FixtureError, match="needs a 'class'"):
        loader.create_keyspace_cql("tpch", {"dc1": 3})


@pytest.mark.parametrize("name", ['x"; DROP KEYSPACE system; --', "1abc", "", "a" * 49])
def test_keyspace_and_table_names_that_cql_refuses_are_a_fixture_error(name: str) -> None:
    with pytest.raises(FixtureError, match="invalid CQL name"):
        loader.create_keyspace_cql(name)
    with pytest.raises(FixtureError, match="invalid CQL name"):
        loader.CqlFixtureLoader(
            StandInSession(), name, LocalStorage(Path("/nonexistent")), sut_key="k"
        )


def test_tpch_tables_get_their_known_keys_and_others_a_generated_row_key() -> None:
    lineitem = pa.schema([("l_orderkey", pa.int64()), ("l_linenumber", pa.int32())])
    layout = loader.table_layout("tpch", "lineitem", lineitem)
    assert layout == loader.TableLayout(("l_orderkey",), ("l_linenumber",))
    assert loader.create_table_cql(KS, "lineitem", lineitem, layout) == (
        'CREATE TABLE "ks"."lineitem" ("l_orderkey" bigint, "l_linenumber" int, '
        'PRIMARY KEY (("l_orderkey"), "l_linenumber"))'
    )
    for table, key in {
        "orders": ("o_orderkey",),
        "customer": ("c_custkey",),
        "part": ("p_partkey",),
        "supplier": ("s_suppkey",),
        "nation": ("n_nationkey",),
        "region": ("r_regionkey",),
    }.items():
        schema = pa.schema([(key[0], pa.int64())])
        assert loader.table_layout("tpch", table, schema).partition_key == key
    partsupp = pa.schema([("ps_partkey", pa.int64()), ("ps_suppkey", pa.int64())])
    assert loader.table_layout("tpch", "partsupp", partsupp).key_columns == (
        "ps_partkey",
        "ps_suppkey",
    )

    other = pa.schema([("id", pa.int64()), ('we"ird', pa.string())])
    generated = loader.table_layout("custom", "lineitem", other)
    assert generated.generated
    assert loader.create_table_cql(KS, "t", other, generated) == (
        'CREATE TABLE "ks"."t" ("crucible_row" bigint, "id" bigint, "we""ird" text, '
        'PRIMARY KEY (("crucible_row")))'
    )
    with pytest.raises(FixtureError, match="column named 'crucible_row'"):
        loader.table_layout("custom", "t", pa.schema([("crucible_row", pa.int32())]))


def test_insert_state_and_drop_statements() -> None:
    assert loader.insert_cql(KS, "t", ["crucible_row", "a"]) == (
        'INSERT INTO "ks"."t" ("crucible_row", "a") VALUES (?, ?)'
    )
    assert loader.state_table_cql(KS) == (
        'CREATE TABLE IF NOT EXISTS "ks"."crucible_fixture_state" ("table_name" text PRIMARY KEY, '
        '"dataset" text, "scale" text, "source_table" text, "data_version" text, '
        '"row_count" bigint, "loaded_at" timestamp, "loaded_by_run" text)'
    )
    assert loader.select_state_cql(KS) == (
        'SELECT "data_version", "row_count" FROM "ks"."crucible_fixture_state" '
        'WHERE "table_name" = ?'
    )
    assert loader.record_state_cql(KS) == (
        'INSERT INTO "ks"."crucible_fixture_state" ("table_name", "dataset", "scale", '
        '"source_table", "data_version", "row_count", "loaded_at", "loaded_by_run") '
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    assert loader.drop_table_cql(KS, "t") == 'DROP TABLE IF EXISTS "ks"."t"'


# -- streaming against the stand-in session -----------------------------------------------------


def _store(
    tmp_path: Path, table: str, files: list[pa.Table], dataset: str = "custom"
) -> LocalStorage:
    tmp_path.mkdir(parents=True, exist_ok=True)
    storage = LocalStorage(tmp_path / "store")
    for number, data in enumerate(files):
        local = tmp_path / f"{table}-{number}.parquet"
        pq.write_table(data, local, row_group_size=7)
        storage.put_file(f"fixtures/{dataset}/sf1/{table}/part-{number}.parquet", local)
    return storage


def _load(
    session: StandInSession,
    storage: LocalStorage,
    table: str,
    *,
    dataset: str = "custom",
    reload: ReloadPolicy = "auto",
    batch_rows: int = loader.DEFAULT_BATCH_ROWS,
    max_in_flight: int = loader.DEFAULT_MAX_IN_FLIGHT,
) -> TableLoadReport:
    return _load_counting_retries(
        session, storage, table, dataset, reload, batch_rows, max_in_flight
    )[0]


def _load_counting_retries(
    session: StandInSession,
    storage: LocalStorage,
    table: str,
    dataset: str = "custom",
    reload: ReloadPolicy = "auto",
    batch_rows: int = loader.DEFAULT_BATCH_ROWS,
    max_in_flight: int = loader.DEFAULT_MAX_IN_FLIGHT,
) -> tuple[TableLoadReport, int]:
    load = FixtureTableLoad(FixtureRef(dataset, "1", table), table, reload)
    source = fixture_source(storage, load.ref, {})
    cql_loader = loader.CqlFixtureLoader(
        session,
        KS,
        storage,
        sut_key="cassandra://127.0.0.1:9042/ks",
        run_id="r1",
        batch_rows=batch_rows,
        max_in_flight=max_in_flight,
        retry_backoff_s=0.001,
    )

    async def run() -> TableLoadReport:
        await cql_loader.prepare_keyspace()
        return await cql_loader.load(load, source)

    return asyncio.run(run()), cql_loader.retries


def _people(start: int, count: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + count), pa.int32()),
            "name": pa.array(
                [None if i % 5 == 0 else f"p{i}" for i in range(start, start + count)]
            ),
            "balance": pa.array(
                [decimal.Decimal(i) / 100 for i in range(start, start + count)],
                pa.decimal128(12, 2),
            ),
            "born": pa.array(
                [
                    datetime.date(1970, 1, 1) + datetime.timedelta(days=i)
                    for i in range(start, start + count)
                ]
            ),
        }
    )


def test_streaming_loads_every_row_with_typed_values_across_files(tmp_path: Path) -> None:
    storage = _store(tmp_path, "people", [_people(0, 23), _people(23, 17)])
    session = StandInSession(delay_s=0.001)
    report = _load(session, storage, "people", batch_rows=5, max_in_flight=4)

    assert (report.action, report.rows) == ("loaded", 40)
    rows = sorted(session.rows(KS, "people"), key=lambda r: r["crucible_row"])  # type: ignore[arg-type,return-value]
    assert [r["crucible_row"] for r in rows] == list(range(40))
    assert [r["id"] for r in rows] == list(range(40))  # file order numbers the key
    assert "name" not in rows[5]  # a null is sent unset, so nothing is written for it
    assert rows[6]["name"] == "p6"
    assert rows[6]["balance"] == decimal.Decimal("0.06")
    assert rows[6]["born"].date() == datetime.date(1970, 1, 7)  # type: ignore[attr-defined]
    (state,) = session.rows(KS, "crucible_fixture_state")
    assert state["table_name"] == "people" and state["row_count"] == 40
    assert state["data_version"] == report.data_version and state["loaded_by_run"] == "r1"
    assert session.keyspaces[KS].endswith("{'class': 'SimpleStrategy', 'replication_factor': 1}")


def test_no_more_inserts_than_the_window_are_ever_in_flight(tmp_path: Path) -> None:
    storage = _store(tmp_path, "people", [_people(0, 60)])
    session = StandInSession(delay_s=0.01)
    report = _load(session, storage, "people", batch_rows=25, max_in_flight=3)
    assert report.rows == 60
    assert session.max_in_flight == 3  # the window filled, and never overflowed


def test_timed_out_inserts_are_retried_and_stored_once(tmp_path: Path) -> None:
    storage = _store(tmp_path, "people", [_people(0, 10)])

    def flaky(cql: str, values: dict[str, object], attempt: int) -> BaseException | None:
        if cql.startswith('INSERT INTO "ks"."people"') and values["id"] in (2, 7) and attempt <= 2:
            return _write_timeout() if values["id"] == 2 else cassandra.OperationTimedOut()
        return None

    session = StandInSession(failures=flaky)
    report, retries = _load_counting_retries(session, storage, "people", max_in_flight=4)
    assert report.rows == 10 and len(session.rows(KS, "people")) == 10
    assert retries == 4


def test_an_insert_that_keeps_timing_out_fails_the_load_naming_table_and_file(
    tmp_path: Path,
) -> None:
    storage = _store(tmp_path, "people", [_people(0, 10)])

    def stuck(cql: str, values: dict[str, object], attempt: int) -> BaseException | None:
        return _write_timeout() if values.get("id") == 3 else None

    with pytest.raises(FixtureError) as caught:
        _load(session := StandInSession(failures=stuck), storage, "people")
    message = str(caught.value)
    assert message.startswith(
        f"loading {storage.uri('fixtures/custom/sf1/people/part-0.parquet')} into ks.people "
        "failed at row 3 of the file: WriteTimeout:"
    )
    assert session.attempts[next(k for k in session.attempts if "('id', '3')" in str(k))] == (
        loader.INSERT_ATTEMPTS
    )


def test_a_rejected_insert_stops_the_load_without_retrying(tmp_path: Path) -> None:
    storage = _store(tmp_path, "people", [_people(0, 200)])
    refused = protocol.InvalidRequestException(
        code=0x2200, message="Invalid UTF-8", info=None
    ).to_exception()

    def reject(cql: str, values: dict[str, object], attempt: int) -> BaseException | None:
        return refused if values.get("id") == 50 else None

    session = StandInSession(failures=reject, delay_s=0.001)
    with pytest.raises(
        FixtureError, match=r'failed at row 50 of the file: InvalidRequest:.*"Invalid UTF-8"'
    ):
        _load(session, storage, "people", batch_rows=10, max_in_flight=8)
    # New inserts stop soon after the failure: at most the window and one batch more.
    sent = sum(1 for c in session.executed if c.startswith('INSERT INTO "ks"."people"'))
    assert sent <= 50 + 1 + 8 + 10
    (state,) = session.rows(KS, "crucible_fixture_state")
    assert str(state["data_version"]).startswith(loader.LOADING_PREFIX)


def test_same_data_version_is_skipped_and_reload_always_replaces_the_table(tmp_path: Path) -> None:
    storage = _store(tmp_path, "people", [_people(0, 8)])
    session = StandInSession()
    first = _load(session, storage, "people")
    executed = len(session.executed)

    again = _load(session, storage, "people")
    assert (again.action, again.rows) == ("skipped", 8)
    assert not any(
        c.startswith(("DROP", 'INSERT INTO "ks"."people"')) for c in session.executed[executed:]
    )

    replaced = _load(session, storage, "people", reload="always")
    assert (replaced.action, replaced.rows) == ("loaded", 8)
    assert replaced.replaced_data_version == first.data_version
    assert 'DROP TABLE IF EXISTS "ks"."people"' in session.executed[executed:]


def test_a_table_crucible_did_not_create_is_never_touched(tmp_path: Path) -> None:
    storage = _store(tmp_path, "people", [_people(0, 3)])
    session = StandInSession()
    session.keyspaces[KS] = "theirs"
    asyncio.run(_run(session, 'CREATE TABLE "ks"."people" ("id" int PRIMARY KEY)'))
    reloads: tuple[ReloadPolicy, ...] = ("auto", "always")
    for reload in reloads:
        with pytest.raises(FixtureError, match="was not created by Crucible"):
            _load(session, storage, "people", reload=reload)
    assert not any(c.startswith(("DROP", 'INSERT INTO "ks"."people"')) for c in session.executed)


async def _run(session: StandInSession, cql: str) -> None:
    from crucible_dagster.suts import cassandra as sut

    await sut.run_statement(session, cql)


def test_another_version_is_an_error_unless_reload_always_or_half_loaded(tmp_path: Path) -> None:
    session = StandInSession()
    _load(session, _store(tmp_path / "a", "people", [_people(0, 3)]), "people")
    changed = _store(tmp_path / "b", "people", [_people(0, 4)])
    with pytest.raises(FixtureError, match="set reload: always"):
        _load(session, changed, "people")

    # A load that died midway leaves its marker; the next load replaces the table anyway.
    state = session.tables[(KS, "crucible_fixture_state")].rows[("people",)]
    state["data_version"] = loader.LOADING_PREFIX + "pending"
    report = _load(session, changed, "people")
    assert (report.action, report.rows, report.replaced_data_version) == ("loaded", 4, None)


def test_tpch_tables_are_keyed_and_a_null_key_names_the_row(tmp_path: Path) -> None:
    orders = pa.table(
        {"o_orderkey": pa.array([1, 2, None], pa.int64()), "o_comment": ["a", "b", "c"]}
    )
    storage = _store(tmp_path, "orders", [orders], dataset="tpch")
    session = StandInSession()
    with pytest.raises(FixtureError, match="row 2 has no value for key column 'o_orderkey'"):
        _load(session, storage, "orders", dataset="tpch")
    assert session.tables[(KS, "orders")].key == ("o_orderkey",)


def test_loading_without_a_server_is_a_clear_sut_error(tmp_path: Path) -> None:
    storage = _store(tmp_path, "people", [_people(0, 3)])
    # The real driver against a loopback port nobody listens on.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = SutTarget(
        sut_identity("cassandra", "127.0.0.1", port, KS), "u", SecretStr("pw-canary"),
        connect_timeout_s=1,
    )  # fmt: skip
    load = FixtureTableLoad(FixtureRef("custom", "1", "people"), "people")
    with pytest.raises(SutError, match="connection refused") as caught:
        asyncio.run(loader.load_fixture_tables(target, storage, [load]))
    assert "pw-canary" not in str(caught.value)
