"""What each fault did to the load: every query's numbers before, during and after it.

Faults are timed from the start of the load; the per-second series from the start of the
measured window, `warm_up_s` later. A series second `t` covers load time
`[t + warm_up_s, t + warm_up_s + 1)`, and falls in one slice of a fault injected at `i` and
recovered at `r` (both in series time):

- before: most of the second is before the injection (`t + 0.5 < i`);
- during: most of it is inside the fault (`i <= t + 0.5 < r`; to the end without `r`);
- after: most of it is after the recovery (`t + 0.5 >= r`).

A second at an edge mixes both sides, so the slices are exact to half a second. Executions
count in the second they end in: the ones a pause held up end right after the recovery, in the
first after-second, where they delay the time to recover. A fault too short to hold most of any
second gets the seconds it touches (`t < r` and `t + 1 > i`) as its during slice.

Seconds past the measured window (the graceful stop, which the series also holds) count only
when the caller does not say how long the window was: with `measured_s`, a second counts only
if it starts inside the window (`t < measured_s`), so the load's wind-down does not look like
an effect of the fault.

Time to recover: from the recovery instant to the start of the first after-second whose own p99
is back to the p99 before the fault (0 when it is the very first after-second). "Back" allows
10% or 0.5 ms above it, whichever is more: one second's p99 wanders around the p99 of many
seconds, and sub-millisecond p99s move by more than 10% from one second to the next. A second
without successful executions has no p99 and never counts as recovered.

The series is read once, one line at a time; what stays in memory is, per fault and query, three
summed histograms and the few seconds that may mark the recovery, however long the run.
"""

import bisect
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from crucible_dagster.results.model import FaultEvent, QueryImpact, WindowStats
from crucible_dagster.results.series import (
    DenseCounts,
    QuerySecond,
    SeriesReader,
    max_ms,
    percentiles_ms,
)

log = logging.getLogger(__name__)

TOTAL = "total"


@dataclass(frozen=True)
class ImpactAnalysis:
    """The faults with their impact, and how much of the series could be read."""

    faults: list[FaultEvent]
    seconds: int
    malformed_lines: int
    first_problem: str | None = None


RECOVERY_TOLERANCE = 0.10
RECOVERY_SLACK_MS = 0.5


def recovery_limit_ms(before_p99_ms: float) -> float:
    """The highest p99 of one second that counts as back to `before_p99_ms`."""
    return max(before_p99_ms * (1 + RECOVERY_TOLERANCE), before_p99_ms + RECOVERY_SLACK_MS)


def fault_impact(
    lines: Iterable[str],
    faults: Sequence[FaultEvent],
    *,
    warm_up_s: float,
    query_names: Sequence[str],
    measured_s: float | None = None,
) -> list[FaultEvent]:
    """Copies of `faults` with `impact` filled: one entry per query, then `total`.

    Faults never injected get no impact. Malformed lines are skipped and logged as one warning;
    `analyse_faults` returns their count instead.
    """
    analysis = analyse_faults(
        lines, faults, warm_up_s=warm_up_s, query_names=query_names, measured_s=measured_s
    )
    if analysis.malformed_lines:
        log.warning(
            "skipped %d malformed lines of the per-second series (first: %s)",
            analysis.malformed_lines,
            analysis.first_problem,
        )
    return analysis.faults


def analyse_faults(
    lines: Iterable[str],
    faults: Sequence[FaultEvent],
    *,
    warm_up_s: float,
    query_names: Sequence[str],
    measured_s: float | None = None,
) -> ImpactAnalysis:
    """`fault_impact` with the count of seconds read and of malformed lines skipped."""
    names = [*query_names, TOTAL]
    trackers = {
        index: _FaultTracker(fault, warm_up_s, names)
        for index, fault in enumerate(faults)
        if fault.inject_s is not None
    }
    reader = SeriesReader(lines)
    seconds = 0
    if trackers:
        for second in reader:
            if measured_s is not None and second.t >= measured_s:
                continue
            seconds += 1
            rows = {name: second.queries.get(name, _EMPTY) for name in query_names}
            rows[TOTAL] = second.total()
            p99s = _SecondP99(rows)
            for tracker in trackers.values():
                tracker.add(second.t, rows, p99s)
    updated = [
        fault.model_copy(update={"impact": trackers[index].impact()})
        if index in trackers
        else fault.model_copy()
        for index, fault in enumerate(faults)
    ]
    return ImpactAnalysis(updated, seconds, reader.malformed, reader.first_problem)


_EMPTY = QuerySecond(count=0, errors=0, service=None)


class _SecondP99:
    """Each query's own p99 of one second, computed once however many faults ask for it."""

    def __init__(self, rows: dict[str, QuerySecond]) -> None:
        self._rows = rows
        self._p99: dict[str, float | None] = {}

    def __getitem__(self, name: str) -> float | None:
        if name not in self._p99:
            (self._p99[name],) = percentiles_ms(self._rows[name].service, (99.0,))
        return self._p99[name]


