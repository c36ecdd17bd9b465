"""A plan's Dagster job, executed in process against real PostgreSQL and real object storage."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from crucible_dagster.defs import build_definitions
from crucible_dagster.lease import LeaseStore
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.plan import load_plan
from crucible_dagster.results import RunStatus, Verdict, latest_result
from crucible_dagster.run import LAUNCH_TAG, RUN_ID_TAG, mint_run_id, plan_sut
from crucible_dagster.settings import get_settings
from crucible_dagster.storage import storage_from_url
from tests.conftest import PG_PASSWORD
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration

WORKLOAD = """\
-- @type: sql
-- @name: nations_per_region
SELECT r_name, count(*) FROM region JOIN nation ON n_regionkey = r_regionkey GROUP BY r_name;
-- @name: one_nation
SELECT n_name FROM nation WHERE n_nationkey = 7;
"""


def write_plan(
    folder: Path, name: str, *, port: int, database: str, workload: str = WORKLOAD,
    workload_id: str = "small", hold_for: str = "2s", extra: str = "",
    sut_type: str = "postgresql", username: str = "postgres",
    password_env: str = "CRUCIBLE_TEST_PG_PASSWORD", tables: tuple[str, ...] = ("region", "nation"),
) -> Path:  # fmt: skip
    """A plan against a SUT on loopback that loads TPC-H sf0.01 `tables` and runs `workload`."""
    (folder / "workloads").mkdir(parents=True, exist_ok=True)
    (folder / "workloads" / f"{workload_id}.sql").write_text(workload)
    fixtures = (
        "".join(f"    - {{fixture_id: tpch/sf0.01/{table}, table: {table}}}\n" for table in tables)
        or "    []\n"
    )
    path = folder / f"{name}.yaml"
    path.write_text(f"""\
test_metadata:
  run_label: {name}
