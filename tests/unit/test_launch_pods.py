"""Shard pod specs: valid Kubernetes objects with the labels, deadline, secret and barrier."""

from typing import Any

import kubernetes
import kubernetes_validate
import pytest
from dagster_k8s.pipes import build_pod_body
from pydantic import SecretStr

from crucible_dagster.engine.model import EngineQuery, LoadShape
from crucible_dagster.engine.runner import native_shard_spec
from crucible_dagster.errors import RunError
from crucible_dagster.launch import KubeAccess, run_pod_shards
from crucible_dagster.launch.pods import (
    ANNOTATIONS_FILE,
    BARRIER_MOUNT,
    ENV_SUT_PASSWORD,
    LABEL_RUN_ID,
    LABEL_SHARD,
    LABEL_SUT,
    READY_FILE,
    PodResources,
    PodSettings,
    SecretKeyRef,
    active_deadline_s,
    pod_meta,
    pod_spec,
)
from crucible_dagster.suts.base import SutTarget, sut_identity

RUN_ID = "demo_20260101-1200_0a1b2c3d"
SUT = sut_identity("postgresql", "DB.example.com", 5432, "tpch")
OWNER = {"apiVersion": "v1", "kind": "Pod", "name": "dagster-run-1", "uid": "1234-abcd"}


def _settings(**overrides: Any) -> PodSettings:
    values: dict[str, Any] = {
        "image": "registry.example.com/crucible:1.0",
        "password_secret": SecretKeyRef("sut-credentials", "password"),
    }
    return PodSettings(**(values | overrides))


def _pod(settings: PodSettings, owner: dict[str, Any] | None = OWNER) -> dict[str, Any]:
    """The pod PipesK8sClient would create from our metadata and spec, as the API sees it."""
    body = build_pod_body(
        pod_name="dagster-demo-shard-0123456789",
        image=None,
        command=None,
        env_vars={"DAGSTER_PIPES_CONTEXT": "e30=", "DAGSTER_PIPES_MESSAGES": "e30="},
        base_pod_meta=pod_meta(RUN_ID, SUT, 1, "feedbeef", owner),
        base_pod_spec=pod_spec(settings, active_deadline_s(100.0, settings)),
    )
    # The client sends no apiVersion and kind (the URL says them); validation needs both.
    serialized = kubernetes.client.ApiClient().sanitize_for_serialization(body)
    return {"apiVersion": "v1", "kind": "Pod", **serialized}


def test_shard_pod_is_a_valid_kubernetes_1_30_pod() -> None:
    pod = _pod(_settings())

    assert kubernetes_validate.validate(pod, "1.30", strict=True) == "1.30"


def test_strict_validation_rejects_a_field_kubernetes_does_not_know() -> None:
    pod = _pod(_settings())
    pod["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 1

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.30", strict=True)


def test_shard_pod_without_owner_secret_or_limits_is_still_valid() -> None:
    resources = PodResources(cpu_request=None, memory_request=None, memory_limit=None)
    pod = _pod(_settings(password_secret=None, resources=resources), owner=None)

    kubernetes_validate.validate(pod, "1.30", strict=True)
    assert "ownerReferences" not in pod["metadata"]
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert ENV_SUT_PASSWORD not in names


def test_shard_pod_is_labelled_with_run_sut_and_shard_and_owned_by_the_run_worker() -> None:
    pod = _pod(_settings())

    labels = pod["metadata"]["labels"]
    assert labels[LABEL_RUN_ID] == RUN_ID
    assert labels[LABEL_SUT] == SUT.tag_value == "postgresql.db.example.com.5432.tpch"
    assert labels[LABEL_SHARD] == "1"
    assert pod["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "dagster-run-1", "uid": "1234-abcd"}
    ]


def test_shard_pod_takes_the_password_from_a_secret_and_never_holds_it() -> None:
    pod = _pod(_settings())

    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env[ENV_SUT_PASSWORD] == {
        "name": ENV_SUT_PASSWORD,
        "valueFrom": {"secretKeyRef": {"name": "sut-credentials", "key": "password"}},
    }


def test_shard_pod_deadline_covers_work_grace_and_slack() -> None:
    settings = _settings(termination_grace_s=30, deadline_slack_s=120.0)

    pod = _pod(settings)

    assert pod["spec"]["activeDeadlineSeconds"] == 250
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30


def test_shard_pod_has_the_barrier_volumes_and_a_readiness_probe_on_the_ready_file() -> None:
    pod = _pod(_settings())

    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "crucible_dagster.launch.pod_shard"]
    assert container["readinessProbe"]["exec"]["command"] == ["test", "-e", READY_FILE]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[READY_FILE.rsplit("/", 1)[0]]]
    barrier = volumes[mounts[BARRIER_MOUNT]]["downwardAPI"]["items"]
    assert barrier == [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]
    assert f"{BARRIER_MOUNT}/annotations" == ANNOTATIONS_FILE


def test_shard_pod_asks_for_the_configured_resources() -> None:
    resources = PodResources(
        cpu_request="2", memory_request="1Gi", cpu_limit="4", memory_limit="2Gi"
    )

    pod = _pod(_settings(resources=resources))

    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "1Gi"},
        "limits": {"cpu": "4", "memory": "2Gi"},
    }


def test_pods_for_a_sut_with_a_password_need_a_secret_to_carry_it() -> None:
    target = SutTarget(SUT, "bench", SecretStr("hunter2"))
    spec = native_shard_spec(target, [EngineQuery("q", "SELECT 1", "w.sql", 1)], LoadShape(), 0)

    with pytest.raises(RunError, match="no Kubernetes secret") as raised:
        run_pod_shards(
            None,  # type: ignore[arg-type]
            [spec],
            entry="crucible_dagster.engine.shard:shard_main",
            run_id=RUN_ID,
            sut=SUT,
            planned_s=1.0,
            graceful_stop_s=1.0,
            pods=_settings(password_secret=None),
            access=KubeAccess("crucible"),
        )
    assert "hunter2" not in str(raised.value)
