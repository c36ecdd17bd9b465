"""Per-second buckets: what shards send every second, and how the parent merges and writes them.

Each shard sends, for every second t of the measured window (t = 0 is its first second), one
`IntervalRow` per query. The parent merges the rows of the same second from every shard and
writes one NDJSON line per second as soon as every shard still running has sent that second:

    {"t": 3, "queries": {"<name>": {"count": 812, "errors": 0, "dropped": 0,
                                    "service_hist": "HISTF...", "latency_hist": null}}}

`count` includes errors; histograms are HDR V2 base64 of successful executions in
microseconds, null when the second had none (always null for `latency_hist` in the closed
model). Seconds after the measured window (the graceful stop) are written too. Only seconds not
yet reported by every shard stay in memory, so memory does not grow with run length.
"""

import json
from pathlib import Path
from typing import IO, NamedTuple

from crucible_dagster.engine import histogram


class IntervalRow(NamedTuple):
    """One query's second in one shard; histograms map hdrh bucket indexes to counts."""

    executions: int
    errors: int
    dropped: int
    service: dict[int, int]
    latency: dict[int, int]


class MergedRow:
    """Several `IntervalRow`s of one query added up: counts summed, histograms bucket by bucket."""

    __slots__ = ("count", "dropped", "errors", "latency", "service")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.dropped = 0
        self.service: dict[int, int] = {}
        self.latency: dict[int, int] = {}

    def add(self, row: IntervalRow) -> None:
        self.count += row.executions
        self.errors += row.errors
        self.dropped += row.dropped
        for target, source in ((self.service, row.service), (self.latency, row.latency)):
            for index, count in source.items():
                target[index] = target.get(index, 0) + count


class IntervalWriter:
    """Merges shards' seconds and appends them to an NDJSON file, oldest second first."""

    def __init__(self, path: Path, query_names: list[str], shards: int) -> None:
        self.path = path
        self.query_names = query_names
        self.reported = [-1] * shards  # the last second each shard sent
        self.finished = [False] * shards
        self.pending: dict[int, list[MergedRow]] = {}
        self.written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def add(self, shard: int, t: int, rows: list[IntervalRow]) -> None:
        merged = self.pending.get(t)
        if merged is None:
            merged = self.pending[t] = [MergedRow() for _ in self.query_names]
        for bucket, row in zip(merged, rows, strict=True):
            bucket.add(row)
        self.reported[shard] = max(self.reported[shard], t)
        self._flush()

    def shard_finished(self, shard: int) -> None:
        """No more seconds will come from `shard` (its result arrived)."""
        self.finished[shard] = True
        self._flush()

    def close(self) -> None:
        """Writes whatever is left (seconds a lost shard never completed) and closes the file."""
        self._flush(everything=True)
        self._file.close()

    def _flush(self, everything: bool = False) -> None:
        running = [r for r, done in zip(self.reported, self.finished, strict=True) if not done]
        complete_up_to = min(running, default=None)
        for t in sorted(self.pending):
            if not everything and complete_up_to is not None and t > complete_up_to:
                break
            self._write(t, self.pending.pop(t))
        self._file.flush()

    def _write(self, t: int, merged: list[MergedRow]) -> None:
        queries = {
            name: {
                "count": bucket.count,
                "errors": bucket.errors,
                "dropped": bucket.dropped,
                "service_hist": _encoded(bucket.service),
                "latency_hist": _encoded(bucket.latency),
            }
            for name, bucket in zip(self.query_names, merged, strict=True)
        }
        self._file.write(json.dumps({"t": t, "queries": queries}, separators=(",", ":")) + "\n")
        self.written += 1


def _encoded(counts: dict[int, int]) -> str | None:
    if not counts:
        return None
    built = histogram.new_histogram()
    for index, count in counts.items():
        built.record_value(built.get_value_from_index(index), count)
    return histogram.encode(built)