test_environment:
  env_type: long-lived
  target_db: {database}
  component_spec:
    type: {sut_type}
    cluster_info:
      host: 127.0.0.1
      port: {port}
      username: {username}
      password: {{env: {password_env}}}
  fixtures:
{fixtures}execution:
  executor: native
  scaling_mode: intra_node
  concurrency: 2
  ramp_up: 0s
  hold_for: {hold_for}
  graceful_stop: 5s
  workload:
    - workload_id: {workload_id}
{extra}""")
    return path


@pytest.fixture
def instance(crucible_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    monkeypatch.setenv("CRUCIBLE_TEST_PG_PASSWORD", PG_PASSWORD)
    with dg.instance_for_test() as instance:
        yield instance


def execute(plan_path: Path, instance: dg.DagsterInstance, **tags: str) -> tuple[bool, str]:
    defs = build_definitions(plan_path.parent)
    name = plan_path.stem
    run_id = mint_run_id(name)
    outcome = defs.resolve_job_def(name).execute_in_process(
        instance=instance, tags={RUN_ID_TAG: run_id, **tags}, raise_on_error=False
    )
    return outcome.success, run_id


def stored_result(run_id: str) -> dict:
    settings = get_settings()
    storage = storage_from_url(settings.storage_url, settings)
    return json.loads(storage.get_bytes(f"results/{run_id}/result.json"))


def test_job_loads_fixtures_runs_load_and_records_results_asset(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plans", "smoke", port=postgres.port, database=pg_database)
    success, run_id = execute(plan, instance)
    assert success

    result = stored_result(run_id)
    assert result["status"] == "completed"
    assert result["verdict"] == "passed"
    assert [q["name"] for q in result["queries"]] == ["nations_per_region", "one_nation"]
    for query in result["queries"]:
        assert query["count"] > 0
        assert query["errors"] == 0
        assert query["p95_ms"] > 0
    assert {f["table"]: f["rows"] for f in result["fixtures"]} == {"region": 5, "nation": 25}

    event = instance.get_latest_materialization_event(dg.AssetKey(["results", "smoke"]))
    assert event is not None
    metadata = event.asset_materialization.metadata  # type: ignore[union-attr]
    assert isinstance(metadata["nations_per_region/p95_ms"], dg.FloatMetadataValue)
    assert isinstance(metadata["total/qps"], dg.FloatMetadataValue)
    assert metadata["run_id"].value == run_id

    fixture = instance.get_latest_materialization_event(dg.AssetKey(["fixtures", "tpch"]))
    assert fixture is not None and fixture.asset_materialization.partition == "0.01"  # type: ignore[union-attr]

    sut = plan_sut(load_plan(plan))
    assert LeaseStore(get_settings().database_url).holder(sut) is None


def test_second_run_skips_fixtures_already_loaded(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plans", "again", port=postgres.port, database=pg_database)
    assert execute(plan, instance)[0]
    success, run_id = execute(plan, instance)
    assert success
    assert {f["action"] for f in stored_result(run_id)["fixtures"]} == {"skipped"}


def test_unreachable_sut_fails_the_run_with_a_result_and_frees_the_lease(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    from crucible_dagster.local_postgres import free_port

    plan = write_plan(tmp_path / "plans", "nowhere", port=free_port(), database="tpch")
    success, run_id = execute(plan, instance)
    assert not success
    result = stored_result(run_id)
    assert result["status"] == "failed"
    assert result["verdict"] is None
    assert "127.0.0.1" in result["error"]
    assert LeaseStore(get_settings().database_url).holder(plan_sut(load_plan(plan))) is None


def test_missing_workload_fails_before_touching_the_sut(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plans", "lost", port=postgres.port, database=pg_database)
    plan.write_text(plan.read_text().replace("workload_id: small", "workload_id: gone"))
    success, run_id = execute(plan, instance)
    assert not success
    result = stored_result(run_id)
    assert result["status"] == "failed"
    assert "gone" in result["error"]
    assert result["fixtures"] == []


def test_query_with_syntax_error_is_reported_with_its_line_before_load(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    broken = WORKLOAD + "-- @name: broken\nSELEC n_name FROM nation;\n"
    plan = write_plan(
        tmp_path / "plans", "typo", port=postgres.port, database=pg_database, workload=broken
    )
    success, run_id = execute(plan, instance)
    assert not success
    result = stored_result(run_id)
    assert result["status"] == "failed"
    assert "small.sql:6" in result["error"]
    assert "broken" in result["error"] or "SELEC" in result["error"]
    assert result["queries"] == []


def test_password_appears_in_no_event_result_or_metadata(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plans", "secret", port=postgres.port, database=pg_database)
    success, run_id = execute(plan, instance)
    assert success
    bad = write_plan(tmp_path / "other", "secret_bad", port=1, database=pg_database)
    assert not execute(bad, instance)[0]
    literal = write_plan(tmp_path / "third", "secret_literal", port=postgres.port,
                         database=pg_database)  # fmt: skip
    literal.write_text(
        literal.read_text().replace("{env: CRUCIBLE_TEST_PG_PASSWORD}", f'"{PG_PASSWORD}"')
    )
    success_literal, literal_run = execute(literal, instance)
    assert success_literal
    assert PG_PASSWORD not in json.dumps(stored_result(literal_run))
    assert "password: '**********'" in stored_result(literal_run)["plan_text"]

    for run in instance.get_runs():
        records = instance.all_logs(run.run_id)
        assert all(PG_PASSWORD not in str(r) for r in records)
    assert PG_PASSWORD not in json.dumps(stored_result(run_id))
    storage_root = get_settings().home
    for path in storage_root.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".ndjson", ".log", ".yaml"}:
            assert PG_PASSWORD not in path.read_text(errors="replace"), path


def test_dagster_launch_fails_fast_when_the_sut_is_leased(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plans", "busy", port=postgres.port, database=pg_database)
    sut = plan_sut(load_plan(plan))
    store = LeaseStore(get_settings().database_url)
    holder = store.acquire(sut, "other_20261203-0000_00000000", "other", None, wait=False,
                           timeout_s=0)  # fmt: skip
    try:
        success, run_id = execute(plan, instance)
        assert not success
        result = stored_result(run_id)
        assert result["status"] == "failed"
        assert "other_20261203-0000_00000000" in result["error"]
    finally:
        store.release(holder)


def test_cli_launch_waits_for_the_lease(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    import threading

    plan = write_plan(tmp_path / "plans", "patient", port=postgres.port, database=pg_database)
    sut = plan_sut(load_plan(plan))
    store = LeaseStore(get_settings().database_url)
    holder = store.acquire(sut, "other_20261203-0000_00000001", "other", None, wait=False,
                           timeout_s=0)  # fmt: skip
    releaser = threading.Timer(2.0, store.release, args=[holder])
    releaser.start()
    try:
        success, run_id = execute(plan, instance, **{LAUNCH_TAG: "cli"})
    finally:
        releaser.cancel()
    assert success
    assert stored_result(run_id)["status"] == "completed"


def test_latest_result_of_a_plan_is_found_by_its_name(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plans", "history", port=postgres.port, database=pg_database)
    execute(plan, instance)
    _, second = execute(plan, instance)
    settings = get_settings()
    latest = latest_result(storage_from_url(settings.storage_url, settings), "history")
    assert latest is not None and latest.run_id == second
    assert latest.status is RunStatus.COMPLETED and latest.verdict is Verdict.PASSED


def test_invalid_plan_in_folder_is_skipped_and_the_rest_load(
    postgres: LocalPostgres, pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "plans"
    write_plan(folder, "good", port=postgres.port, database=pg_database)
    (folder / "bad.yaml").write_text("test_metadata: [unclosed\n")
    (folder / "Bad-Name.yaml").write_text((folder / "good.yaml").read_text())
    defs = build_definitions(folder)
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("good") is not None
    assert "bad.yaml" in caplog.text
    assert "Bad-Name" in caplog.text


def test_job_with_s3_storage_keeps_fixtures_and_results_in_the_bucket(
    postgres: LocalPostgres,
    pg_database: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = s3_server.make_bucket()
    monkeypatch.setenv("CRUCIBLE_STORAGE_URL", f"s3://{bucket}/crucible")
    monkeypatch.setenv("CRUCIBLE_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    get_settings.cache_clear()

    plan = write_plan(tmp_path / "plans", "on_s3", port=postgres.port, database=pg_database)
    success, run_id = execute(plan, instance)
    assert success

    keys = {info.key for info in s3_server.storage(bucket, "crucible").list("")}
    assert f"results/{run_id}/result.json" in keys
    assert "fixtures/tpch/sf0.01/_manifest.json" in keys
    assert any(k.startswith("fixtures/tpch/sf0.01/nation/") for k in keys)
    assert stored_result(run_id)["status"] == "completed"
    assert s3_server.secret_key not in json.dumps(stored_result(run_id))


def test_failed_threshold_gives_a_failed_verdict_and_check_but_a_successful_run(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    thresholds = """\
  thresholds:
    one_nation: ["p(95)<0.001", "rate<0.5"]
    total: ["count>0"]
