"""Removes shard pods left behind by runs that are gone (a run worker killed before cleanup)."""

from collections.abc import Collection

import kubernetes

from crucible_dagster.launch.pods import LABEL_RUN_ID, LABEL_SUT


def sweep_pods(
    api: kubernetes.client.CoreV1Api,
    namespace: str,
    sut_tag_value: str,
    live_run_ids: Collection[str],
) -> list[str]:
    """Deletes the shard pods of SUT `sut_tag_value` whose `crucible/run-id` is not a live run,
    and returns their names, sorted. A pod that disappears meanwhile counts as swept."""
    pods = api.list_namespaced_pod(namespace, label_selector=f"{LABEL_SUT}={sut_tag_value}")
    swept: list[str] = []
    for pod in pods.items:
        labels = pod.metadata.labels or {}
        if labels.get(LABEL_RUN_ID) in live_run_ids:
            continue
        try:
            api.delete_namespaced_pod(pod.metadata.name, namespace)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
        swept.append(pod.metadata.name)
    return sorted(swept)
