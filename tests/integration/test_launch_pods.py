"""Shards as pods: PipesK8sClient (the real one) against the stand-in Kubernetes API, with the
native engine's shards loading the real PostgreSQL."""

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes
import pytest
from dagster_pipes import decode_param
from pydantic import SecretStr

from crucible_dagster.engine import EngineQuery, LoadShape
from crucible_dagster.engine.runner import native_shard_spec
from crucible_dagster.errors import RunError, SutError
from crucible_dagster.launch import (
    NATIVE_ENTRY,
    KubeAccess,
    PodLoad,
    PodSettings,
    SecretKeyRef,
    run_pod_shards,
    sweep_pods,
)
from crucible_dagster.launch.pods import LABEL_RUN_ID, LABEL_SUT
from crucible_dagster.local_postgres import LocalPostgres, free_port
from crucible_dagster.suts.base import SutTarget, sut_identity
from tests.conftest import PG_PASSWORD
from tests.k8s_standin import StandinKubernetes

pytestmark = pytest.mark.integration

NAMESPACE = "crucible"
RUN_ID = "podtest_20260101-1200_0a1b2c3d"
REPO = Path(__file__).resolve().parents[2]


def never_ready_entry(spec: Any, channel: Any, go: Any, halt: Any, start_at: Any) -> None:
    """A shard entry that never says ready (as a shard stuck connecting would)."""
    while not halt.is_set():
        time.sleep(0.05)


@pytest.fixture
def standin() -> Iterator[StandinKubernetes]:
    server = StandinKubernetes(
        workdir=REPO,
        secrets_by_name={(NAMESPACE, "sut-credentials"): {"password": PG_PASSWORD}},
        base_env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    ).start()
    yield server
    server.stop()
    assert server.live_pids() == []


@pytest.fixture
def access(standin: StandinKubernetes, tmp_path: Path) -> KubeAccess:
    config = standin.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
    return KubeAccess(
        NAMESPACE, kubeconfig_file=str(config), load_incluster_config=False, poll_interval_s=0.2
    )


@pytest.fixture
def api(access: KubeAccess) -> kubernetes.client.CoreV1Api:
    return access.core_api()


SETTINGS = PodSettings(
    image="crucible:test",
    password_secret=SecretKeyRef("sut-credentials"),
    start_lead_s=1.5,
    termination_grace_s=10,
    deadline_slack_s=30.0,
)


def _target(server: LocalPostgres, database: str, port: int | None = None) -> SutTarget:
    identity = sut_identity("postgresql", server.host, port or server.port, database)
    return SutTarget(identity, "postgres", SecretStr(PG_PASSWORD), connect_timeout_s=3.0)


def _queries() -> list[EngineQuery]:
    return [
        EngineQuery("one", "SELECT 1", "workloads/test.sql", 1),
        EngineQuery("series", "SELECT generate_series(1, 50)", "workloads/test.sql", 4),
    ]


def _in_op(work: Callable[[dg.OpExecutionContext], Any]) -> Any:
    """Runs `work` inside a Dagster op of a one-op job, executed in process; its return value."""
    box: dict[str, Any] = {}

    @dg.op
    def load_shards(context: dg.OpExecutionContext) -> None:
        box["value"] = work(context)

    @dg.job
    def pod_shards_job() -> None:
        load_shards()

    pod_shards_job.execute_in_process()
    return box["value"]


def _run(
    context: dg.OpExecutionContext,
    target: SutTarget,
    shape: LoadShape,
    access: KubeAccess,
    *,
    entry: str = NATIVE_ENTRY,
    ready_timeout_s: float = 60.0,
    stop: threading.Event | None = None,
    on_start: Callable[[float], None] | None = None,
) -> PodLoad:
    specs = [native_shard_spec(target, _queries(), shape, i) for i in range(shape.shards)]
    return run_pod_shards(
        context,
        specs,
        entry=entry,
        run_id=RUN_ID,
        sut=target.identity,
        planned_s=shape.planned_s,
        graceful_stop_s=shape.graceful_stop_s,
        pods=SETTINGS,
        access=access,
        ready_timeout_s=ready_timeout_s,
        stop=stop,
        on_start=on_start,
    )


def _shard_pods(api: kubernetes.client.CoreV1Api) -> list[str]:
    listed = api.list_namespaced_pod(NAMESPACE, label_selector=LABEL_RUN_ID)
    return [p.metadata.name for p in listed.items]