"""
    plan = write_plan(
        tmp_path / "plans", "strict", port=postgres.port, database=pg_database, extra=thresholds
    )
    success, run_id = execute(plan, instance)
    assert success
    result = stored_result(run_id)
    assert result["status"] == "completed"
    assert result["verdict"] == "failed"
    assert len(result["failed_thresholds"]) == 1
    assert result["failed_thresholds"][0].startswith("one_nation: p(95)<0.001 (observed ")
    outcomes = {(t["target"], t["threshold"]): t["passed"] for t in result["thresholds"]}
    assert outcomes[("one_nation", "rate<0.5")] is True
    assert outcomes[("total", "count>0")] is True
    assert outcomes[("total", "rate<0.5")] is True  # failure_detection's default

    evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(["results", "strict"]), "thresholds")]
    )
    record = next(iter(evaluation.values()))
    assert record.status.value == "FAILED"


def test_aborting_threshold_stops_the_load_early_with_an_aborted_verdict(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    failing = WORKLOAD + "-- @name: divide\nSELECT 1 / (n_nationkey - n_nationkey) FROM nation\n"
    thresholds = """\
  thresholds:
    total:
      - {threshold: "rate<0.05", abort_on_fail: true, delay_abort_eval: 1s}
"""
    plan = write_plan(
        tmp_path / "plans", "fragile", port=postgres.port, database=pg_database,
        workload=failing, hold_for="30s", extra=thresholds,
    )  # fmt: skip
    success, run_id = execute(plan, instance)
    assert success
    result = stored_result(run_id)
    assert result["status"] == "completed"
    assert result["verdict"] == "aborted"
    assert "rate<0.05" in result["abort_reason"]
    assert result["duration_s"] < 10
    divide = next(q for q in result["queries"] if q["name"] == "divide")
    assert divide["errors"] > 0 and divide["errors_by_kind"] == {"22": divide["errors"]}


def test_failure_detection_of_the_original_format_aborts_a_failing_run(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    failing = (
        "-- @type: sql\n-- @name: divide\nSELECT 1 / (n_nationkey - n_nationkey) FROM nation\n"
    )
    detection = "  failure_detection: {enabled: true, error_rate_threshold: 0.5, abort_delay: 1s}\n"
    plan = write_plan(
        tmp_path / "plans", "detected", port=postgres.port, database=pg_database,
        workload=failing, hold_for="30s", extra=detection,
    )  # fmt: skip
    success, run_id = execute(plan, instance)
    assert success
    result = stored_result(run_id)
    assert result["verdict"] == "aborted"
    assert "rate<0.5" in result["abort_reason"]
    assert result["duration_s"] < 10
    assert result["failed_thresholds"] == ["total: rate<0.5 (observed 1)"]


def test_open_model_plan_records_latency_from_intended_start_and_per_second_series(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    extra = """\
  warm_up: 1s
  arrival_rate: {rate: 40, time_unit: 1s, pre_allocated_vus: 2, max_vus: 4}
  thresholds:
    one_nation: ["p(99)<5000"]
