"""Where shards run: as Kubernetes pods through Dagster Pipes, released by a start barrier."""

from crucible_dagster.launch.codec import (
    shard_result_from_json,
    shard_result_to_json,
    shard_spec_from_json,
    shard_spec_to_json,
)
from crucible_dagster.launch.k8s import (
    NATIVE_ENTRY,
    KubeAccess,
    PodLoad,
    run_pod_load,
    run_pod_shards,
)
from crucible_dagster.launch.pods import PodResources, PodSettings, SecretKeyRef
from crucible_dagster.launch.sweeper import sweep_pods

__all__ = [
    "NATIVE_ENTRY",
    "KubeAccess",
    "PodLoad",
    "PodResources",
    "PodSettings",
    "SecretKeyRef",
    "run_pod_load",
    "run_pod_shards",
    "shard_result_from_json",
    "shard_result_to_json",
    "shard_spec_from_json",
    "shard_spec_to_json",
    "sweep_pods",
]
