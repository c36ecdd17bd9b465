import json
from pathlib import Path

from crucible_dagster.engine import histogram
from crucible_dagster.engine.health import (
    CPU_BOTTLENECK_PERCENT,
    LOOP_LAG_BOTTLENECK_MS,
    generator_bottleneck,
)
from crucible_dagster.engine.intervals import IntervalRow, IntervalWriter
from crucible_dagster.engine.model import ShardHealth


def _row(count: int, values_us: list[int], dropped: int = 0) -> IntervalRow:
    service: dict[int, int] = {}
    for value in values_us:
        index = histogram.counts_index(value)
        service[index] = service.get(index, 0) + 1
    return IntervalRow(count, 0, dropped, service, {})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_second_is_written_once_every_shard_has_sent_it(tmp_path: Path) -> None:
    path = tmp_path / "intervals.ndjson"
    writer = IntervalWriter(path, ["q"], shards=2)

    writer.add(0, 0, [_row(2, [100, 200])])
    writer.add(0, 1, [_row(1, [300])])
    assert _lines(path) == []

    writer.add(1, 0, [_row(1, [400], dropped=3)])
    written = _lines(path)
    assert [line["t"] for line in written] == [0]
    assert written[0]["queries"]["q"]["count"] == 3
    assert written[0]["queries"]["q"]["dropped"] == 3
    assert list(writer.pending) == [1]  # only the unfinished second stays in memory

    writer.shard_finished(1)
    writer.close()
    assert [line["t"] for line in _lines(path)] == [0, 1]


def test_merged_second_holds_every_shards_samples(tmp_path: Path) -> None:
    path = tmp_path / "intervals.ndjson"
    writer = IntervalWriter(path, ["a", "b"], shards=2)

    writer.add(0, 0, [_row(2, [1000, 3000]), _row(0, [])])
    writer.add(1, 0, [_row(1, [2000]), _row(0, [])])
    writer.close()
    [line] = _lines(path)

    merged = histogram.decode(line["queries"]["a"]["service_hist"])
    assert merged.get_total_count() == 3
    assert merged.get_value_at_percentile(
        50
    ) == histogram.new_histogram().get_highest_equivalent_value(2000)
    assert line["queries"]["b"] == {
        "count": 0, "errors": 0, "dropped": 0, "service_hist": None, "latency_hist": None
    }  # fmt: skip


def test_pending_seconds_stay_bounded_over_a_long_run(tmp_path: Path) -> None:
    writer = IntervalWriter(tmp_path / "intervals.ndjson", ["q"], shards=3)

    for t in range(3600):
        for shard in range(3):
            writer.add(shard, t, [_row(1, [50])])
        assert len(writer.pending) <= 1
    writer.close()

    assert writer.written == 3600


def test_healthy_shards_are_not_a_bottleneck() -> None:
    health = [ShardHealth(0, 35.0, 0.4, 3.0), ShardHealth(1, 40.0, 0.5, 8.0)]

    assert generator_bottleneck(health) is None


def test_busy_cpu_or_a_late_loop_flags_the_generator() -> None:
    health = [
        ShardHealth(0, CPU_BOTTLENECK_PERCENT + 10, 0.4, 3.0),
        ShardHealth(1, 20.0, 5.0, LOOP_LAG_BOTTLENECK_MS + 50),
    ]

    reason = generator_bottleneck(health)

    assert reason == (
        "shard 0 used 90% of a CPU (limit 80%); "
        "shard 1 event loop woke up to 150 ms late (limit 100 ms)"
    )
