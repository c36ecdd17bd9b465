"""Plans with chaos, run as Dagster jobs against a real PostgreSQL of their own: the faults are
injected on the load's clock, recovered, and their effect shows in the result."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from crucible_dagster.chaos.base import PlannedFault
from crucible_dagster.chaos.local import LocalBackend
from crucible_dagster.lease import LeaseStore
from crucible_dagster.local_postgres import LocalPostgres, free_port
from crucible_dagster.plan import load_plan
from crucible_dagster.run import plan_sut
from crucible_dagster.settings import get_settings
from tests.chaos_mesh_standin import Pod, StandinChaosMesh
from tests.chaosd_standin import StandinChaosd
from tests.conftest import PG_PASSWORD, answers, paused
from tests.integration.test_plan_job import execute, stored_result

pytestmark = pytest.mark.integration

WORKLOAD = """\
-- @type: sql
-- @name: one
SELECT 1
-- @name: sleepy
SELECT pg_sleep(0.005)
"""


@pytest.fixture
def instance(crucible_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    monkeypatch.setenv("CRUCIBLE_TEST_PG_PASSWORD", PG_PASSWORD)
    with dg.instance_for_test() as instance:
        yield instance


def chaos_plan(folder: Path, name: str, server: LocalPostgres, chaos: str, *,
               hold_for: str = "9s") -> Path:  # fmt: skip
    (folder / "workloads").mkdir(parents=True, exist_ok=True)
    (folder / "workloads" / "tiny.sql").write_text(WORKLOAD)
    path = folder / f"{name}.yaml"
    path.write_text(f"""\
test_metadata:
  run_label: {name}
test_environment:
  env_type: long-lived
  target_db: postgres
  component_spec:
    type: postgresql
    cluster_info:
      host: 127.0.0.1
      port: {server.port}
      username: postgres
      password: {{env: CRUCIBLE_TEST_PG_PASSWORD}}
execution:
  concurrency: 2
  ramp_up: 0s
  hold_for: {hold_for}
  graceful_stop: 5s
  workload:
    - workload_id: tiny
chaos_spec:
{chaos}""")
    return path


def total_impact(fault: dict) -> dict:
    return next(i for i in fault["impact"] if i["query"] == "total")


def test_pausing_the_sut_shows_in_the_during_window_and_it_runs_again_afterwards(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    pid_file = own_postgres.data_dir / "postmaster.pid"
    plan = chaos_plan(tmp_path / "plans", "paused", own_postgres, f"""\
  engine: local
  experiments:
    - name: freeze
      fault_type: pause
      target: {{pid_file: {pid_file}}}
      schedule: {{start_after: 3s, duration: 2s}}
""")  # fmt: skip
    success, run_id = execute(plan, instance)
    assert success
    result = stored_result(run_id)
    assert result["status"] == "completed"
    [fault] = result["faults"]
    assert fault["status"] == "recovered"
    assert fault["backend"] == "local" and fault["fault_type"] == "pause"
    assert fault["inject_s"] == pytest.approx(3.0, abs=0.3)
    assert fault["recover_s"] == pytest.approx(5.0, abs=0.3)
    total = total_impact(fault)
    before, during, after = total["before"], total["during"], total["after"]
    # Nothing ends while the SUT is paused; the queries it held up end just after it resumes,
    # in the first second after the fault, having waited up to its 2 s.
    assert before["p99_ms"] < 200
    assert during["qps"] < before["qps"] / 10
    assert after["max_ms"] > 1000
    # Two held-up queries among hundreds in that second leave its p99 where it was.
    assert total["recovered"] is True and total["time_to_recover_s"] < 3

    assert not paused(own_postgres)
    assert answers(own_postgres)
    settings = get_settings()
    assert LeaseStore(settings.database_url).open_faults() == []
    assert LeaseStore(settings.database_url).holder(plan_sut(load_plan(plan))) is None

    event = instance.get_latest_materialization_event(dg.AssetKey(["results", "paused"]))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert "freeze" in str(metadata["faults"].value)
    assert result["chart"] == f"results/{run_id}/latency.svg"
    assert result["report"] == f"results/{run_id}/report.html"


def test_the_proxy_latency_shows_up_as_measured(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = chaos_plan(tmp_path / "plans", "slowed", own_postgres, """\
  engine: local
  experiments:
    - name: slow-link
      fault_type: latency
      target: {}
      parameters: {latency: 50ms}
      schedule: {start_after: 3s, duration: 3s}
