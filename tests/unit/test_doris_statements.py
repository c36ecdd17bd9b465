"""The Doris/StarRocks loader's statements, types and Stream Load requests, without a server.

No Doris or StarRocks server runs on this platform; these pin the text sent to one.
"""

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from pydantic import SecretStr

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures import doris, stream_load
from crucible_dagster.fixtures.loading import FixtureTableLoad
from crucible_dagster.fixtures.manifest import arrow_type_from_text
from crucible_dagster.fixtures.refs import FixtureRef

SECRET = "s3cr3t-canary-key"


# -- types --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrow_type", "on_doris", "on_starrocks"),
    [
        (pa.bool_(), "BOOLEAN", "BOOLEAN"),
        (pa.int8(), "TINYINT", "TINYINT"),
        (pa.int16(), "SMALLINT", "SMALLINT"),
        (pa.int32(), "INT", "INT"),
        (pa.int64(), "BIGINT", "BIGINT"),
        (pa.uint8(), "SMALLINT", "SMALLINT"),
        (pa.uint16(), "INT", "INT"),
        (pa.uint32(), "BIGINT", "BIGINT"),
        (pa.uint64(), "LARGEINT", "LARGEINT"),
        (pa.float16(), "FLOAT", "FLOAT"),
        (pa.float32(), "FLOAT", "FLOAT"),
        (pa.float64(), "DOUBLE", "DOUBLE"),
        (pa.decimal128(15, 2), "DECIMALV3(15,2)", "DECIMAL(15,2)"),
        (pa.decimal128(38, 0), "DECIMALV3(38,0)", "DECIMAL(38,0)"),
        (pa.date32(), "DATE", "DATE"),
        (pa.date64(), "DATE", "DATE"),
        (pa.timestamp("us"), "DATETIME(6)", "DATETIME"),
        (pa.timestamp("ns", tz="UTC"), "DATETIME(6)", "DATETIME"),
        (pa.string(), "STRING", "STRING"),
        (pa.large_string(), "STRING", "STRING"),
        (pa.dictionary(pa.int32(), pa.string()), "STRING", "STRING"),
        (pa.null(), "STRING", "STRING"),
    ],
)
def test_every_supported_arrow_type_has_its_doris_and_starrocks_type(
    arrow_type: pa.DataType, on_doris: str, on_starrocks: str
) -> None:
    assert doris.mpp_type(arrow_type, "doris") == on_doris
    assert doris.mpp_type(arrow_type, "starrocks") == on_starrocks


def test_string_key_columns_become_varchar_and_floats_cannot_be_keys() -> None:
    assert doris.mpp_type(pa.string(), "doris", key=True) == "VARCHAR(65533)"
    assert doris.mpp_type(pa.int64(), "doris", key=True) == "BIGINT"
    with pytest.raises(FixtureError, match="cannot be a key column"):
        doris.mpp_type(pa.float64(), "doris", key=True)


@pytest.mark.parametrize(
    "arrow_type", [pa.binary(), pa.time64("us"), pa.list_(pa.int32()), pa.decimal256(40, 2)]
)
def test_types_without_a_mapping_are_refused(arrow_type: pa.DataType) -> None:
    with pytest.raises(FixtureError):
        doris.mpp_type(arrow_type, "doris")


def test_manifest_type_names_are_read_back_as_arrow_types() -> None:
    for t in (pa.int64(), pa.string(), pa.date32(), pa.decimal128(15, 2), pa.timestamp("us"),
              pa.timestamp("ms", tz="UTC"), pa.bool_(), pa.float64()):  # fmt: skip
        assert arrow_type_from_text(str(t)) == t
    with pytest.raises(FixtureError, match="which Crucible cannot read"):
        arrow_type_from_text("list<item: int32>")


# -- keys and tables ----------------------------------------------------------------------------

LINEITEM = pa.schema([("l_orderkey", pa.int64()), ("l_partkey", pa.int64()),
                      ("l_linenumber", pa.int32())])  # fmt: skip
PARTSUPP = pa.schema([("ps_partkey", pa.int64()), ("ps_suppkey", pa.int64()),
                      ("ps_availqty", pa.int32())])  # fmt: skip


