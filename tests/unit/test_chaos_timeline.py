"""The chaos timeline on the load's clock, with a recording backend and a real fault journal."""

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from crucible_dagster.chaos.base import ChaosError, Injected, PlannedFault
from crucible_dagster.chaos.timeline import ChaosTimeline
from crucible_dagster.lease import LeaseStore
from crucible_dagster.results import FaultStatus


class RecordingBackend:
    """A backend whose faults are entries in a set: injected means present."""

    name = "local"

    def __init__(self, *, fail_inject: set[str] = frozenset(), recover_failures: int = 0) -> None:
        self.active: set[str] = set()
        self.calls: list[tuple[str, str, float]] = []
        self.fail_inject = fail_inject
        self.recover_failures = recover_failures
        self.lock = threading.Lock()

    def problems(self, fault: PlannedFault) -> list[str]:
        return []

    def planned_recipe(self, fault: PlannedFault) -> dict[str, Any]:
        return {"backend": "local", "fault": fault.name}

    def inject(self, fault: PlannedFault) -> Injected:
        with self.lock:
            self.calls.append(("inject", fault.name, time.time()))
            if fault.name in self.fail_inject:
                raise ChaosError("the target refused")
            self.active.add(fault.name)
        return Injected(
            status=f"{fault.name} in place", recipe={"backend": "local", "fault": fault.name}
        )

    def recover(self, recipe: Mapping[str, Any]) -> str:
        with self.lock:
            self.calls.append(("recover", str(recipe["fault"]), time.time()))
            if self.recover_failures > 0:
                self.recover_failures -= 1
                raise ChaosError("the target did not answer")
            self.active.discard(str(recipe["fault"]))
        return "gone"


def fault(name: str, start_s: float, end_s: float) -> PlannedFault:
    return PlannedFault(name=name, backend="local", fault_type="pause", target={}, parameters={},
                        start_s=start_s, end_s=end_s, run_id="plan_20261204-0500_0123abcd",
                        sut_key="postgresql://127.0.0.1:5432/db")  # fmt: skip


@pytest.fixture
def journal(tmp_path: Path) -> LeaseStore:
    return LeaseStore(f"sqlite:///{tmp_path / 'leases.db'}")


def test_overlapping_faults_are_injected_and_recovered_on_the_load_clock(
    journal: LeaseStore,
) -> None:
    backend = RecordingBackend()
    timeline = ChaosTimeline([fault("a", 0.2, 0.8), fault("b", 0.4, 1.0)], {"local": backend},
                             journal=journal)  # fmt: skip
    start = time.time() + 0.1
    timeline.begin(start)
    time.sleep(0.6)
    assert backend.active == {"a", "b"}
    assert {f.name for f in journal.open_faults(run_id="plan_20261204-0500_0123abcd")} == {"a", "b"}
    time.sleep(0.7)
    events = timeline.close()
    assert backend.active == set()
    assert [e.status for e in events] == [FaultStatus.RECOVERED, FaultStatus.RECOVERED]
    by_name = {e.name: e for e in events}
    assert by_name["a"].inject_s == pytest.approx(0.2, abs=0.08)
    assert by_name["a"].recover_s == pytest.approx(0.8, abs=0.08)
    assert by_name["b"].inject_s == pytest.approx(0.4, abs=0.08)
    assert by_name["b"].planned_recover_s == 1.0
    assert by_name["a"].inject_status == "a in place"
    assert by_name["a"].recover_status == "gone"
    assert journal.open_faults() == []


def test_stop_recovers_faults_in_place_and_never_injects_later_ones(journal: LeaseStore) -> None:
    backend = RecordingBackend()
    timeline = ChaosTimeline([fault("now", 0.0, 30.0), fault("later", 20.0, 25.0)],
                             {"local": backend}, journal=journal)  # fmt: skip
    timeline.begin(time.time())
    time.sleep(0.3)
    assert timeline.in_place == ["now"]
    events = timeline.close()
    assert backend.active == set()
    assert [e.status for e in events] == [FaultStatus.RECOVERED_EARLY, FaultStatus.NOT_INJECTED]
    assert events[1].injected_at is None and events[1].inject_s is None
    assert ("inject", "later") not in [(c[0], c[1]) for c in backend.calls]
    assert journal.open_faults() == []


