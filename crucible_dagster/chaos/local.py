"""The local chaos backend, for a SUT on the same machine: its process (pause, kill, restart),
its traffic through Crucible's TCP proxy (latency, bandwidth, reset), and its network namespace
(loss, partition). Each family lives in its own module; this one sends each fault to its own."""

from collections.abc import Mapping
from typing import Any

from crucible_dagster.chaos.base import LOCAL, ChaosBackend, ChaosError, Injected, PlannedFault
from crucible_dagster.chaos.netfilter import NetfilterFaults
from crucible_dagster.chaos.process import ProcessFaults
from crucible_dagster.chaos.proxy import FaultProxy, ProxyFaults
from crucible_dagster.plan.models import (
    LOCAL_NETWORK_FAULTS,
    LOCAL_PROCESS_FAULTS,
    LOCAL_PROXY_FAULTS,
)


class LocalBackend:
    """Sends each local fault to the family that injects it; `proxy` is the run's proxy in
    front of the SUT (None in a process that only recovers faults, or validates a plan)."""

    name = LOCAL

    def __init__(self, proxy: FaultProxy | None = None) -> None:
        self.families: dict[tuple[str, ...], ChaosBackend] = {
            LOCAL_PROCESS_FAULTS: ProcessFaults(),
            LOCAL_PROXY_FAULTS: ProxyFaults(proxy),
            LOCAL_NETWORK_FAULTS: NetfilterFaults(),
        }

    def _family(self, fault_type: str) -> ChaosBackend:
        for kinds, family in self.families.items():
            if fault_type in kinds:
                return family
        raise ChaosError(f"the local backend has no fault {fault_type!r}")

    def problems(self, fault: PlannedFault) -> list[str]:
        return self._family(fault.fault_type).problems(fault)

    def planned_recipe(self, fault: PlannedFault) -> Mapping[str, Any]:
        return self._family(fault.fault_type).planned_recipe(fault)

    def inject(self, fault: PlannedFault) -> Injected:
        return self._family(fault.fault_type).inject(fault)

    def recover(self, recipe: Mapping[str, Any]) -> str:
        return self._family(str(recipe.get("fault", ""))).recover(recipe)
