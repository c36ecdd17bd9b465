"""The chaos timeline: every experiment injected and recovered on the load's clock.

Each experiment gets a thread that sleeps until its planned start (counted from the instant the
load started, which the engine announces), journals the recipe that recovers the fault, injects
it, journals the recipe the injection gave, sleeps until the planned end and recovers it.
Experiments overlap freely. `stop()` ends every window at once (the load ended early, failed or
was cancelled): faults in place are recovered, faults not yet started are never injected.
`close()` waits for all of that and returns what happened.

Recovery is tried a few times before it counts as failed; a fault whose recovery failed stays in
the journal, so that the sweeper or the SUT's next run retries it.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from crucible_dagster.chaos.base import ChaosBackend, PlannedFault
from crucible_dagster.results.model import FaultEvent, FaultStatus

RECOVER_ATTEMPTS = 3
RECOVER_RETRY_S = 1.0

log = logging.getLogger(__name__)


class FaultJournal(Protocol):
    """Where injected faults are written until they are recovered (LeaseStore is one)."""

    def record_fault(self, sut_key: str, run_id: str, name: str, recipe: str) -> None: ...

    def fault_recovered(self, run_id: str, name: str) -> None: ...


@dataclass
class _Track:
    fault: PlannedFault
    backend: ChaosBackend
    target: str
    thread: threading.Thread | None = None
    injected_at: float | None = None
    recovered_at: float | None = None
    recipe: Mapping[str, Any] | None = None
    inject_status: str | None = None
    recover_status: str | None = None
    error: str | None = None
    status: FaultStatus | None = None
    done: threading.Event = field(default_factory=threading.Event)


class ChaosTimeline:
    """Runs `faults`, each with the backend its `backend` names, once `begin` gives t = 0.

    `on_failure(message)` is called (from a timeline thread) when a fault could not be injected
    or recovered, so that the run can stop its load: a run without its fault measures something
    else. `say(message)` receives one line per injection and recovery.
    """

    def __init__(
        self,
        faults: Sequence[PlannedFault],
        backends: Mapping[str, ChaosBackend],
        *,
        journal: FaultJournal | None,
        targets: Mapping[str, str] | None = None,
        on_failure: Callable[[str], None] = lambda _: None,
        say: Callable[[str], None] = log.info,
    ) -> None:
        self.tracks = [
            _Track(fault, backends[fault.backend], (targets or {}).get(fault.name, ""))
            for fault in faults
        ]
        self.journal = journal
        self.on_failure = on_failure
        self.say = say
        self.load_start: float | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def begin(self, load_start: float) -> None:
        """Starts the experiments' clocks at `load_start` (time.time() of the load's t = 0)."""
        with self._lock:
            if self.load_start is not None:
                return
            self.load_start = load_start
            for track in self.tracks:
                track.thread = threading.Thread(
                    target=self._track, args=(track, load_start),
                    name=f"chaos-{track.fault.name}", daemon=True,
                )  # fmt: skip
                track.thread.start()

    def stop(self) -> None:
        """Ends every window now: faults in place are recovered, later ones never start."""
        self._stopping.set()

    def close(self, timeout_s: float = 300.0) -> list[FaultEvent]:
        """Stops, waits for every recovery (up to `timeout_s` in all), and returns the events."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        for track in self.tracks:
            # On an event, not Thread.join: an interrupt inside join leaves Python 3.11
            # believing the thread has ended while it still runs.
            while track.thread is not None and not track.done.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    track.done.wait(remaining)
                except BaseException as error:
                    # A second Ctrl-C or cancel: the faults are being recovered, which must
                    # finish. Dagster's interrupt is no KeyboardInterrupt, hence the name test.
                    if (
                        not isinstance(error, KeyboardInterrupt)
                        and "Interrupt" not in type(error).__name__
                    ):
                        raise
                    self.say("interrupted again; recovering the faults first")
        return [self._event(track) for track in self.tracks]

    @property
    def in_place(self) -> list[str]:
        """Names of the faults injected and not recovered yet."""
        return [t.fault.name for t in self.tracks if t.injected_at and t.status is None]

    def _track(self, track: _Track, load_start: float) -> None:
        try:
            self._run(track, load_start)
        finally:
            track.done.set()

    def _run(self, track: _Track, load_start: float) -> None:
        fault = track.fault
        if self._stopping.wait(max(0.0, load_start + fault.start_s - time.time())):
            track.status = FaultStatus.NOT_INJECTED
            return
        # Journalled before it goes in: a process dying in the middle of the injection leaves
        # a recipe that recovers whatever part of the fault went in.
        planned = self._planned(track)
        if planned is not None and not self._journal(track, planned):
            track.status = FaultStatus.NOT_INJECTED
            return
        try:
            injected = track.backend.inject(fault)
        except Exception as error:  # a backend's failure of any kind stops only this fault
            track.error = f"could not inject {fault.name!r} ({fault.fault_type}): {error}"
            track.status = FaultStatus.INJECT_FAILED
            if planned is not None:
                self._undo_partial(track, planned)
            self.say(track.error)
            self.on_failure(track.error)
            return
        track.injected_at = time.time()
        track.recipe = injected.recipe
        track.inject_status = injected.status
        self.say(f"fault {fault.name!r} injected at +{track.injected_at - load_start:.1f}s: "
                 f"{injected.status}")  # fmt: skip
        journalled = self._journal(track, injected.recipe)
        end = load_start + fault.end_s
        early = not journalled or self._stopping.wait(max(0.0, end - time.time()))
        self._recover(track, early)

    def _planned(self, track: _Track) -> Mapping[str, Any] | None:
        if self.journal is None:
            return None
        try:
            return track.backend.planned_recipe(track.fault)
        except Exception:
            # Then the injection cannot go in either, and says why itself.
            return None

    def _undo_partial(self, track: _Track, planned: Mapping[str, Any]) -> None:
        """After a failed injection: recovers whatever part of it went in, so that the journal
        entry can go; if that fails too, the entry stays for the sweeper and the next run."""
        fault = track.fault
        try:
            track.backend.recover(planned)
        except Exception as error:
            why = " for the same reason" if str(error) in (track.error or "") else f": {error}"
            track.error = (f"{track.error}; recovering what may have gone in failed too{why} "
                           "(the journal keeps it)")  # fmt: skip
            return
        if self.journal is not None:
            try:
                self.journal.fault_recovered(fault.run_id, fault.name)
            except Exception as error:
                self.say(f"fault {fault.name!r}: its journal entry stays: {error}")

    def _journal(self, track: _Track, recipe: Mapping[str, Any]) -> bool:
        if self.journal is None:
            return True
        fault = track.fault
        try:
            self.journal.record_fault(fault.sut_key, fault.run_id, fault.name,
                                      json.dumps(dict(recipe)))  # fmt: skip
        except Exception as error:
            # Without its journal entry a fault could outlive a dead run: it does not go in, or
            # comes out at once.
            track.error = f"could not journal fault {fault.name!r}: {error}"
            self.on_failure(track.error)
            return False
        return True

    def _recover(self, track: _Track, early: bool) -> None:
        fault, recipe = track.fault, track.recipe or {}
        failure: Exception | None = None
        for attempt in range(RECOVER_ATTEMPTS):
            if attempt:
                time.sleep(RECOVER_RETRY_S)
            try:
                track.recover_status = track.backend.recover(recipe)
                break
            except Exception as error:
                failure = error
        else:
            track.error = (f"fault {fault.name!r} ({fault.fault_type}) was NOT recovered after "
                           f"{RECOVER_ATTEMPTS} attempts: {failure}")  # fmt: skip
            track.status = FaultStatus.RECOVER_FAILED
            self.say(track.error)
            self.on_failure(track.error)
            return
        track.recovered_at = time.time()
        if self.journal is not None:
            try:
                self.journal.fault_recovered(fault.run_id, fault.name)
            except Exception as error:
                # The entry stays; recovering it again later finds the fault gone, which is fine.
                self.say(f"fault {fault.name!r} recovered, but its journal entry stays: {error}")
        # A window cut short by a stop, not one that ended on time.
        on_time = track.recovered_at >= (self.load_start or 0.0) + fault.end_s - 0.5
        track.status = (
            FaultStatus.RECOVERED if on_time or not early else FaultStatus.RECOVERED_EARLY
        )
        start = self.load_start or 0.0
        self.say(f"fault {fault.name!r} recovered at +{track.recovered_at - start:.1f}s: "
                 f"{track.recover_status}")  # fmt: skip

    def _event(self, track: _Track) -> FaultEvent:
        fault, start = track.fault, self.load_start
        status = track.status
        if status is None:
            # Still injecting or recovering when close() gave up waiting.
            status = FaultStatus.RECOVER_FAILED if track.injected_at else FaultStatus.NOT_INJECTED
            if track.injected_at and track.error is None:
                track.error = f"fault {fault.name!r} was still being recovered when the run ended"

        def since_start(moment: float | None) -> float | None:
            return None if moment is None or start is None else round(moment - start, 3)

        def when(moment: float | None) -> datetime | None:
            return None if moment is None else datetime.fromtimestamp(moment, UTC)

        return FaultEvent(
            name=fault.name,
            backend=fault.backend,
            fault_type=fault.fault_type,
            target=track.target,
            planned_inject_s=fault.start_s,
            planned_recover_s=fault.end_s,
            injected_at=when(track.injected_at),
            recovered_at=when(track.recovered_at),
            inject_s=since_start(track.injected_at),
            recover_s=since_start(track.recovered_at),
            status=status,
            inject_status=track.inject_status,
            recover_status=track.recover_status,
            error=track.error,
        )
