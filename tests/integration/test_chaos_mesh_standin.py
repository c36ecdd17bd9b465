"""The Chaos Mesh backend with the real `kubernetes` client against the Chaos Mesh stand-in (an
API server that checks objects against the Chaos Mesh CRDs and plays the controller)."""

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from crucible_dagster.chaos.base import ChaosError
from crucible_dagster.chaos.chaos_mesh import (
    ChaosMeshBackend,
    api_client,
    custom_resource,
    leftover_objects,
)
from tests.chaos_mesh_standin import Pod, StandinChaosMesh
from tests.unit.test_chaos_mesh import PARAMETERS, RUN_ID, fault

pytestmark = pytest.mark.integration

PODS = [
    Pod("db", "pg-0", {"app": "pg", "role": "primary"}, ("postgres",)),
    Pod("db", "pg-1", {"app": "pg", "role": "replica"}, ("postgres",)),
    Pod("web", "shop-0", {"app": "shop"}),
]


@pytest.fixture
def start_standin(tmp_path: Path) -> Iterator[Callable[..., tuple[StandinChaosMesh, Path]]]:
    """Starts a stand-in with the options given; its kubeconfig is written beside the test."""
    started: list[StandinChaosMesh] = []

    def start(**options: Any) -> tuple[StandinChaosMesh, Path]:
        standin = StandinChaosMesh(pods=options.pop("pods", PODS), **options).start()
        started.append(standin)
        return standin, standin.write_kubeconfig(tmp_path / f"kubeconfig-{len(started)}")

    yield start
    for standin in started:
        standin.stop()


def backend(kubeconfig: Path, **options: Any) -> ChaosMeshBackend:
    defaults: dict[str, Any] = {
        "inject_timeout_s": 5.0,
        "recover_timeout_s": 5.0,
        "poll_interval_s": 0.05,
    }
    return ChaosMeshBackend(kubeconfig_file=str(kubeconfig), **{**defaults, **options})


