"""Plans against the embedded SUTs, through Dagster: no cluster_info, a database file."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from tests.integration.test_plan_job import execute, stored_result

pytestmark = pytest.mark.integration

WORKLOAD = """\
-- @type: sql
-- @name: nations_per_region
SELECT r_name, count(*) FROM region JOIN nation ON n_regionkey = r_regionkey GROUP BY r_name;
-- @name: one_nation
-- @param: key {type: int, range: [0, 24]}
SELECT n_name FROM nation WHERE n_nationkey = :key;
"""


def write_embedded_plan(
    folder: Path, name: str, sut_type: str, target_db: str, shards: int, scale: str = "0.01"
) -> Path:
    (folder / "workloads").mkdir(parents=True, exist_ok=True)
    (folder / "workloads" / "small.sql").write_text(WORKLOAD)
    path = folder / f"{name}.yaml"
    path.write_text(f"""\
test_metadata: {{run_label: {name}}}
test_environment:
  env_type: long-lived
  target_db: {target_db}
  component_spec: {{type: {sut_type}}}
  fixtures:
    - {{dataset: tpch, scale: "{scale}", tables: [region, nation]}}
execution:
  concurrency: 4
  shards: {shards}
  ramp_up: 0s
  hold_for: 2s
  workload:
    - workload_id: small
""")
    return path


@pytest.fixture
def instance(crucible_home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.mark.parametrize(("sut_type", "shards"), [("duckdb", 1), ("sqlite", 2)])
def test_plan_on_an_embedded_sut_loads_its_database_file_and_passes(
    sut_type: str, shards: int, instance: dg.DagsterInstance, crucible_home: Path, tmp_path: Path
) -> None:
    plan = write_embedded_plan(tmp_path / "plans", "embedded", sut_type, "bench/tpch.db", shards)
    (crucible_home / "databases" / "bench").mkdir(parents=True)

    success, run_id = execute(plan, instance)
    result = stored_result(run_id)

    assert success, result.get("error")
    assert result["status"] == "completed" and result["verdict"] == "passed"
    assert {f["table"]: f["rows"] for f in result["fixtures"]} == {"region": 5, "nation": 25}
    for query in result["queries"]:
        assert query["count"] > 0 and query["errors"] == 0, query
    assert (crucible_home / "databases" / "bench" / "tpch.db").is_file()

    again, second = execute(plan, instance)
    assert again
    assert {f["action"] for f in stored_result(second)["fixtures"]} == {"skipped"}


def test_a_missing_folder_of_the_database_file_is_a_clear_failure(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder" / "tpch.duckdb"
    plan = write_embedded_plan(tmp_path / "plans", "nofolder", "duckdb", str(missing), 1)

    success, run_id = execute(plan, instance)
    result = stored_result(run_id)

    assert not success
    assert result["status"] == "failed"
    assert str(missing.parent) in result["error"]


def test_a_scale_no_one_generated_before_becomes_a_partition_of_the_fixture_asset(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_embedded_plan(tmp_path / "plans", "odd", "sqlite", "odd.db", 1, scale="0.002")

    success, run_id = execute(plan, instance)

    assert success, stored_result(run_id).get("error")
    assert instance.get_dynamic_partitions("tpch_scales") == ["0.002"]
    event = instance.get_latest_materialization_event(dg.AssetKey(["fixtures", "tpch"]))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.partition == "0.002"
