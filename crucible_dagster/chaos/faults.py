"""A plan's chaos_spec as the timeline runs it: planned faults, their backends, their problems."""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from crucible_dagster.chaos.base import (
    BACKEND_OF_ENV_TYPE,
    CHAOS_MESH,
    CHAOSD,
    LOCAL,
    ChaosBackend,
    ChaosError,
    PlannedFault,
)
from crucible_dagster.chaos.chaos_mesh import ChaosMeshBackend
from crucible_dagster.chaos.chaosd import ChaosdBackend
from crucible_dagster.chaos.local import LocalBackend
from crucible_dagster.chaos.proxy import FaultProxy
from crucible_dagster.plan.models import (
    LOCAL_NETWORK_FAULTS,
    LOCAL_PROCESS_FAULTS,
    LOCAL_PROXY_FAULTS,
    ChaosExperiment,
    ChaosSpec,
)
from crucible_dagster.settings import Settings
from crucible_dagster.suts.base import SutIdentity


def planned_faults(
    spec: ChaosSpec, *, run_id: str, sut: SutIdentity, sut_host: str, sut_port: int
) -> list[PlannedFault]:
    """The experiments with their planned windows, in plan order."""
    return [
        PlannedFault(
            name=experiment.name,
            backend=BACKEND_OF_ENV_TYPE[experiment.env_type],
            fault_type=experiment.fault_type,
            target=experiment.target.fields(),
            parameters=dict(experiment.parameters),
            start_s=start_s,
            end_s=end_s,
            run_id=run_id,
            sut_key=sut.key,
            sut_host=sut_host,
            sut_port=sut_port,
        )
        for experiment, (start_s, end_s) in zip(
            spec.experiments, spec.planned_windows(), strict=True
        )
    ]


def needs_proxy(spec: ChaosSpec | None) -> bool:
    """Whether the run's traffic must go through the local backend's proxy."""
    return spec is not None and any(
        e.env_type == "local" and e.fault_type in LOCAL_PROXY_FAULTS for e in spec.experiments
    )


def target_text(experiment: ChaosExperiment, sut: SutIdentity) -> str:
    """Where a fault goes, in words, for results and logs (no secrets live in a target)."""
    target = experiment.target
    if experiment.env_type == "k8s":
        selector = ",".join(f"{k}={v}" for k, v in sorted((target.selector or {}).items()))
        return f"pods {selector} in namespace {target.namespace}"
    if experiment.env_type == "ec2":
        return f"chaosd at {target.address}"
    if experiment.fault_type in LOCAL_PROCESS_FAULTS:
        return f"the process of {target.pid_file}"
    if experiment.fault_type in LOCAL_NETWORK_FAULTS:
        return f"port {sut.port} in network namespace {target.netns}"
    return f"traffic to {sut.host}:{sut.port}, through the proxy"


def backend_for(name: str, settings: Settings, proxy: FaultProxy | None = None) -> ChaosBackend:
    """The backend `name`, built from the settings; `proxy` is the run's FaultProxy, if any.
    Its `problems` contact nothing: `unreachable` does that, when a run is about to start."""
    if name == LOCAL:
        return LocalBackend(proxy)
    if name == CHAOS_MESH:
        kubeconfig = settings.k8s_kubeconfig
        return ChaosMeshBackend(kubeconfig_file=str(kubeconfig) if kubeconfig else None)
    if name == CHAOSD:
        return ChaosdBackend(probe=False)
    raise ChaosError(f"there is no chaos backend {name!r}")


def unreachable(
    faults: Sequence[PlannedFault], settings: Settings
) -> list[tuple[PlannedFault, str]]:
    """The faults whose backend this run could not reach, with why: chaosd asked once per
    address, the Kubernetes API once per namespace and kind. Nothing is injected."""
    found: list[tuple[PlannedFault, str]] = []
    asked: dict[tuple[str, ...], str | None] = {}
    chaosd = ChaosdBackend()
    chaos_mesh = backend_for(CHAOS_MESH, settings)
    assert isinstance(chaos_mesh, ChaosMeshBackend)
    for fault in faults:
        if fault.backend == CHAOSD:
            key: tuple[str, ...] = (CHAOSD, str(fault.target.get("address", "")))
            if key not in asked:
                asked[key] = chaosd.reachable(key[1])
        elif fault.backend == CHAOS_MESH:
            key = (CHAOS_MESH, str(fault.target.get("namespace", "")), fault.fault_type)
            if key not in asked:
                asked[key] = chaos_mesh.reachable(fault)
        else:
            continue
        problem = asked[key]
        if problem is not None:
            found.append((fault, problem))
    return found


def recover_recipe(recipe_json: str, settings: Settings) -> str:
    """Recovers the fault a journalled recipe describes, in whatever process this is."""
    try:
        recipe: Mapping[str, Any] = json.loads(recipe_json)
    except json.JSONDecodeError as error:
        raise ChaosError(f"a journalled fault has a recipe that is not JSON: {error}") from None
    name = str(recipe.get("backend", ""))
    return backend_for(name, settings).recover(recipe)
