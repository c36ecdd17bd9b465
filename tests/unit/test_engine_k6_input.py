"""The k6 driver's input: parsed queries, transport and a closed load shape as JSON."""

import json

import pytest
from pydantic import SecretStr

from crucible_dagster.engine.k6 import ClickHouseHttpTransport, clickhouse_transport, write_k6_input
from crucible_dagster.engine.model import LoadShape
from crucible_dagster.errors import ValidationError
from crucible_dagster.suts.base import SutTarget, sut_identity
from crucible_dagster.workload import Query, parse_workload

TRANSPORT = ClickHouseHttpTransport("http://127.0.0.1:8123/", "tpch", "bench")
SHAPE = LoadShape(concurrency=4, hold_for_s=2.5)

WORKLOAD = """\
-- @type: sql
-- @name: one
SELECT 1
-- @name: heavy
-- @weight: 3
SELECT count() FROM lineitem
"""

WITH_PARAMETER = """\
-- @type: sql
-- @name: by_key
-- @param: key {type: int, range: [1, 10]}
SELECT * FROM orders WHERE o_orderkey = :key
"""


def _queries(text: str) -> list[Query]:
    return list(parse_workload(text, source="w.sql", workload_id="w").queries)


def test_input_holds_parsed_queries_with_weights_defaulting_to_one() -> None:
    data = write_k6_input(_queries(WORKLOAD), TRANSPORT, SHAPE)

    assert data["queries"] == [
        {"name": "one", "sql": "SELECT 1", "weight": 1.0},
        {"name": "heavy", "sql": "SELECT count() FROM lineitem", "weight": 3.0},
    ]
    assert data["transport"] == {
        "kind": "clickhouse_http",
        "url": "http://127.0.0.1:8123/",
        "database": "tpch",
        "user": "bench",
    }


def test_input_options_are_a_closed_shape_with_a_threshold_per_query_submetric() -> None:
    options = write_k6_input(_queries(WORKLOAD), TRANSPORT, SHAPE)["options"]

    assert options["vus"] == 4
    assert options["duration"] == "2500ms"
    assert set(options["thresholds"]) == {
        "http_req_duration{query:one,expected_response:true}",
        "http_reqs{query:one}",
        "crucible_errors{query:one}",
        "http_req_duration{query:heavy,expected_response:true}",
        "http_reqs{query:heavy}",
        "crucible_errors{query:heavy}",
    }


def test_input_is_json_and_holds_no_password() -> None:
    text = json.dumps(write_k6_input(_queries(WORKLOAD), TRANSPORT, SHAPE))

    assert "password" not in text.lower()


def test_query_with_parameters_is_refused_at_its_line() -> None:
    with pytest.raises(ValidationError) as caught:
        write_k6_input(_queries(WITH_PARAMETER), TRANSPORT, SHAPE)

    assert "w.sql:2: query 'by_key' has parameters" in str(caught.value)


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        (LoadShape(concurrency=2, ramp_up_s=5, hold_for_s=10), "ramp_up_s"),
        (LoadShape(model="constant_arrival_rate", rate=10, duration_s=5), "model"),
        (LoadShape(concurrency=2, hold_for_s=5, seed=7), "seed"),
        (LoadShape(concurrency=2, hold_for_s=5, shards=2), "shards"),
        (LoadShape(concurrency=0, hold_for_s=5), "concurrency"),
        (LoadShape(concurrency=2, hold_for_s=0), "hold_for_s"),
    ],
)
def test_shape_the_k6_engine_cannot_run_is_refused_naming_the_field(
    shape: LoadShape, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        write_k6_input(_queries(WORKLOAD), TRANSPORT, shape)

    assert [problem.field for problem in caught.value.problems] == [field]


def test_workload_whose_weights_are_all_zero_is_refused() -> None:
    text = WORKLOAD.replace("-- @weight: 3", "-- @weight: 0").replace(
        "-- @name: one\n", "-- @name: one\n-- @weight: 0\n"
    )

    with pytest.raises(ValidationError, match="every query has weight 0"):
        write_k6_input(_queries(text), TRANSPORT, SHAPE)


def test_clickhouse_target_becomes_a_transport_without_its_password() -> None:
    identity = sut_identity("clickhouse", "127.0.0.1", 8123, "tpch")
    target = SutTarget(identity=identity, user="bench", password=SecretStr("s3cret"))

    transport = clickhouse_transport(target)

    assert transport == ClickHouseHttpTransport("http://127.0.0.1:8123/", "tpch", "bench")
    assert "s3cret" not in repr(transport)