def test_tpch_tables_are_keyed_by_the_leading_part_of_their_primary_key() -> None:
    assert doris.duplicate_key("tpch", "lineitem", LINEITEM) == ("l_orderkey",)
    assert doris.duplicate_key("tpch", "partsupp", PARTSUPP) == ("ps_partkey", "ps_suppkey")


def test_other_tables_are_keyed_by_their_first_column() -> None:
    assert doris.duplicate_key("mydata", "partsupp", PARTSUPP) == ("ps_partkey",)
    renamed = pa.schema([("id", pa.int64()), ("l_orderkey", pa.int64())])
    assert doris.duplicate_key("tpch", "lineitem", renamed) == ("id",)


def test_doris_table_has_a_duplicate_key_hash_distribution_and_replication() -> None:
    schema = pa.schema(
        [
            pa.field("ps_partkey", pa.int64(), nullable=False),
            pa.field("ps_suppkey", pa.int64(), nullable=False),
            pa.field("ps_supplycost", pa.decimal128(15, 2)),
            pa.field("ps_comment", pa.string()),
        ]
    )
    key = doris.duplicate_key("tpch", "partsupp", schema)

    assert doris.create_table_sql("doris", "bench", "partsupp", schema, key) == (
        "CREATE TABLE `bench`.`partsupp` (`ps_partkey` BIGINT NOT NULL, `ps_suppkey` BIGINT NOT "
        "NULL, `ps_supplycost` DECIMALV3(15,2) NULL, `ps_comment` STRING NULL) ENGINE=OLAP "
        "DUPLICATE KEY(`ps_partkey`, `ps_suppkey`) DISTRIBUTED BY HASH(`ps_partkey`, "
        '`ps_suppkey`) BUCKETS AUTO PROPERTIES ("replication_num" = "1")'
    )
    assert doris.create_table_sql(
        "doris", "bench", "partsupp", schema, key, buckets=16, replication_num=3
    ).endswith('BUCKETS 16 PROPERTIES ("replication_num" = "3")')


def test_starrocks_table_leaves_the_bucket_count_to_the_server_unless_given() -> None:
    schema = pa.schema([("id", pa.string()), ("at", pa.timestamp("us"))])

    assert doris.create_table_sql("starrocks", "db", "t", schema, ("id",)) == (
        "CREATE TABLE `db`.`t` (`id` VARCHAR(65533) NULL, `at` DATETIME NULL) ENGINE=OLAP "
        'DUPLICATE KEY(`id`) DISTRIBUTED BY HASH(`id`) PROPERTIES ("replication_num" = "1")'
    )
    assert "DISTRIBUTED BY HASH(`id`) BUCKETS 4 PROPERTIES" in doris.create_table_sql(
        "starrocks", "db", "t", schema, ("id",), buckets=4
    )


def test_hostile_column_names_stay_inside_their_quotes() -> None:
    schema = pa.schema([("a`) ENGINE=x; DROP TABLE t; --", pa.int32()), ("b", pa.string())])
    sql = doris.create_table_sql("doris", "db", "t", schema, (schema.names[0],))
    assert sql.startswith("CREATE TABLE `db`.`t` (`a``) ENGINE=x; DROP TABLE t; --` INT NULL")
    with pytest.raises(FixtureError):
        doris.quote_ident("trailing ")
    with pytest.raises(FixtureError):
        doris.quote_ident("new\nline")


def test_table_options_are_checked() -> None:
    schema = pa.schema([("a", pa.int32()), ("b", pa.int32())])
    with pytest.raises(FixtureError, match="must lead"):
        doris.create_table_sql("doris", "db", "t", schema, ("b",))
    with pytest.raises(FixtureError, match="replication_num"):
        doris.create_table_sql("doris", "db", "t", schema, ("a",), replication_num=0)
    with pytest.raises(FixtureError, match="buckets"):
        doris.create_table_sql("doris", "db", "t", schema, ("a",), buckets=0)
    with_binary = pa.schema([("a", pa.int8()), ("b", pa.binary())])
    with pytest.raises(FixtureError, match="column 'b'"):
        doris.create_table_sql("doris", "db", "t", with_binary, ("a",))


