"""A plan with `scaling_mode: inter_node` run through Dagster: its shards as pods, launched by
the real PipesK8sClient against the stand-in Kubernetes API (see tests/k8s_standin.py), loading
the real PostgreSQL, merged into one result."""

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import kubernetes
import pytest

from crucible_dagster.launch.pods import LABEL_RUN_ID, LABEL_SUT
from crucible_dagster.local_postgres import LocalPostgres
from crucible_dagster.plan import load_plan
from crucible_dagster.run import plan_sut
from crucible_dagster.settings import get_settings
from tests import servers_clickhouse
from tests.conftest import PG_PASSWORD
from tests.integration import test_k6_clickhouse as k6_tests
from tests.integration import test_plan_job as plan_job_tests
from tests.k8s_standin import StandinKubernetes
from tests.servers_clickhouse import CH_PASSWORD, ClickHouseServer

pytestmark = pytest.mark.integration

NAMESPACE = "crucible"
SECRET = "sut-passwords"
PASSWORD_ENV = "CRUCIBLE_TEST_PG_PASSWORD"
CH_PASSWORD_ENV = "CRUCIBLE_TEST_CH_PASSWORD"

clickhouse = servers_clickhouse.clickhouse
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def standin() -> Iterator[StandinKubernetes]:
    server = StandinKubernetes(
        workdir=REPO,
        secrets_by_name={
            (NAMESPACE, SECRET): {PASSWORD_ENV: PG_PASSWORD, CH_PASSWORD_ENV: CH_PASSWORD}
        },
        base_env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    ).start()
    yield server
    server.stop()
    assert server.live_pids() == []


@pytest.fixture
def instance(
    crucible_home: Path,
    standin: StandinKubernetes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dg.DagsterInstance]:
    config = standin.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
    monkeypatch.setenv(PASSWORD_ENV, PG_PASSWORD)
    monkeypatch.setenv(CH_PASSWORD_ENV, CH_PASSWORD)
    for name, value in {
        "CRUCIBLE_K8S_IMAGE": "crucible:test",
        "CRUCIBLE_K8S_K6_IMAGE": "crucible-k6:test",
        "CRUCIBLE_K8S_NAMESPACE": NAMESPACE,
        "CRUCIBLE_K8S_PASSWORD_SECRET": SECRET,
        "CRUCIBLE_K8S_KUBECONFIG": str(config),
        "CRUCIBLE_K8S_START_LEAD_S": "1.5",
        "CRUCIBLE_K8S_READY_TIMEOUT_S": "90",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with dg.instance_for_test() as instance:
        yield instance
    get_settings.cache_clear()


def _plan(tmp_path: Path, postgres: LocalPostgres, database: str, name: str) -> Path:
    path = plan_job_tests.write_plan(tmp_path / "plans", name, port=postgres.port,
                                     database=database, hold_for="3s")  # fmt: skip
    text = path.read_text().replace("scaling_mode: intra_node", "scaling_mode: inter_node")
    text = text.replace("  concurrency: 2\n", "  concurrency: 4\n  shards: 2\n"
                        "  resources: {requests: {cpu: 250m, memory: 256Mi}}\n")  # fmt: skip
    path.write_text(text)
    return path


def test_inter_node_plan_runs_two_pods_merged_into_one_result(
    postgres: LocalPostgres,
    pg_database: str,
    instance: dg.DagsterInstance,
    standin: StandinKubernetes,
    tmp_path: Path,
) -> None:
    api = kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(str(tmp_path / "kubeconfig"))
    )
    leftover = kubernetes.client.V1Pod(
        metadata=kubernetes.client.V1ObjectMeta(
            name="dead-run-shard-0",
            labels={LABEL_RUN_ID: "dead_20250101-0000_00000000", LABEL_SUT: "x"},
        ),
        spec=kubernetes.client.V1PodSpec(
            restart_policy="Never",
            containers=[kubernetes.client.V1Container(
                name="shard", image="crucible:test",
                command=[sys.executable, "-c", "import time; time.sleep(600)"],
            )],
        ),
    )  # fmt: skip
    plan = _plan(tmp_path, postgres, pg_database, "pods")
    leftover.metadata.labels[LABEL_SUT] = plan_sut(load_plan(plan)).tag_value
    api.create_namespaced_pod(NAMESPACE, leftover)

    success, run_id = plan_job_tests.execute(plan, instance)
    result = plan_job_tests.stored_result(run_id)

    assert success, result.get("error")
    assert result["status"] == "completed" and result["verdict"] == "passed"
    assert result["shards"] == 2 and result["scaling_mode"] == "inter_node"
    assert 0 <= result["start_skew_s"] < 1.0
    for query in result["queries"]:
        assert query["count"] > 0 and query["errors"] == 0, query
        assert query["histogram"]
    # The dead run's pod on this SUT was swept before the load; no pod of the run is left.
    names = [p.metadata.name for p in api.list_namespaced_pod(NAMESPACE).items]
    assert names == []
    created = standin.created
    shard_pods = [p for p in created if p["metadata"]["labels"].get(LABEL_RUN_ID) == run_id]
    assert len(shard_pods) == 2
    resources = shard_pods[0]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert PG_PASSWORD not in str(created)


def test_k6_plan_runs_its_shards_as_pods_on_the_k6_image(
    clickhouse: ClickHouseServer,
    instance: dg.DagsterInstance,
    standin: StandinKubernetes,
    tmp_path: Path,
) -> None:
    database = "k6pods_" + secrets.token_hex(4)
    execution = "  executor: k6\n  shards: 2\n"
    plan = k6_tests.plan_file(tmp_path / "plans", "k6_pods", port=clickhouse.http_port,
                              database=database, execution=execution)  # fmt: skip
    plan.write_text(
        plan.read_text().replace("scaling_mode: intra_node", "scaling_mode: inter_node")
    )
    try:
        success, run_id = plan_job_tests.execute(plan, instance)
        result = plan_job_tests.stored_result(run_id)
    finally:
        clickhouse.query(f"DROP DATABASE IF EXISTS {database}")

    assert success, result.get("error")
    assert result["engine"] == "k6" and result["shards"] == 2
    assert result["status"] == "completed" and result["verdict"] == "passed"
    for query in result["queries"]:
        assert query["count"] > 0 and query["errors"] == 0, query
        assert query["histogram"]
    shard_pods = [p for p in standin.created if p["metadata"]["labels"].get(LABEL_RUN_ID) == run_id]
    assert len(shard_pods) == 2
    assert {p["spec"]["containers"][0]["image"] for p in shard_pods} == {"crucible-k6:test"}
    assert CH_PASSWORD not in str(standin.created)
