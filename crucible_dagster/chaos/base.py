"""What every chaos backend offers the timeline, and the words they share.

A backend injects one planned fault and hands back a `Injected`: its own status words and a
recipe, a JSON-able mapping that says how to recover the fault. The recipe goes into the fault
journal (a table beside the leases) before the timeline moves on, so that a process other than
the one that injected the fault (the sweeper, the next run's preflight) can recover it with
`recover(recipe)` alone, after the injecting process died.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from crucible_dagster.errors import CrucibleError

# The three backends, as named in a result and in a recipe's "backend" key.
LOCAL = "local"
CHAOS_MESH = "chaos-mesh"
CHAOSD = "chaosd"

# Which backend serves a target, by the target's env_type.
BACKEND_OF_ENV_TYPE = {"local": LOCAL, "k8s": CHAOS_MESH, "ec2": CHAOSD}


class ChaosError(CrucibleError):
    """A fault could not be injected or recovered; the message says which and why."""


@dataclass(frozen=True)
class PlannedFault:
    """One experiment of a plan as a backend sees it: planned times in seconds from the start
    of the load, the plan's fault type in its canonical spelling, and the target's fields.

    `target` holds the plan's target keys that are set (`namespace`, `selector`, `address`,
    `pid_file`, `start_command`, `netns`, ...), `parameters` the experiment's parameters as
    written. `run_id` and `sut_key` name who injects it, for object names and labels;
    `sut_host` and `sut_port` are where the SUT listens (to wait for it after a restart).
    """

    name: str
    backend: str
    fault_type: str
    target: Mapping[str, Any]
    parameters: Mapping[str, Any]
    start_s: float
    end_s: float
    run_id: str
    sut_key: str
    sut_host: str = ""
    sut_port: int = 0

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Injected:
    """What injecting a fault gave: the backend's status words and how to recover it."""

    status: str
    recipe: Mapping[str, Any] = field(default_factory=dict)


class ChaosBackend(Protocol):
    """One way of injecting faults. Methods may block (they are called from the timeline's
    threads, one thread per experiment) and raise ChaosError with a reason a user can act on."""

    name: str

    def problems(self, fault: PlannedFault) -> list[str]:
        """Why `fault` cannot be injected here, found without injecting anything (a missing
        tool, an unreachable API, a parameter the backend does not take); empty when none."""
        ...

    def planned_recipe(self, fault: PlannedFault) -> Mapping[str, Any]:
        """The recipe that recovers `fault` whether or not its injection went through, known
        before injecting: the journal holds it while the fault goes in, so that a process
        dying in the middle of an injection leaves nothing it cannot recover."""
        ...

    def inject(self, fault: PlannedFault) -> Injected:
        """Injects `fault` now; returns once the backend says it is in place. A partial
        injection that fails is undone before the error is raised."""
        ...

    def recover(self, recipe: Mapping[str, Any]) -> str:
        """Undoes the fault `recipe` describes and returns the backend's status words; recovering
        a fault that is already gone succeeds. Must work in a process that did not inject it."""
        ...