def _assert_nothing_left(standin: StandinKubernetes, api: kubernetes.client.CoreV1Api) -> None:
    deadline = time.monotonic() + 15.0
    while (_shard_pods(api) or standin.live_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _shard_pods(api) == []
    assert standin.live_pids() == []


def test_two_pods_split_the_load_and_start_together(
    postgres: LocalPostgres,
    pg_database: str,
    standin: StandinKubernetes,
    access: KubeAccess,
    api: kubernetes.client.CoreV1Api,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = {"name": "worker", "image": "x", "command": ["sleep", "60"]}
    worker = {"metadata": {"name": "run-worker"}, "spec": {"containers": [container]}}
    api.create_namespaced_pod(NAMESPACE, worker)
    monkeypatch.setenv("HOSTNAME", "run-worker")
    target = _target(postgres, pg_database)
    shape = LoadShape(concurrency=4, ramp_up_s=0.0, hold_for_s=2.0, shards=2, seed=5)
    announced: list[float] = []

    load = _in_op(lambda context: _run(context, target, shape, access, on_start=announced.append))
    measurement = load.measurement(_queries(), shape)

    # What a chaos timeline aligns with: the instant the pods were released to start at.
    assert announced == [pytest.approx(measurement.started_at.timestamp(), abs=0.001)]

    assert sorted(r.shard for r in load.results) == [0, 1]
    assert not load.stopped
    for q, query in enumerate(measurement.queries):
        assert query.count == sum(r.counts[q] for r in load.results)
        assert all(r.counts[q] > 0 for r in load.results)
        assert query.errors == 0
        assert query.histogram.get_total_count() == query.count
    assert measurement.shards == 2
    assert measurement.duration_s == pytest.approx(2.0, abs=0.01)
    assert measurement.start_skew_s == load.start_skew_s
    assert 0.0 <= load.start_skew_s < 0.25

    created = [b for b in standin.created if b["metadata"]["name"] != "run-worker"]
    assert len(created) == 2
    uid = api.read_namespaced_pod("run-worker", NAMESPACE).metadata.uid
    for body in created:
        assert body["metadata"]["labels"][LABEL_SUT] == target.identity.tag_value
        assert body["metadata"]["ownerReferences"][0]["uid"] == uid
        env = {e["name"]: e.get("value") for e in body["spec"]["containers"][0]["env"]}
        pipes_context = json.dumps(decode_param(env["DAGSTER_PIPES_CONTEXT"]))
        assert PG_PASSWORD not in json.dumps(body) + pipes_context
    assert all(PG_PASSWORD not in line for pod in standin.created for line in [json.dumps(pod)])
    api.delete_namespaced_pod("run-worker", NAMESPACE)
    _assert_nothing_left(standin, api)


def test_pod_that_never_gets_ready_fails_the_run_and_leaves_nothing(
    postgres: LocalPostgres,
    pg_database: str,
    standin: StandinKubernetes,
    access: KubeAccess,
    api: kubernetes.client.CoreV1Api,
) -> None:
    target = _target(postgres, pg_database)
    shape = LoadShape(concurrency=2, hold_for_s=5.0, shards=2)
    entry = "tests.integration.test_launch_pods:never_ready_entry"

    with pytest.raises(RunError, match="not Ready within 6s") as raised:
        _in_op(lambda c: _run(c, target, shape, access, entry=entry, ready_timeout_s=6.0))

    message = str(raised.value)
    assert message.count("readiness probe failing") == 2
    assert message.count("dagster-") == 2  # both pods named
    _assert_nothing_left(standin, api)


def test_unreachable_sut_fails_with_the_shard_reason_and_leaves_nothing(
    postgres: LocalPostgres,
    pg_database: str,
    standin: StandinKubernetes,
    access: KubeAccess,
    api: kubernetes.client.CoreV1Api,
) -> None:
    target = _target(postgres, pg_database, port=free_port())
    shape = LoadShape(concurrency=2, hold_for_s=5.0, shards=2)

    with pytest.raises(SutError) as raised:
        _in_op(lambda context: _run(context, target, shape, access))

    message = str(raised.value)
    assert "exited with code 2" in message
    assert f"cannot reach {target.identity.key}: connection refused" in message
    assert PG_PASSWORD not in message
    _assert_nothing_left(standin, api)


def test_stop_mid_load_halts_the_shards_keeps_their_results_and_deletes_the_pods(
    postgres: LocalPostgres,
    pg_database: str,
    standin: StandinKubernetes,
    access: KubeAccess,
    api: kubernetes.client.CoreV1Api,
) -> None:
    target = _target(postgres, pg_database)
    shape = LoadShape(concurrency=2, hold_for_s=60.0, shards=2)
    stop = threading.Event()

    def stop_once_loading() -> None:
        # Stop a second after the pods' shards have started.
        while not any(p.get("metadata", {}).get("annotations") for p in _bodies(api)):
            time.sleep(0.1)
        time.sleep(SETTINGS.start_lead_s + 1.0)
        stop.set()

    threading.Thread(target=stop_once_loading, daemon=True).start()
    began = time.monotonic()
    load = _in_op(lambda context: _run(context, target, shape, access, stop=stop))
    measurement = load.measurement(_queries(), shape)

    assert time.monotonic() - began < 45.0
    assert load.stopped and load.halted_at is not None
    assert measurement.interrupted_by_stop
    assert measurement.duration_s < 10.0
    assert sorted(r.shard for r in load.results) == [0, 1]
    assert sum(q.count for q in measurement.queries) > 0
    _assert_nothing_left(standin, api)


def test_pods_deleted_mid_load_get_sigterm_and_still_report(
    postgres: LocalPostgres,
    pg_database: str,
    standin: StandinKubernetes,
    access: KubeAccess,
    api: kubernetes.client.CoreV1Api,
) -> None:
    target = _target(postgres, pg_database)
    shape = LoadShape(concurrency=2, hold_for_s=60.0, shards=2)

    def delete_once_loading() -> None:
        # What the garbage collector does when the run worker's pod goes, or an operator.
        while not any(p.get("metadata", {}).get("annotations") for p in _bodies(api)):
            time.sleep(0.1)
        time.sleep(SETTINGS.start_lead_s + 1.0)
        for name in _shard_pods(api):
            api.delete_namespaced_pod(name, NAMESPACE)

    threading.Thread(target=delete_once_loading, daemon=True).start()
    began = time.monotonic()
    load = _in_op(lambda context: _run(context, target, shape, access))
    measurement = load.measurement(_queries(), shape)

    assert time.monotonic() - began < 45.0
    assert load.stopped and measurement.interrupted_by_stop
    assert sorted(r.shard for r in load.results) == [0, 1]
    assert all(sum(r.counts) > 0 for r in load.results)
    _assert_nothing_left(standin, api)


def _bodies(api: kubernetes.client.CoreV1Api) -> list[dict[str, Any]]:
    listed = api.list_namespaced_pod(NAMESPACE, label_selector=LABEL_RUN_ID)
    return [api.api_client.sanitize_for_serialization(p) for p in listed.items]


def test_sweeper_removes_the_pods_of_dead_runs_only(
    standin: StandinKubernetes, api: kubernetes.client.CoreV1Api
) -> None:
    sut = sut_identity("postgresql", "127.0.0.1", 5432, "tpch").tag_value
    other_sut = sut_identity("postgresql", "127.0.0.1", 5432, "other").tag_value
    for name, run_id, tag in [
        ("dead-0", "dead_20260101-0000_00000000", sut),
        ("dead-1", "dead_20260101-0000_00000000", sut),
        ("live-0", "live_20260101-0000_11111111", sut),
        ("elsewhere-0", "dead_20260101-0000_00000000", other_sut),
    ]:
        body = {
            "metadata": {"name": name, "labels": {LABEL_RUN_ID: run_id, LABEL_SUT: tag}},
            "spec": {"containers": [{"name": "s", "image": "x", "command": ["sleep", "60"]}]},
        }
        api.create_namespaced_pod(NAMESPACE, body)

    swept = sweep_pods(api, NAMESPACE, sut, live_run_ids={"live_20260101-0000_11111111"})

    assert swept == ["dead-0", "dead-1"]
    deadline = time.monotonic() + 10.0
    while len(_shard_pods(api)) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(_shard_pods(api)) == ["elsewhere-0", "live-0"]
    assert sweep_pods(api, NAMESPACE, sut, live_run_ids={"live_20260101-0000_11111111"}) == []