def test_names_are_validated_for_doris() -> None:
    assert doris.validate_database_name("tpch-sf1_bench") == "tpch-sf1_bench"
    for bad in ("", "1db", "db`x", "db.x", "a" * 65):
        with pytest.raises(FixtureError):
            doris.validate_database_name(bad)
    with pytest.raises(FixtureError, match="64"):
        doris.validate_table_name("t" * 50 + doris.LOADING_SUFFIX)


# -- bookkeeping --------------------------------------------------------------------------------


def test_state_table_is_a_unique_key_table_keyed_by_table_name() -> None:
    sql = doris.state_table_sql("doris", "bench")
    assert sql.startswith("CREATE TABLE IF NOT EXISTS `bench`.`crucible_fixture_state` (")
    assert "`loaded_at` DATETIME(6) NOT NULL" in sql
    assert sql.endswith(
        "ENGINE=OLAP UNIQUE KEY(`table_name`) DISTRIBUTED BY HASH(`table_name`) BUCKETS 1 "
        'PROPERTIES ("replication_num" = "1")'
    )
    assert "`loaded_at` DATETIME NOT NULL" in doris.state_table_sql("starrocks", "bench", 3)
    assert doris.state_table_sql("starrocks", "bench", 3).endswith('"replication_num" = "3")')


def test_state_row_quotes_every_value_and_writes_null_without_a_run() -> None:
    load = FixtureTableLoad(FixtureRef("tpch", "0.01", "region"), "region")
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert doris.record_state_sql("bench", load, "v'1\\", 5, at, None) == (
        "INSERT INTO `bench`.`crucible_fixture_state` (`table_name`, `dataset`, `scale`, "
        "`source_table`, `data_version`, `rows`, `loaded_at`, `loaded_by_run`) VALUES ("
        "'region', 'tpch', '0.01', 'region', 'v\\'1\\\\', 5, '2024-05-06 07:08:09.123456', NULL)"
    )


def test_replacing_a_table_is_one_atomic_statement_on_doris_and_a_swap_on_starrocks() -> None:
    assert doris.swap_in_sql("doris", "db", "t", "t__crucible_load") == [
        "ALTER TABLE `db`.`t` REPLACE WITH TABLE `t__crucible_load` PROPERTIES('swap' = 'false')"
    ]
    assert doris.swap_in_sql("starrocks", "db", "t", "t__crucible_load") == [
        "ALTER TABLE `db`.`t` SWAP WITH `t__crucible_load`",
        "DROP TABLE `db`.`t__crucible_load`",
    ]
    assert doris.rename_sql("db", "t__crucible_load", "t") == (
        "ALTER TABLE `db`.`t__crucible_load` RENAME `t`"
    )


def test_string_literals_escape_quotes_and_backslashes_and_refuse_nul() -> None:
    assert doris.quote_string("it's \\ here") == "'it\\'s \\\\ here'"
    assert doris.quote_string('say "hi"', '"') == '"say \\"hi\\""'
    with pytest.raises(FixtureError, match="NUL"):
        doris.quote_string("a\x00b")


# -- loads from S3 ------------------------------------------------------------------------------


def test_doris_s3_load_reads_each_object_with_keys_kept_out_of_its_display() -> None:
    load = doris.doris_s3_inserts(
        "lineitem",
        ["s3://bucket/fixtures/tpch/sf1/lineitem/part-0.parquet"],
        endpoint_url="http://127.0.0.1:9000",
        region="us-east-1",
        credentials=doris.S3CredentialRef("MY_ACCESS", "MY_SECRET"),
        environ={"MY_ACCESS": "AKIA-canary", "MY_SECRET": SECRET},
    )
    (statement,) = load.statements
    assert statement.get_secret_value() == (
        'INSERT INTO `lineitem` SELECT * FROM S3("uri" = '
        '"s3://bucket/fixtures/tpch/sf1/lineitem/part-0.parquet", "format" = "parquet", '
        '"s3.region" = "us-east-1", "s3.endpoint" = "http://127.0.0.1:9000", '
        '"use_path_style" = "true", "s3.access_key" = "AKIA-canary", '
        f'"s3.secret_key" = "{SECRET}")'
    )
    assert SECRET not in repr(load)
    assert SECRET not in str(load.statements)
    assert all(SECRET not in text and '"s3.secret_key" = "***"' in text for text in load.display)


