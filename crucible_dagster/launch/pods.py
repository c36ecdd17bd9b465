"""The pod of one shard: metadata and spec, as plain Kubernetes dicts for `PipesK8sClient`.

Each shard pod runs `python -m crucible_dagster.launch.pod_shard` in one container. It carries
the labels `crucible/run-id`, `crucible/sut` and `crucible/shard`, an owner reference to the
run worker's pod (so Kubernetes removes it with the run), a deadline, and resource requests.
The SUT password reaches it only as an environment variable taken from a Kubernetes secret. Two
volumes make the start barrier: an emptyDir where the shard writes its ready file (which the
readiness probe tests) and a downward-API file of the pod's annotations, where the orchestrator
publishes the shared start instant (`crucible/start-at`) and, to stop early, `crucible/halt`.
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from crucible_dagster.suts.base import SutIdentity

LABEL_RUN_ID = "crucible/run-id"
LABEL_SUT = "crucible/sut"
LABEL_SHARD = "crucible/shard"
# Tells apart the pods of one call of `run_pod_shards` from any other pods of the same run.
LABEL_LAUNCH = "crucible/launch"
ANNOTATION_START_AT = "crucible/start-at"
# Set to ask the shards to stop early; they report what they measured and exit.
ANNOTATION_HALT = "crucible/halt"

CONTAINER_NAME = "shard"
POD_COMMAND = ("python", "-m", "crucible_dagster.launch.pod_shard")

STATE_VOLUME = "crucible-state"
STATE_MOUNT = "/var/run/crucible"
READY_FILE = f"{STATE_MOUNT}/ready"
BARRIER_VOLUME = "crucible-barrier"
BARRIER_MOUNT = "/etc/crucible/barrier"
ANNOTATIONS_FILE = f"{BARRIER_MOUNT}/annotations"
TERMINATION_LOG = "/dev/termination-log"

ENV_READY_FILE = "CRUCIBLE_READY_FILE"
ENV_ANNOTATIONS_FILE = "CRUCIBLE_ANNOTATIONS_FILE"
ENV_TERMINATION_LOG = "CRUCIBLE_TERMINATION_LOG"
ENV_SUT_PASSWORD = "CRUCIBLE_SUT_PASSWORD"

# Exit codes of a shard pod: a result reported, another failure, the SUT could not be used.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SUT_ERROR = 2


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a Kubernetes secret in the pods' namespace."""

    name: str
    key: str = "password"


@dataclass(frozen=True)
class PodResources:
    """Requests and limits of a shard container, in Kubernetes quantities; None leaves it out."""

    cpu_request: str | None = "1"
    memory_request: str | None = "512Mi"
    cpu_limit: str | None = None
    memory_limit: str | None = "1Gi"

    def as_dict(self) -> dict[str, dict[str, str]]:
        requests = {"cpu": self.cpu_request, "memory": self.memory_request}
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        body: dict[str, dict[str, str]] = {}
        if any(v is not None for v in requests.values()):
            body["requests"] = {k: v for k, v in requests.items() if v is not None}
        if any(v is not None for v in limits.values()):
            body["limits"] = {k: v for k, v in limits.items() if v is not None}
        return body


@dataclass(frozen=True)
class PodSettings:
    """How shard pods are built.

    `password_secret` names the secret holding the SUT password (None: the SUT takes none).
    `deadline_slack_s` is added to the pod's working time for `activeDeadlineSeconds`.
    `start_lead_s` is how far ahead of the release the shared start instant lies; it must
    cover the kubelet's update of the annotations volume (seconds on a healthy node).
    """

    image: str
    password_secret: SecretKeyRef | None = None
    resources: PodResources = field(default_factory=PodResources)
    service_account_name: str | None = None
    image_pull_policy: str = "IfNotPresent"
    termination_grace_s: int = 30
    deadline_slack_s: float = 120.0
    start_lead_s: float = 10.0
    extra_env: Mapping[str, str] = field(default_factory=dict)


def shard_labels(run_id: str, sut: SutIdentity, shard: int, launch: str) -> dict[str, str]:
    return {
        LABEL_RUN_ID: run_id,
        LABEL_SUT: sut.tag_value,
        LABEL_SHARD: str(shard),
        LABEL_LAUNCH: launch,
    }


def active_deadline_s(working_s: float, settings: PodSettings) -> int:
    """`activeDeadlineSeconds` for a pod that works `working_s` (waits and load included)."""
    return max(1, math.ceil(working_s + settings.termination_grace_s + settings.deadline_slack_s))


def pod_meta(
    run_id: str,
    sut: SutIdentity,
    shard: int,
    launch: str,
    owner: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The pod's metadata (PipesK8sClient names the pod and adds its own labels)."""
    meta: dict[str, Any] = {"labels": shard_labels(run_id, sut, shard, launch)}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    return meta


def pod_spec(settings: PodSettings, deadline_s: int) -> dict[str, Any]:
    """The pod spec of one shard."""
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": ENV_READY_FILE, "value": READY_FILE},
        {"name": ENV_ANNOTATIONS_FILE, "value": ANNOTATIONS_FILE},
        {"name": ENV_TERMINATION_LOG, "value": TERMINATION_LOG},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(settings.extra_env.items())]
    if settings.password_secret is not None:
        secret = settings.password_secret
        env.append(
            {
                "name": ENV_SUT_PASSWORD,
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(POD_COMMAND),
        "env": env,
        "resources": settings.resources.as_dict(),
        "readinessProbe": {
            "exec": {"command": ["test", "-e", READY_FILE]},
            "periodSeconds": 1,
            "failureThreshold": 1,
            "successThreshold": 1,
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"name": STATE_VOLUME, "mountPath": STATE_MOUNT},
            {"name": BARRIER_VOLUME, "mountPath": BARRIER_MOUNT, "readOnly": True},
        ],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline_s,
        "terminationGracePeriodSeconds": settings.termination_grace_s,
        "containers": [container],
        "volumes": [
            {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}},
            {
                "name": BARRIER_VOLUME,
                "downwardAPI": {
                    "items": [
                        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
                    ]
                },
            },
        ],
    }
    if settings.service_account_name is not None:
        spec["serviceAccountName"] = settings.service_account_name
    return spec


def run_worker_owner(
    api: kubernetes.client.CoreV1Api, namespace: str, hostname: str | None = None
) -> dict[str, Any] | None:
    """The owner reference to the pod this process runs in, found by `$HOSTNAME` in `namespace`
    (as dagster_k8s's executor does); None outside a pod."""
    name = hostname if hostname is not None else os.environ.get("HOSTNAME", "")
    if not name:
        return None
    try:
        pod = api.read_namespaced_pod(name, namespace)
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod.metadata.name,
        "uid": pod.metadata.uid,
        "blockOwnerDeletion": False,
        "controller": False,
    }