def test_inject_returns_once_chaos_mesh_says_all_injected(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin(inject_delay_s=0.5)
    planned = fault()
    started = time.monotonic()

    injected = backend(kubeconfig).inject(planned)

    assert time.monotonic() - started >= 0.5
    name = custom_resource(planned)["metadata"]["name"]
    stored = standin.get("networkchaos", "db", name)
    assert stored is not None
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["AllInjected"] == "True"
    assert stored["metadata"]["finalizers"] == ["chaos-mesh/records"]
    assert injected.status == (
        "conditions AllInjected+Selected; desired phase Run; "
        "2 targets (2 Injected: db/pg-0, db/pg-1)"
    )
    assert injected.recipe == {
        "backend": "chaos-mesh",
        "group": "chaos-mesh.org",
        "version": "v1alpha1",
        "plural": "networkchaos",
        "kind": "NetworkChaos",
        "namespace": "db",
        "name": name,
        "kubeconfig_file": str(kubeconfig),
        "kube_context": None,
    }
    assert standin.created == [custom_resource(planned)]


@pytest.mark.parametrize("kind", list(PARAMETERS))
def test_every_kind_is_accepted_by_the_crd_and_injected(start_standin: Callable, kind: str) -> None:
    _, kubeconfig = start_standin(inject_delay_s=0.05)
    chaos = backend(kubeconfig)

    injected = chaos.inject(fault(kind))
    recovered = chaos.recover(injected.recipe)

    assert "AllInjected" in injected.status
    assert "AllRecovered" in recovered
    # Stress, IO and time faults go to containers, as Chaos Mesh records them.
    per_container = kind in ("StressChaos", "IOChaos", "TimeChaos")
    assert ("db/pg-0/postgres" in injected.status) == per_container


def test_recover_deletes_and_waits_until_chaos_mesh_recovered(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin(inject_delay_s=0.05, recover_delay_s=0.6)
    chaos = backend(kubeconfig)
    injected = chaos.inject(fault())
    name = injected.recipe["name"]
    started = time.monotonic()

    recovered = chaos.recover(injected.recipe)

    assert time.monotonic() - started >= 0.6
    assert standin.get("networkchaos", "db", name) is None
    assert recovered == (
        f"NetworkChaos db/{name} recovered and deleted (conditions AllRecovered+Selected; "
        "desired phase Stop; 2 targets (2 Not Injected: db/pg-0, db/pg-1))"
    )
    assert ("DELETE", f"/apis/chaos-mesh.org/v1alpha1/namespaces/db/networkchaos/{name}") in (
        standin.requests
    )


def test_recovering_a_fault_that_is_gone_succeeds(start_standin: Callable) -> None:
    _, kubeconfig = start_standin()
    chaos = backend(kubeconfig)
    injected = chaos.inject(fault())
    chaos.recover(injected.recipe)

    assert (
        chaos.recover(injected.recipe) == f"NetworkChaos db/{injected.recipe['name']}: already gone"
    )


def test_a_fresh_process_recovers_from_the_recipe_alone(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin(inject_delay_s=0.05, recover_delay_s=0.3)
    injected = backend(kubeconfig).inject(fault())
    script = (
        "import json, sys\n"
        "from crucible_dagster.chaos.chaos_mesh import ChaosMeshBackend\n"
        "print(ChaosMeshBackend(poll_interval_s=0.05).recover(json.loads(sys.argv[1])))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(injected.recipe)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(kubeconfig.parent)},
        cwd=Path(__file__).parents[2],
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "recovered and deleted" in done.stdout
    assert standin.get("networkchaos", "db", injected.recipe["name"]) is None


def test_a_selector_matching_no_pod_fails_injection_and_leaves_nothing(
    start_standin: Callable,
) -> None:
    standin, kubeconfig = start_standin()
    planned = fault(target={"namespace": "db", "selector": {"app": "mysql"}})

    with pytest.raises(ChaosError) as raised:
        backend(kubeconfig, inject_timeout_s=1.0).inject(planned)

    message = str(raised.value)
    assert "Chaos Mesh selected no target for NetworkChaos db/" in message
    assert "no running pod in namespaces ['db'] has the labels {'app': 'mysql'}" in message
    assert message.endswith("The object was deleted and its targets recovered.")
    assert standin.objects == {}


def test_a_failed_injection_reports_chaos_mesh_message(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin(fail_apply="rpc error: code = Unknown desc = no tc")

    with pytest.raises(ChaosError) as raised:
        backend(kubeconfig).inject(fault())

    assert "Chaos Mesh could not inject NetworkChaos db/" in str(raised.value)
    assert "db/pg-0: rpc error: code = Unknown desc = no tc" in str(raised.value)
    assert standin.objects == {}


def test_an_object_the_crd_refuses_is_a_clear_error(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin()
    # Passes the backend's own checks; the CRD wants delay.latency.
    planned = fault(parameters={"action": "delay", "delay": {"jitter": "5ms"}})

    with pytest.raises(ChaosError) as raised:
        backend(kubeconfig).inject(planned)

    assert str(raised.value).startswith("the Kubernetes API refused NetworkChaos db/")
    assert "(422)" in str(raised.value)
    assert "spec.delay: 'latency' is a required property" in str(raised.value)
    assert standin.objects == {}


def test_an_invalid_fault_is_refused_before_anything_is_created(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin()

    with pytest.raises(ChaosError) as raised:
        backend(kubeconfig).inject(fault(parameters={"action": "lag"}))

    assert str(raised.value).startswith("cannot inject 'db_slow': parameters.action: 'lag'")
    assert standin.requests == []


def test_missing_rbac_names_the_verb_and_resource(start_standin: Callable) -> None:
    _, kubeconfig = start_standin(forbidden={("create", "networkchaos")})

    with pytest.raises(ChaosError) as raised:
        backend(kubeconfig).inject(fault())

    message = str(raised.value)
    assert "not allowed to create NetworkChaos db/" in message
    assert "needs the RBAC verb 'create' on resource 'networkchaos' in API group " in message
    assert "'chaos-mesh.org' in namespace 'db'" in message


def test_missing_delete_permission_fails_recovery_with_the_verb(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin()
    injected = backend(kubeconfig).inject(fault())
    standin.forbidden.add(("delete", "networkchaos"))

    with pytest.raises(ChaosError, match="needs the RBAC verb 'delete' on resource 'networkchaos'"):
        backend(kubeconfig).recover(injected.recipe)


def test_a_cluster_without_chaos_mesh_says_so(start_standin: Callable) -> None:
    _, kubeconfig = start_standin(installed=False)

    with pytest.raises(ChaosError) as raised:
        backend(kubeconfig).inject(fault())

    assert "does not know networkchaos.chaos-mesh.org (404): Chaos Mesh is not installed" in str(
        raised.value
    )


def test_an_object_chaos_mesh_cannot_recover_times_out_with_the_kubectl_way_out(
    start_standin: Callable,
) -> None:
    standin, kubeconfig = start_standin(stuck=True)
    chaos = backend(kubeconfig, recover_timeout_s=0.5)
    injected = chaos.inject(fault())
    name = injected.recipe["name"]

    with pytest.raises(ChaosError) as raised:
        chaos.recover(injected.recipe)

    message = str(raised.value)
    assert f"NetworkChaos db/{name} is still there 0.5s after it was deleted" in message
    assert f"`kubectl describe networkchaos {name} -n db`" in message
    assert (
        f"`kubectl annotate networkchaos {name} -n db "
        "chaos-mesh.chaos-mesh.org/cleanFinalizer=forced`" in message
    )
    stored = standin.get("networkchaos", "db", name)
    assert stored is not None and stored["metadata"]["deletionTimestamp"]


def test_a_window_shorter_than_a_poll_still_counts_as_injected(start_standin: Callable) -> None:
    _, kubeconfig = start_standin(inject_delay_s=0.1, recover_delay_s=0.0)
    chaos = backend(kubeconfig, poll_interval_s=1.0)

    injected = chaos.inject(fault(window=(0.0, 0.3)))

    # Chaos Mesh injected and recovered it between two looks: AllRecovered, injectedCount 1.
    assert injected.status.startswith("conditions AllRecovered+Selected; desired phase Stop")
    assert "recovered and deleted" in chaos.recover(injected.recipe)


def test_leftovers_are_the_objects_of_runs_that_are_gone(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin(inject_delay_s=0.05)
    chaos = backend(kubeconfig)
    dead_run = "orders_20251231-2300_deadbeef"
    chaos.inject(fault(run_id=RUN_ID))
    dead = chaos.inject(fault(run_id=dead_run, name="cpu_hog", kind="StressChaos"))
    api = kubernetes.client.CustomObjectsApi(api_client(str(kubeconfig)))

    found = leftover_objects(api, "db", [RUN_ID])

    assert found == [{**{k: v for k, v in dead.recipe.items() if not k.startswith("kube")},
                      "run_id": dead_run}]  # fmt: skip
    assert "recovered and deleted" in chaos.recover(found[0])
    assert leftover_objects(api, None, [RUN_ID]) == []
    assert len(standin.objects) == 1


def test_an_unreachable_api_is_named_in_the_error(start_standin: Callable) -> None:
    standin, kubeconfig = start_standin()
    url = standin.url
    standin.stop()  # its kubeconfig now names a port where nothing listens

    with pytest.raises(ChaosError, match=f"cannot reach the Kubernetes API at {url}"):
        backend(kubeconfig).inject(fault())
