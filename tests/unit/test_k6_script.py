"""The k6 driver's input: queries split at placeholders, value pools, k6 scenarios, segments."""

import datetime
import json

import pytest

from crucible_dagster.engine.model import (
    CONSTANT_ARRIVAL_RATE,
    RAMPING_ARRIVAL_RATE,
    LoadShape,
)
from crucible_dagster.errors import ValidationError
from crucible_dagster.k6.literals import literal_for, mysql_literal, trino_literal
from crucible_dagster.k6.script import (
    POOL_ROWS,
    K6Query,
    driver_input,
    execution_segments,
    k6_query,
    scenario,
    shape_problems,
)
from crucible_dagster.workload import parse_workload

TRANSPORT = {"kind": "clickhouse_http", "url": "http://127.0.0.1:8123/", "database": "d",
             "user": "u", "timeout_ms": 1000}  # fmt: skip

WORKLOAD = """\
-- @type: clickhouse
-- @name: by_key
-- @param: key {type: int, range: [1, 5]}
-- @param: tag {type: choice, values: ["it's", "b"]}
SELECT * FROM t WHERE k = :key AND (tag = :tag OR k2 = :key) AND x::String = '1'
-- @name: plain
SELECT 1
"""


def _queries() -> list[K6Query]:
    workload = parse_workload(WORKLOAD, source="w.sql", workload_id="w")
    return [k6_query(q, 1.0) for q in workload.queries]


def test_a_query_is_split_at_its_placeholders_and_a_repeated_name_reuses_its_slot() -> None:
    by_key, plain = _queries()

    assert by_key.segments == (
        "SELECT * FROM t WHERE k = ", " AND (tag = ", " OR k2 = ", ") AND x::String = '1'"
    )  # fmt: skip
    assert by_key.slots == (0, 1, 0)
    assert [p.name for p in by_key.params] == ["key", "tag"]
    assert plain.segments == ("SELECT 1",) and plain.slots == ()


def test_pools_hold_literals_of_the_dialect_and_repeat_for_a_seed() -> None:
    shape = LoadShape(concurrency=1, hold_for_s=1)
    first = driver_input(_queries(), sut_type="clickhouse", transport=TRANSPORT, shape=shape,
                         seed=5)  # fmt: skip
    again = driver_input(_queries(), sut_type="clickhouse", transport=TRANSPORT, shape=shape,
                         seed=5)  # fmt: skip
    other = driver_input(_queries(), sut_type="clickhouse", transport=TRANSPORT, shape=shape,
                         seed=6)  # fmt: skip

    pool = first["queries"][0]["pool"]
    assert len(pool) == POOL_ROWS
    assert {row[0] for row in pool} == {"1", "2", "3", "4", "5"}
    assert {row[1] for row in pool} == {"'it\\'s'", "'b'"}
    assert first == again and first != other
    assert first["queries"][1]["pool"] == []
    json.dumps(first)  # the driver reads it as JSON


def test_parameters_for_a_sut_without_a_literal_renderer_are_refused_at_their_line() -> None:
    with pytest.raises(ValidationError) as caught:
        driver_input(_queries(), sut_type="postgresql", transport=TRANSPORT,
                     shape=LoadShape(concurrency=1, hold_for_s=1), seed=1)  # fmt: skip
    assert "w.sql:2" in str(caught.value)
    assert "executor: native" in str(caught.value)


def test_a_query_name_k6_cannot_tag_is_refused() -> None:
    query = K6Query("bad-name", "w.sql", 3, 1.0, ("SELECT 1",), ())
    with pytest.raises(ValidationError, match="bad-name"):
        driver_input([query], sut_type="clickhouse", transport=TRANSPORT,
                     shape=LoadShape(concurrency=1, hold_for_s=1), seed=1)  # fmt: skip


def test_closed_model_with_ramp_up_is_ramping_vus_then_a_hold() -> None:
    assert scenario(LoadShape(concurrency=8, ramp_up_s=2, hold_for_s=10)) == {
        "executor": "ramping-vus",
        "startVUs": 0,
        "stages": [{"duration": "2000ms", "target": 8}, {"duration": "10000ms", "target": 8}],
        "gracefulRampDown": "0s",
        "gracefulStop": "30000ms",
    }
    assert scenario(LoadShape(concurrency=3, hold_for_s=1.5, graceful_stop_s=2))["executor"] == (
        "constant-vus"
    )


def test_open_models_are_k6_arrival_rate_executors() -> None:
    constant = scenario(LoadShape(model=CONSTANT_ARRIVAL_RATE, rate=50, time_unit_s=1,
                                  duration_s=30, pre_allocated_vus=5, max_vus=20))  # fmt: skip
    assert constant == {
        "executor": "constant-arrival-rate", "rate": 50, "timeUnit": "1000ms",
        "duration": "30000ms", "gracefulStop": "30000ms", "preAllocatedVUs": 5, "maxVUs": 20,
    }  # fmt: skip
    stages = ((100.0, 60.0), (100.0, 30.0))
    ramping = scenario(
        LoadShape(model=RAMPING_ARRIVAL_RATE, start_rate=10, stages=stages, pre_allocated_vus=4)
    )
    assert ramping["executor"] == "ramping-arrival-rate"
    assert ramping["startRate"] == 10
    assert ramping["stages"] == [{"target": 100, "duration": "60000ms"},
                                 {"target": 100, "duration": "30000ms"}]  # fmt: skip
    assert ramping["maxVUs"] == 4


def test_fractional_rates_are_refused_with_the_time_unit_way_out() -> None:
    problems = shape_problems(LoadShape(model=CONSTANT_ARRIVAL_RATE, rate=2.5, duration_s=1,
                                        pre_allocated_vus=1))  # fmt: skip
    assert len(problems) == 1 and "time_unit" in problems[0].message


def test_execution_segments_cover_the_run_without_overlap() -> None:
    sequence, segments = execution_segments(3)
    assert sequence == "0,1/3,2/3,1"
    assert segments == ["0:1/3", "1/3:2/3", "2/3:1"]
    assert execution_segments(1) == ("0,1", ["0:1"])


def test_sequence_choice_expands_weights_as_repeat_counts() -> None:
    queries = [K6Query("a", "w", 1, 2.0, ("SELECT 1",), ()),
               K6Query("b", "w", 2, 1.0, ("SELECT 2",), ())]  # fmt: skip
    shape = LoadShape(concurrency=1, hold_for_s=1, query_choice="sequence")
    data = driver_input(queries, sut_type="clickhouse", transport=TRANSPORT, seed=1, shape=shape)
    assert data["choice"] == "sequence" and data["sequence"] == [0, 0, 1]


def test_literals_escape_quotes_for_each_dialect() -> None:
    assert mysql_literal("it's") == "'it\\'s'"
    assert trino_literal("it's") == "'it''s'"
    assert trino_literal(datetime.date(2024, 2, 29)) == "DATE '2024-02-29'"
    assert trino_literal(None) == "NULL" and trino_literal(True) == "TRUE"
    assert literal_for("postgresql") is None
    assert literal_for("clickhouse") is not None