""")  # fmt: skip
    success, run_id = execute(plan, instance)
    assert success
    [fault] = stored_result(run_id)["faults"]
    assert fault["status"] == "recovered"
    assert "50ms" in fault["inject_status"]
    for impact in fault["impact"]:
        if impact["query"] == "total":
            continue
        before, during, after = impact["before"], impact["during"], impact["after"]
        # The seconds at the edges of the window mix both; the median is the fault's.
        assert 40 <= during["p50_ms"] - before["p50_ms"] <= 90, impact
        assert after["p50_ms"] < before["p50_ms"] + 20, impact


def test_a_fault_that_cannot_be_injected_fails_the_run_and_keeps_the_measurement(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    chaosd = StandinChaosd(refuse_attacks="stress-ng: command not found").start()
    try:
        plan = chaos_plan(tmp_path / "plans", "refused", own_postgres, f"""\
  engine: chaosd
  experiments:
    - name: cpu-hog
      fault_type: stress
      target: {{address: "{chaosd.address}"}}
      parameters: {{action: cpu, workers: 1, load: 10}}
      schedule: {{start_after: 2s, duration: 2s}}
""", hold_for="20s")  # fmt: skip
        started = time.monotonic()
        success, run_id = execute(plan, instance)
    finally:
        chaosd.stop()
    assert not success
    assert time.monotonic() - started < 20, "the load went on without its fault"
    result = stored_result(run_id)
    assert result["status"] == "failed"
    assert "could not inject 'cpu-hog' (stress)" in result["error"]
    assert "stress-ng: command not found" in result["error"]
    assert result["faults"][0]["status"] == "inject_failed"
    assert result["total"]["count"] > 0


def test_a_chaosd_that_does_not_answer_refuses_the_run_before_the_load(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = chaos_plan(tmp_path / "plans", "unanswered", own_postgres, f"""\
  engine: chaosd
  experiments:
    - name: cpu-hog
      fault_type: stress
      target: {{address: "127.0.0.1:{free_port()}"}}
      parameters: {{action: cpu, workers: 1, load: 10}}
      schedule: {{start_after: 2s, duration: 2s}}
""")  # fmt: skip
    success, run_id = execute(plan, instance)
    assert not success
    result = stored_result(run_id)
    assert result["status"] == "failed"
    assert "unanswered.yaml:" in result["error"]
    assert "experiment 'cpu-hog': chaosd at 127.0.0.1:" in result["error"]
    assert result["total"] is None


def test_the_next_run_recovers_a_fault_a_dead_run_left_before_it_measures(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    pid_file = own_postgres.data_dir / "postmaster.pid"
    plan = chaos_plan(tmp_path / "plans", "after_crash", own_postgres, f"""\
  engine: local
  experiments:
    - name: late-freeze
      fault_type: pause
      target: {{pid_file: {pid_file}}}
      schedule: {{start_after: 3s, duration: 1s}}
""", hold_for="5s")  # fmt: skip
    sut = plan_sut(load_plan(plan))
    # What a run killed in the middle of its fault leaves: the SUT paused, the recipe journalled.
    dead_run = "after_crash_20261204-0500_deadbeef"
    left = PlannedFault(name="freeze", backend="local", fault_type="pause",
                        target={"pid_file": str(pid_file)}, parameters={}, start_s=0, end_s=60,
                        run_id=dead_run, sut_key=sut.key, sut_host="127.0.0.1",
                        sut_port=own_postgres.port)  # fmt: skip
    injected = LocalBackend().inject(left)
    store = LeaseStore(get_settings().database_url)
    store.record_fault(sut.key, dead_run, "freeze", json.dumps(dict(injected.recipe)))
    assert paused(own_postgres)

    success, run_id = execute(plan, instance)
    assert success
    result = stored_result(run_id)
    assert result["status"] == "completed"
    assert result["total"]["errors"] == 0
    assert result["faults"][0]["status"] == "recovered"
    assert store.open_faults() == []
    assert answers(own_postgres)


def test_a_chaos_mesh_fault_is_created_watched_and_deleted_on_the_load_clock(
    own_postgres: LocalPostgres,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = [Pod("db", "pg-0", {"app": "pg"}, ("postgres",))]
    chaos_mesh = StandinChaosMesh(pods=pods, inject_delay_s=0.3, recover_delay_s=0.3).start()
    try:
        kubeconfig = chaos_mesh.write_kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("CRUCIBLE_K8S_KUBECONFIG", str(kubeconfig))
        get_settings.cache_clear()
        plan = chaos_plan(tmp_path / "plans", "meshed", own_postgres, """\
  engine: chaos-mesh
  experiments:
    - name: pg-delay
      fault_type: networkchaos
      target: {namespace: db, selector: {app: pg}}
      parameters: {action: delay, delay: {latency: 10ms}}
      schedule: {start_after: 2s, duration: 3s}