@dataclass
class _Window:
    """One slice of one query, summed over its seconds."""

    seconds: int = 0
    count: int = 0
    errors: int = 0
    service: DenseCounts = field(default_factory=DenseCounts)

    def add(self, row: QuerySecond) -> None:
        self.seconds += 1
        self.count += row.count
        self.errors += row.errors
        self.service.add(row.service)

    def stats(self) -> WindowStats | None:
        if self.seconds == 0:
            return None
        service = self.service.counts()
        p50, p95, p99 = percentiles_ms(service, (50.0, 95.0, 99.0))
        return WindowStats(
            seconds=self.seconds,
            count=self.count,
            errors=self.errors,
            error_rate=round(self.errors / self.count, 6) if self.count else 0.0,
            qps=round(self.count / self.seconds, 3),
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            max_ms=max_ms(service),
        )


@dataclass
class _LowPoints:
    """The after-seconds that could be the first to reach a p99 not yet known: those no earlier
    second beats. Sorted by `t` with strictly falling p99, so its size is bounded by the number
    of distinct histogram buckets, not by the run's length, and lines may come in any order."""

    t: list[int] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)

    def add(self, t: int, p99_ms: float) -> None:
        at = bisect.bisect_right(self.t, t)
        if at > 0 and self.p99_ms[at - 1] <= p99_ms:
            return  # an earlier (or the same) second already did as well
        end = at
        while end < len(self.t) and self.p99_ms[end] >= p99_ms:
            end += 1
        self.t[at:end] = [t]
        self.p99_ms[at:end] = [p99_ms]

    def first_at_most(self, limit_ms: float) -> int | None:
        return next(
            (t for t, p99 in zip(self.t, self.p99_ms, strict=True) if p99 <= limit_ms), None
        )


@dataclass
class _QueryTracker:
    before: _Window = field(default_factory=_Window)
    during: _Window = field(default_factory=_Window)
    after: _Window = field(default_factory=_Window)
    first_after_t: int | None = None
    lows: _LowPoints = field(default_factory=_LowPoints)

    def add_after(self, t: int, row: QuerySecond, p99: float | None) -> None:
        self.after.add(row)
        if self.first_after_t is None or t < self.first_after_t:
            self.first_after_t = t
        if p99 is not None:
            self.lows.add(t, p99)


class _FaultTracker:
    def __init__(self, fault: FaultEvent, warm_up_s: float, names: Sequence[str]) -> None:
        assert fault.inject_s is not None
        self.inject = fault.inject_s - warm_up_s
        self.recover = None if fault.recover_s is None else fault.recover_s - warm_up_s
        self.queries = {name: _QueryTracker() for name in names}

    def add(self, t: int, rows: dict[str, QuerySecond], p99s: _SecondP99) -> None:
        where = self._slice(t)
        for name, row in rows.items():
            query = self.queries[name]
            if where == "before":
                query.before.add(row)
            elif where == "during":
                query.during.add(row)
            else:
                query.add_after(t, row, p99s[name])

    def _slice(self, t: int) -> str:
        """The slice of second `t`: the one holding most of it; for a fault too short to hold
        most of any second, the seconds it touches are during it."""
        middle = t + 0.5
        if self.recover is None:
            return "before" if middle < self.inject else "during"
        if math.ceil(self.inject - 0.5) + 0.5 >= self.recover:
            if t + 1 <= self.inject:
                return "before"
            return "after" if t >= self.recover else "during"
        if middle < self.inject:
            return "before"
        return "during" if middle < self.recover else "after"

    def impact(self) -> list[QueryImpact]:
        return [self._query_impact(name, q) for name, q in self.queries.items()]

    def _query_impact(self, name: str, q: _QueryTracker) -> QueryImpact:
        before, during, after = q.before.stats(), q.during.stats(), q.after.stats()
        time_to_recover_s: float | None = None
        recovered: bool | None = None
        comparable = (
            before is not None
            and before.p99_ms is not None
            and after is not None
            and self.recover is not None
        )
        if comparable:
            assert before is not None and before.p99_ms is not None and self.recover is not None
            back_t = q.lows.first_at_most(recovery_limit_ms(before.p99_ms))
            recovered = back_t is not None
            if back_t is not None:
                # The first after-second starts up to a second after the recovery; reaching
                # the old p99 in that very second counts as no delay at all.
                first = back_t == q.first_after_t
                time_to_recover_s = 0.0 if first else round(back_t - self.recover, 3)
        return QueryImpact(
            query=name,
            before=before,
            during=during,
            after=after,
            time_to_recover_s=time_to_recover_s,
            recovered=recovered,
        )