def test_doris_s3_load_names_aws_regional_endpoint_and_qualifies_the_table() -> None:
    load = doris.doris_s3_inserts(
        "t", ["s3://b/x.parquet"], endpoint_url=None, region="eu-west-1",
        credentials=doris.S3CredentialRef("A", "B"), environ={"A": "a", "B": "b"}, database="db",
    )  # fmt: skip
    text = load.statements[0].get_secret_value()
    assert text.startswith("INSERT INTO `db`.`t` SELECT * FROM S3(")
    assert '"s3.endpoint" = "https://s3.eu-west-1.amazonaws.com"' in text
    assert "use_path_style" not in text


def test_starrocks_files_load_names_its_documented_properties() -> None:
    load = doris.starrocks_files_inserts(
        "t",
        ["s3://bucket/a.parquet", "s3://bucket/b.parquet"],
        endpoint_url="http://minio:9000",
        region="us-east-1",
        credentials=doris.S3CredentialRef("MY_ACCESS", "MY_SECRET"),
        environ={"MY_ACCESS": "AKIA-canary", "MY_SECRET": SECRET},
        database="db",
    )
    assert [s.get_secret_value() for s in load.statements][1] == (
        'INSERT INTO `db`.`t` SELECT * FROM FILES("path" = "s3://bucket/b.parquet", "format" = '
        '"parquet", "aws.s3.access_key" = "AKIA-canary", "aws.s3.secret_key" = '
        f'"{SECRET}", "aws.s3.region" = "us-east-1", "aws.s3.endpoint" = "http://minio:9000", '
        '"aws.s3.enable_path_style_access" = "true")'
    )
    assert SECRET not in repr(load) and "AKIA-canary" not in " ".join(load.display)
    assert '"aws.s3.secret_key" = "***"' in load.display[0]


def test_starrocks_files_load_on_aws_names_no_endpoint() -> None:
    load = doris.starrocks_files_inserts(
        "t", ["s3://b/x.parquet"], endpoint_url=None, region="us-west-2",
        credentials=doris.S3CredentialRef("A", "B"), environ={"A": "a", "B": "b"},
    )  # fmt: skip
    text = load.statements[0].get_secret_value()
    assert "aws.s3.endpoint" not in text and '"aws.s3.region" = "us-west-2"' in text


@pytest.mark.parametrize("make", [doris.doris_s3_inserts, doris.starrocks_files_inserts])
def test_s3_loads_need_s3_objects_and_set_keys(make: Callable[..., doris.S3Inserts]) -> None:
    refs = doris.S3CredentialRef("MY_ACCESS", "MY_SECRET")
    with pytest.raises(FixtureError, match="s3://"):
        make("t", ["file:///tmp/x.parquet"], endpoint_url=None, region="r", credentials=refs,
             environ={"MY_ACCESS": "a", "MY_SECRET": "b"})  # fmt: skip
    with pytest.raises(FixtureError, match="MY_SECRET"):
        make("t", ["s3://b/x.parquet"], endpoint_url=None, region="r", credentials=refs,
             environ={"MY_ACCESS": "a"})  # fmt: skip
    with pytest.raises(FixtureError, match="no Parquet objects"):
        make("t", [], endpoint_url=None, region="r", credentials=refs, environ={})


@pytest.mark.parametrize("make", [doris.doris_s3_inserts, doris.starrocks_files_inserts])
def test_s3_string_values_cannot_break_out_of_their_quotes(
    make: Callable[..., doris.S3Inserts],
) -> None:
    load = make(
        "t",
        ['s3://b/we"ird\\.parquet'],
        endpoint_url='http://x"), ("y',
        region="r",
        credentials=doris.S3CredentialRef("A", "B"),
        environ={"A": "a", "B": 'x"); DROP TABLE t; --'},
    )
    text = load.statements[0].get_secret_value()
    assert '"s3://b/we\\"ird\\\\.parquet"' in text
    assert '"x\\"); DROP TABLE t; --"' in text
    assert '"http://x\\"), (\\"y"' in text
    assert text.count("DROP TABLE") == 1


# -- Stream Load --------------------------------------------------------------------------------