"""
    plan = write_plan(
        tmp_path / "plans", "open", port=postgres.port, database=pg_database, hold_for="4s",
        extra=extra,
    )  # fmt: skip
    success, run_id = execute(plan, instance)
    assert success
    result = stored_result(run_id)
    assert result["load_model"] == "constant_arrival_rate"
    assert result["verdict"] == "passed"
    # 40 starts per second over the 3 s after the warm-up, split between the two queries.
    assert sum(q["count"] + q["dropped"] for q in result["queries"]) == 120
    for query in result["queries"]:
        assert query["latency_p50_ms"] >= query["p50_ms"] > 0
    assert [h["shard"] for h in result["shard_health"]] == [0]

    settings = get_settings()
    storage = storage_from_url(settings.storage_url, settings)
    lines = storage.get_bytes(result["intervals"]).decode().splitlines()
    seconds = [json.loads(line) for line in lines]
    executed = sum(q["count"] for s in seconds for q in s["queries"].values())
    assert executed == result["total"]["count"]


PARAM_WORKLOAD = """\
-- @type: postgresql
-- @name: nation_by_key
-- @weight: 3
-- @param: key {type: column, fixture: tpch/sf0.01/nation, column: n_nationkey}
SELECT n_name FROM nation WHERE n_nationkey = :key
-- @name: regions_by_name
-- @param: name {type: choice, values: [AFRICA, AMERICA, ASIA, EUROPE, 'MIDDLE EAST']}
SELECT r_regionkey FROM region WHERE r_name = :name
-- @name: unused
SELECT pg_sleep(1)
"""


def test_plan_with_parameters_weights_and_a_seed_runs_them_and_records_the_seed(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    extra = "  seed: 11\n  query_weights: {unused: 0}\n"
    plan = write_plan(
        tmp_path / "plans", "params", port=postgres.port, database=pg_database,
        workload=PARAM_WORKLOAD, workload_id="params", extra=extra,
    )  # fmt: skip
    success, run_id = execute(plan, instance)
    assert success

    result = stored_result(run_id)
    assert result["seed"] == 11
    assert result["query_choice"] == "random"
    event = instance.get_latest_materialization_event(dg.AssetKey(["results", "params"]))
    assert event is not None
    assert event.asset_materialization.metadata["seed"].value == "11"  # type: ignore[union-attr]
    counts = {q["name"]: q["count"] for q in result["queries"]}
    assert counts["unused"] == 0
    assert counts["nation_by_key"] > 2 * counts["regions_by_name"] > 0
    assert all(q["errors"] == 0 for q in result["queries"])


def test_plan_without_a_seed_records_the_seed_it_drew(
    postgres: LocalPostgres, pg_database: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plans", "drawn", port=postgres.port, database=pg_database)
    success, run_id = execute(plan, instance)
    assert success

    assert isinstance(stored_result(run_id)["seed"], int)
