"""Which target databases each SUT type takes, and the rules of embedded SUTs."""

from typing import Any

import pytest

from crucible_dagster.suts.names import database_problem
from tests.unit.test_plan import fields, parse_data, plan_data, problems_of


def embedded_plan(sut_type: str, target_db: str, **execution: Any) -> dict[str, Any]:
    data = plan_data()
    data["test_environment"]["target_db"] = target_db
    data["test_environment"]["component_spec"] = {"type": sut_type}
    data["execution"].update(execution)
    return data


@pytest.mark.parametrize("sut_type", ["duckdb", "sqlite"])
def test_embedded_sut_needs_no_cluster_info(sut_type: str) -> None:
    loaded = parse_data(embedded_plan(sut_type, "bench/tpch.db"))

    assert loaded.plan.test_environment.component_spec.cluster_info is None


@pytest.mark.parametrize("sut_type", ["duckdb", "sqlite"])
def test_in_memory_embedded_database_is_refused(sut_type: str) -> None:
    found = problems_of(embedded_plan(sut_type, ":memory:"))

    assert fields(found) == ["test_environment.target_db"]
    assert "in-memory database cannot be loaded and measured" in found[0].message


def test_duckdb_refuses_more_than_one_shard() -> None:
    found = problems_of(embedded_plan("duckdb", "tpch.duckdb", concurrency=4, shards=2))

    assert fields(found) == ["execution.shards"]
    assert "shards must be 1 (got 2)" in found[0].message


def test_sqlite_takes_several_shards() -> None:
    loaded = parse_data(embedded_plan("sqlite", "tpch.sqlite", concurrency=4, shards=2))

    assert loaded.plan.execution.shards == 2


@pytest.mark.parametrize(
    ("sut_type", "name"),
    [
        ("clickhouse", "bench-1"),
        ("mariadb", "a/b"),
        ("mysql", "x" * 65),
        ("postgresql", "x" * 64),
        ("cassandra", "1ks"),
        ("trino", "hive.a.b"),
        ("trino", ""),
    ],
)
def test_target_db_the_sut_would_refuse_is_an_error_at_its_line(sut_type: str, name: str) -> None:
    data = plan_data(test_environment={"target_db": name})
    data["test_environment"]["component_spec"]["type"] = sut_type

    found = problems_of(data)

    assert fields(found) == ["test_environment.target_db"]
    assert found[0].location.line == 5  # target_db's line
    assert f"invalid target_db {name!r}" in found[0].message


@pytest.mark.parametrize(
    ("sut_type", "name"),
    [
        ("clickhouse", "bench_1"),
        ("mariadb", "tpch-sf1"),
        ("postgresql", "TPC H"),
        ("cassandra", "tpch"),
        ("trino", "hive.tpch"),
        ("trino", "memory"),
        ("duckdb", "/tmp/tpch.duckdb"),
        ("postgresql", ""),
    ],
)
def test_target_db_the_sut_takes_is_accepted(sut_type: str, name: str) -> None:
    assert database_problem(sut_type, name) is None


def test_a_port_inside_host_is_checked_at_validation() -> None:
    data = plan_data()
    data["test_environment"]["component_spec"]["cluster_info"]["host"] = "[::1]:99999"

    found = problems_of(data)

    assert fields(found) == ["test_environment.component_spec.cluster_info.host"]
    assert "the part after ':' must be a port from 1 to 65535" in found[0].message


def test_a_relative_embedded_database_cannot_climb_out_of_the_databases_folder() -> None:
    found = problems_of(embedded_plan("sqlite", "../crucible.db"))

    assert fields(found) == ["test_environment.target_db"]
    assert "no '..'" in found[0].message
