"""The pod side of the start barrier: ready file, start instant from the annotations file, halt."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from crucible_dagster.engine.model import ShardResult
from crucible_dagster.launch.barrier import PodBarrier, format_annotations, parse_annotations
from crucible_dagster.launch.pod_shard import Outcome, ShardSupervisor


def _result(shard: int, count: int, start_delay_s: float) -> ShardResult:
    return ShardResult(shard, [count], [0], [{}], [0], [""], [None], start_delay_s=start_delay_s)


def released_entry(spec: Any, channel: Any, go: Any, halt: Any, start_at: Any) -> None:
    """A shard that is ready at once and reports how late it started."""
    channel.put(("ready", spec["shard"]))
    while not (go.is_set() or halt.is_set()):
        time.sleep(0.001)
    time.sleep(max(start_at.value - time.time(), 0.0))
    channel.put(("progress", spec["shard"], 1, 0, 1))
    channel.put(("result", _result(spec["shard"], 1, time.time() - start_at.value)))


def halting_entry(spec: Any, channel: Any, go: Any, halt: Any, start_at: Any) -> None:
    """A shard that runs until halted, then reports how many rounds it did."""
    channel.put(("ready", spec["shard"]))
    rounds = 0
    while not halt.is_set():
        rounds += 1
        time.sleep(0.01)
    channel.put(("result", _result(spec["shard"], rounds, 0.0)))


def sut_error_entry(spec: Any, channel: Any, go: Any, halt: Any, start_at: Any) -> None:
    channel.put(("sut_error", spec["shard"], "connection refused by 127.0.0.1:1"))


def crashing_entry(spec: Any, channel: Any, go: Any, halt: Any, start_at: Any) -> None:
    raise SystemExit(3)


def test_annotations_file_parses_as_the_kubelet_writes_it() -> None:
    text = 'crucible/start-at="1767268800.250000"\nnote="say \\"hi\\"\\nbye"\nbroken\n'

    assert parse_annotations(text) == {
        "crucible/start-at": "1767268800.250000",
        "note": 'say "hi"\nbye',
    }
    assert parse_annotations(format_annotations({"b": 'x"\\y', "a": "1"})) == {
        "a": "1",
        "b": 'x"\\y',
    }


def test_barrier_reads_no_start_until_the_annotation_is_published(tmp_path: Path) -> None:
    barrier = PodBarrier(tmp_path / "state" / "ready", tmp_path / "annotations")

    assert barrier.start_at() is None
    (tmp_path / "annotations").write_text(format_annotations({"other": "1"}))
    assert barrier.start_at() is None
    (tmp_path / "annotations").write_text(format_annotations({"crucible/start-at": "oops"}))
    assert barrier.start_at() is None
    (tmp_path / "annotations").write_text(format_annotations({"crucible/start-at": "12.5"}))
    assert barrier.start_at() == 12.5
    barrier.mark_ready()
    assert (tmp_path / "state" / "ready").exists()


def _supervise(entry: Any, tmp_path: Path) -> tuple[ShardSupervisor, PodBarrier, dict[str, Any]]:
    barrier = PodBarrier(tmp_path / "ready", tmp_path / "annotations")
    logs: list[str] = []
    supervisor = ShardSupervisor(entry, {"shard": 0}, barrier, log=logs.append)
    box: dict[str, Any] = {"logs": logs}

    def run() -> None:
        box["outcome"] = supervisor.run()

    box["thread"] = threading.Thread(target=run, daemon=True)
    box["thread"].start()
    return supervisor, barrier, box


def _wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_shard_waits_for_the_published_instant_and_starts_on_it(tmp_path: Path) -> None:
    _, barrier, box = _supervise(released_entry, tmp_path)

    _wait_for(barrier.ready_file)
    time.sleep(0.3)
    assert box["thread"].is_alive()  # ready, but not released
    start_at = time.time() + 0.5
    (tmp_path / "annotations").write_text(format_annotations({"crucible/start-at": f"{start_at}"}))
    box["thread"].join(timeout=30)

    outcome: Outcome = box["outcome"]
    assert outcome.kind == "result"
    assert outcome.start_at == pytest.approx(start_at)
    assert outcome.result is not None
    assert 0.0 <= outcome.result.start_delay_s < 0.1
    assert any("1 executions" in line for line in box["logs"])


def test_halt_request_stops_the_shard_and_keeps_its_result(tmp_path: Path) -> None:
    supervisor, barrier, box = _supervise(halting_entry, tmp_path)

    _wait_for(barrier.ready_file)
    (tmp_path / "annotations").write_text(format_annotations({"crucible/start-at": "1.0"}))
    time.sleep(0.3)
    supervisor.request_halt()
    box["thread"].join(timeout=30)

    outcome: Outcome = box["outcome"]
    assert outcome.kind == "result"
    assert outcome.result is not None and outcome.result.counts[0] > 5


def test_sut_error_and_crash_come_back_as_outcomes(tmp_path: Path) -> None:
    _, _, refused = _supervise(sut_error_entry, tmp_path / "a")
    _, _, crashed = _supervise(crashing_entry, tmp_path / "b")
    refused["thread"].join(timeout=30)
    crashed["thread"].join(timeout=30)

    assert refused["outcome"].kind == "sut_error"
    assert "connection refused" in refused["outcome"].message
    assert crashed["outcome"].kind == "failed"
    assert "exited with code 3" in crashed["outcome"].message