def test_a_fault_that_cannot_be_injected_stops_the_run_and_the_others_are_recovered(
    journal: LeaseStore,
) -> None:
    backend = RecordingBackend(fail_inject={"bad"})
    failures: list[str] = []
    stopped = threading.Event()

    def on_failure(message: str) -> None:
        failures.append(message)
        stopped.set()

    timeline = ChaosTimeline([fault("good", 0.0, 10.0), fault("bad", 0.1, 10.0)],
                             {"local": backend}, journal=journal,
                             on_failure=on_failure)  # fmt: skip
    timeline.begin(time.time())
    assert stopped.wait(2.0)
    events = timeline.close()
    assert failures == ["could not inject 'bad' (pause): the target refused"]
    assert [e.status for e in events] == [FaultStatus.RECOVERED_EARLY, FaultStatus.INJECT_FAILED]
    assert events[1].error == failures[0]
    assert backend.active == set()


def test_recovery_is_retried_before_it_counts_as_failed(journal: LeaseStore) -> None:
    backend = RecordingBackend(recover_failures=2)
    timeline = ChaosTimeline([fault("flaky", 0.0, 0.2)], {"local": backend}, journal=journal)
    timeline.begin(time.time())
    events = timeline.close(timeout_s=10.0)
    assert events[0].status in (FaultStatus.RECOVERED, FaultStatus.RECOVERED_EARLY)
    assert [c[0] for c in backend.calls].count("recover") == 3
    assert backend.active == set()


def test_a_fault_never_recovered_stays_in_the_journal_with_its_recipe(journal: LeaseStore) -> None:
    backend = RecordingBackend(recover_failures=10)
    failures: list[str] = []
    timeline = ChaosTimeline([fault("stuck", 0.0, 0.1)], {"local": backend}, journal=journal,
                             on_failure=failures.append)  # fmt: skip
    timeline.begin(time.time())
    events = timeline.close(timeout_s=10.0)
    assert events[0].status is FaultStatus.RECOVER_FAILED
    assert "was NOT recovered after 3 attempts: the target did not answer" in (
        events[0].error or ""
    )
    assert failures == [events[0].error]
    left = journal.open_faults(sut_key="postgresql://127.0.0.1:5432/db")
    assert [(f.name, json.loads(f.recipe)) for f in left] == [
        ("stuck", {"backend": "local", "fault": "stuck"})
    ]


def test_a_timeline_never_begun_reports_every_fault_not_injected(journal: LeaseStore) -> None:
    backend = RecordingBackend()
    events = ChaosTimeline([fault("a", 1.0, 2.0)], {"local": backend}, journal=journal).close()
    assert [e.status for e in events] == [FaultStatus.NOT_INJECTED]
    assert backend.calls == []


class SlowBackend(RecordingBackend):
    """Injects only when told to, like a backend waiting for its fault to take hold."""

    def __init__(self) -> None:
        super().__init__()
        self.proceed = threading.Event()

    def inject(self, fault: PlannedFault) -> Injected:
        self.proceed.wait(5.0)
        return super().inject(fault)


def test_the_recipe_is_journalled_before_the_fault_goes_in(journal: LeaseStore) -> None:
    backend = SlowBackend()
    timeline = ChaosTimeline([fault("slow", 0.0, 0.5)], {"local": backend}, journal=journal)
    timeline.begin(time.time())
    time.sleep(0.3)
    # A process dying now leaves what recovers the fault, though the injection has not returned.
    [entry] = journal.open_faults()
    assert json.loads(entry.recipe) == {"backend": "local", "fault": "slow"}
    backend.proceed.set()
    events = timeline.close()
    assert (
        events[0].status is FaultStatus.RECOVERED_EARLY or events[0].status is FaultStatus.RECOVERED
    )
    assert journal.open_faults() == []


def test_a_failed_injection_is_undone_from_the_planned_recipe(journal: LeaseStore) -> None:
    backend = RecordingBackend(fail_inject={"half"})
    backend.active.add("half")  # what a partial injection left before it failed
    failed = threading.Event()
    timeline = ChaosTimeline([fault("half", 0.0, 1.0)], {"local": backend}, journal=journal,
                             on_failure=lambda _: failed.set())  # fmt: skip
    timeline.begin(time.time())
    assert failed.wait(2.0)
    events = timeline.close()
    assert events[0].status is FaultStatus.INJECT_FAILED
    assert backend.active == set()
    assert journal.open_faults() == []