def _request(**kw: object) -> stream_load.StreamLoadRequest:
    args: dict[str, object] = dict(label="crucible_t_abc_0", size_bytes=1234, user="loader",
                                   password=SecretStr(SECRET))  # fmt: skip
    args.update(kw)
    return stream_load.stream_load_request("fe.example", 8030, "bench", "t__crucible_load", **args)  # type: ignore[arg-type]


def test_stream_load_request_puts_to_the_fe_with_the_headers_doris_needs() -> None:
    request = _request()

    assert request.url == "http://fe.example:8030/api/bench/t__crucible_load/_stream_load"
    headers = dict(request.wire_headers("fe.example:8030"))
    assert headers["Expect"] == "100-continue"
    assert headers["format"] == "parquet"
    assert headers["label"] == "crucible_t_abc_0"
    assert headers["strict_mode"] == "true"
    assert headers["Content-Length"] == "1234"
    assert headers["Host"] == "fe.example:8030"
    token = headers["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(token).decode() == f"loader:{SECRET}"


def test_stream_load_request_never_shows_the_password() -> None:
    request = _request()
    assert SECRET not in repr(request) and SECRET not in str(request)


def test_stream_load_request_refuses_names_that_could_leave_the_path() -> None:
    with pytest.raises(FixtureError):
        stream_load.stream_load_request("fe", 8030, "../admin", "t", label="l", size_bytes=1,
                                  user="u", password=SecretStr(""))  # fmt: skip
    with pytest.raises(FixtureError):
        stream_load.stream_load_request("fe", 8030, "db", "t/../x", label="l", size_bytes=1,
                                  user="u", password=SecretStr(""))  # fmt: skip


def test_stream_load_label_is_stable_for_a_retry_and_unique_per_file_fill_and_run() -> None:
    label = stream_load.stream_load_label("run_1", "bench", "lineitem__crucible_load", "tok1", 0)
    assert label == stream_load.stream_load_label(
        "run_1", "bench", "lineitem__crucible_load", "tok1", 0
    )
    assert label.startswith("crucible_lineitem__crucible_load_") and label.endswith("_0")
    others = {
        stream_load.stream_load_label("run_1", "bench", "lineitem__crucible_load", "tok1", 1),
        stream_load.stream_load_label("run_1", "bench", "lineitem__crucible_load", "tok2", 0),
        stream_load.stream_load_label("run_2", "bench", "lineitem__crucible_load", "tok1", 0),
        stream_load.stream_load_label(None, "bench", "orders__crucible_load", "tok1", 0),
    }
    assert label not in others and len(others) == 4
    assert len(label) <= 128 and all(c.isalnum() or c in "_-" for c in label)


def _answer(**body: object) -> bytes:
    return json.dumps(body).encode()


def test_stream_load_answers_that_mean_loaded() -> None:
    ok = stream_load.check_stream_load_response(
        "l", 200, _answer(Status="Success", NumberLoadedRows=10), "f"
    )
    assert (ok.status, ok.loaded_rows, ok.already_loaded) == ("Success", 10, False)
    late = stream_load.check_stream_load_response("l", 200, _answer(Status="Publish Timeout"), "f")
    assert late.status == "Publish Timeout"
    again = stream_load.check_stream_load_response(
        "l", 200, _answer(Status="Label Already Exists", ExistingJobStatus="FINISHED"), "f"
    )
    assert again.already_loaded


def test_stream_load_answers_that_mean_failure_say_why() -> None:
    with pytest.raises(FixtureError, match="still RUNNING"):
        stream_load.check_stream_load_response(
            "l", 200, _answer(Status="Label Already Exists", ExistingJobStatus="RUNNING"), "f"
        )
    with pytest.raises(FixtureError, match=r"too many filtered rows.*http://be:8040/err"):
        stream_load.check_stream_load_response(
            "l", 200, _answer(Status="Fail", Message="too many filtered rows",
                              ErrorURL="http://be:8040/err"), "f",
        )  # fmt: skip
    with pytest.raises(FixtureError, match="HTTP 502: bad gateway"):
        stream_load.check_stream_load_response("l", 502, b"bad gateway", "f")
    with pytest.raises(FixtureError, match="wrong user or password"):
        stream_load.check_stream_load_response("l", 401, _answer(msg="Access denied"), "f")
