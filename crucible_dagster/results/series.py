"""Reading the per-second series (`engine/intervals.py`) one second at a time.

Service histograms become their non-empty buckets (numpy arrays of hdrh bucket indexes and
counts) so that seconds add up and percentiles read quickly: hdrh's own percentile walk is pure
Python over all of its 23 552 buckets, far too slow for every second of an hours-long run.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from crucible_dagster.engine import histogram


@dataclass(frozen=True)
class Counts:
    """A histogram's non-empty buckets: hdrh bucket indexes (ascending, unique) and counts."""

    index: npt.NDArray[np.intp]
    count: npt.NDArray[np.int64]

    @staticmethod
    def from_dense(dense: npt.NDArray[np.int64]) -> "Counts | None":
        """The non-empty buckets of a full-length count array; None when all are empty."""
        index = np.flatnonzero(dense != 0)  # through a boolean mask: several times faster
        return Counts(index, dense[index].astype(np.int64)) if index.size else None


@dataclass(frozen=True)
class QuerySecond:
    """One query's second: `count` includes errors, `service` holds the successful
    executions' buckets (None when there were none)."""

    count: int
    errors: int
    service: Counts | None


@dataclass(frozen=True)
class Second:
    """One line of the series: `t` counts whole seconds from the start of the measured window."""

    t: int
    queries: dict[str, QuerySecond]

    def total(self) -> QuerySecond:
        """All queries of this second together."""
        service = sum_counts(q.service for q in self.queries.values())
        return QuerySecond(
            count=sum(q.count for q in self.queries.values()),
            errors=sum(q.errors for q in self.queries.values()),
            service=service,
        )


class SeriesReader:
    """Iterates the seconds of a series; blank lines are ignored, malformed ones skipped and
    counted in `malformed` (with the first one's line number and reason in `first_problem`)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = lines
        self.malformed = 0
        self.first_problem: str | None = None

    def __iter__(self) -> Iterator[Second]:
        for number, line in enumerate(self._lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_second(line)
            except ValueError as error:
                self.malformed += 1
                if self.first_problem is None:
                    self.first_problem = f"line {number}: {error}"


def parse_second(line: str) -> Second:
    """One NDJSON line of the series; `ValueError` says what is wrong with it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("expected an object")
    t = data.get("t")
    if not isinstance(t, int) or isinstance(t, bool) or t < 0:
        raise ValueError(f"expected 't' to be a whole number of seconds >= 0, got {t!r}")
    queries = data.get("queries")
    if not isinstance(queries, dict):
        raise ValueError("expected 'queries' to be an object")
    return Second(t=t, queries={str(n): _query_second(n, q) for n, q in queries.items()})


def _query_second(name: str, data: object) -> QuerySecond:
    if not isinstance(data, dict):
        raise ValueError(f"query {name!r}: expected an object")
    count, errors = data.get("count", 0), data.get("errors", 0)
    for key, value in (("count", count), ("errors", errors)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"query {name!r}: expected {key!r} to be a count, got {value!r}")
    encoded = data.get("service_hist")
    if encoded is not None and not isinstance(encoded, str):
        raise ValueError(f"query {name!r}: expected 'service_hist' to be a string or null")
    return QuerySecond(count=count, errors=errors, service=decode_counts(encoded, name))


def decode_counts(encoded: str | None, name: str = "") -> Counts | None:
    """An HDR V2 base64 histogram as bucket counts in Crucible's layout; None when empty."""
    if not encoded:
        return None
    try:
        decoded = histogram.decode(encoded)
    except Exception as error:  # hdrh raises zlib, binascii, struct and its own errors alike
        raise ValueError(f"query {name!r}: undecodable service_hist ({error})") from None
    if decoded.get_total_count() == 0:
        return None
    if decoded.counts_len != histogram.COUNTS_LEN:
        # Another range or precision: re-recorded into Crucible's layout, value by value.
        layout = histogram.new_histogram()
        layout.add(decoded)
        decoded = layout
    return Counts.from_dense(np.ctypeslib.as_array(decoded.counts))


def sum_counts(parts: Iterable[Counts | None]) -> Counts | None:
    """Bucket-by-bucket sum; None when every part is empty."""
    present = [part for part in parts if part is not None]
    if len(present) <= 1:
        return present[0] if present else None
    dense = DenseCounts()
    for part in present:
        dense.add(part)
    return dense.counts()


class DenseCounts:
    """A growing sum of many seconds' buckets, in one full-length array allocated on first use."""

    __slots__ = ("_dense",)

    def __init__(self) -> None:
        self._dense: npt.NDArray[np.int64] | None = None

    def add(self, part: Counts | None) -> None:
        if part is None:
            return
        if self._dense is None:
            self._dense = np.zeros(histogram.COUNTS_LEN, dtype=np.int64)
        self._dense[part.index] += part.count  # indexes are unique, so this adds each one

    def counts(self) -> Counts | None:
        return None if self._dense is None else Counts.from_dense(self._dense)


@cache
def _highest_us() -> npt.NDArray[np.int64]:
    # The largest value each bucket stands for, as hdrh reports percentiles and maxima.
    layout = histogram.new_histogram()
    return np.array(
        [
            layout.get_highest_equivalent_value(layout.get_value_from_index(i))
            for i in range(histogram.COUNTS_LEN)
        ],
        dtype=np.int64,
    )


def percentiles_ms(counts: Counts | None, percentiles: Iterable[float]) -> list[float | None]:
    """The values at `percentiles` (0 to 100) in ms, as hdrh computes them; None when empty."""
    wanted = list(percentiles)
    if counts is None:
        return [None] * len(wanted)
    cumulative = np.cumsum(counts.count)
    total = int(cumulative[-1])
    highest = _highest_us()
    values: list[float | None] = []
    for percentile in wanted:
        target = max(int(min(percentile, 100.0) * total / 100 + 0.5), 1)
        at = int(np.searchsorted(cumulative, target, side="left"))
        values.append(_ms(int(highest[counts.index[at]])))
    return values


def max_ms(counts: Counts | None) -> float | None:
    """The largest value in ms (the top of its bucket, as hdrh reports it); None when empty."""
    return None if counts is None else _ms(int(_highest_us()[counts.index[-1]]))


def _ms(value_us: int) -> float:
    return round(value_us / 1000.0, 3)