""", hold_for="7s")  # fmt: skip
        success, run_id = execute(plan, instance)
        assert success
        [fault] = stored_result(run_id)["faults"]
        calls = list(chaos_mesh.requests)
        left = dict(chaos_mesh.objects)
    finally:
        chaos_mesh.stop()
        get_settings.cache_clear()
    assert fault["status"] == "recovered"
    assert fault["backend"] == "chaos-mesh" and fault["fault_type"] == "NetworkChaos"
    assert fault["target"] == "pods app=pg in namespace db"
    assert "AllInjected" in fault["inject_status"]
    assert fault["inject_s"] == pytest.approx(2.3, abs=0.5)
    methods = [method for method, path in calls if "/networkchaos" in path]
    assert "POST" in methods and "DELETE" in methods
    assert left == {}


def test_a_chaosd_attack_is_sent_and_recovered_on_the_load_clock(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    chaosd = StandinChaosd().start()
    try:
        plan = chaos_plan(tmp_path / "plans", "attacked", own_postgres, f"""\
  engine: chaosd
  experiments:
    - name: cpu-hog
      fault_type: STRESS
      target: {{address: "{chaosd.address}"}}
      parameters: {{action: cpu, workers: 1, load: 10}}
      schedule: {{start_after: 1s, duration: 2s}}
""", hold_for="4s")  # fmt: skip
        success, run_id = execute(plan, instance)
        sent = [(r.method, r.path) for r in chaosd.requests]
    finally:
        chaosd.stop()
    assert success
    [fault] = stored_result(run_id)["faults"]
    assert fault["status"] == "recovered"
    assert "attack successfully" in fault["inject_status"]
    assert ("POST", "/api/attack/stress") in sent
    assert any(method == "DELETE" and path.startswith("/api/attack/") for method, path in sent)


def test_an_aborting_threshold_ends_the_fault_with_the_load_and_the_sut_is_unharmed(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    plan = chaos_plan(tmp_path / "plans", "reset_abort", own_postgres, """\
  engine: local
  experiments:
    - name: cut-off
      fault_type: reset
      target: {}
      schedule: {start_after: 2s, duration: 20s}
""", hold_for="30s")  # fmt: skip
    text = plan.read_text().replace(
        "  workload:\n",
        "  thresholds:\n    total:\n"
        "      - {threshold: \"rate<0.001\", abort_on_fail: true, delay_abort_eval: 1s}\n"
        "  workload:\n",
    )  # fmt: skip
    plan.write_text(text)
    started = time.monotonic()
    success, run_id = execute(plan, instance)
    assert success
    assert time.monotonic() - started < 25
    result = stored_result(run_id)
    assert result["verdict"] == "aborted"
    [fault] = result["faults"]
    assert fault["status"] == "recovered_early"
    assert fault["recover_s"] < 20
    during = total_impact(fault)["during"]
    assert during["errors"] > 0
    assert answers(own_postgres)


def test_the_sweeper_recovers_what_a_failed_run_left_before_it_frees_the_lease(
    own_postgres: LocalPostgres, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    from crucible_dagster.defs.sweeper import crucible_sweeper
    from crucible_dagster.run import RUN_ID_TAG
    from crucible_dagster.suts.base import sut_identity

    failed_run = "swept_20261204-0500_0badc0de"
    sut = sut_identity("postgresql", "127.0.0.1", own_postgres.port, "postgres")
    store = LeaseStore(get_settings().database_url)
    assert store.try_acquire(sut, failed_run, "swept", None, ttl_s=600) is not None
    pid_file = own_postgres.data_dir / "postmaster.pid"
    left = PlannedFault(name="freeze", backend="local", fault_type="pause",
                        target={"pid_file": str(pid_file)}, parameters={}, start_s=0, end_s=60,
                        run_id=failed_run, sut_key=sut.key)  # fmt: skip
    injected = LocalBackend().inject(left)
    store.record_fault(sut.key, failed_run, "freeze", json.dumps(dict(injected.recipe)))

    @dg.op
    def breaks() -> None:
        raise RuntimeError("the run worker fell over")

    @dg.job
    def falls_over() -> None:
        breaks()

    outcome = falls_over.execute_in_process(instance=instance, raise_on_error=False,
                                            tags={RUN_ID_TAG: failed_run})  # fmt: skip
    context = dg.build_run_status_sensor_context(
        sensor_name="crucible_sweeper", dagster_instance=instance,
        dagster_run=outcome.dagster_run, dagster_event=outcome.get_run_failure_event(),
    ).for_run_failure()  # fmt: skip
    crucible_sweeper(context)

    assert not paused(own_postgres)
    assert store.open_faults() == []
    assert store.holder(sut) is None
    assert answers(own_postgres)
