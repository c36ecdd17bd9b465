"""The k6 engine's driver against a real ClickHouse 18.16 over its HTTP interface."""

import json
import sys
import time
from pathlib import Path

import pytest

from crucible_dagster.engine.k6 import (
    ClickHouseHttpTransport,
    K6Summary,
    run_k6,
    write_k6_input,
)
from crucible_dagster.engine.model import EngineQuery, LoadShape
from crucible_dagster.errors import RunError
from tests import servers_clickhouse
from tests.servers_clickhouse import CH_PASSWORD, ClickHouseServer

pytestmark = pytest.mark.integration

clickhouse = servers_clickhouse.clickhouse

K6_BINARY = Path(sys.executable).with_name("k6")
QUERIES = [
    EngineQuery("one", "SELECT 1", "w.sql", 2),
    EngineQuery("numbers", "SELECT count() FROM (SELECT number FROM system.numbers LIMIT 1000)",
                "w.sql", 4, weight=2.0),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _needs_k6() -> None:
    if not K6_BINARY.exists():
        pytest.skip(f"{K6_BINARY} is not installed")


def _input(clickhouse: ClickHouseServer, tmp_path: Path, hold_for_s: float = 2.0) -> Path:
    transport = ClickHouseHttpTransport(clickhouse.url, "default", clickhouse.user)
    shape = LoadShape(concurrency=2, hold_for_s=hold_for_s)
    path = tmp_path / "k6-input.json"
    path.write_text(json.dumps(write_k6_input(QUERIES, transport, shape)))
    return path


def _run(input_path: Path, tmp_path: Path, password: str, timeout_s: float = 60) -> K6Summary:
    return run_k6(
        input_path,
        k6_binary=K6_BINARY,
        password=password,
        summary_path=tmp_path / "summary.json",
        timeout_s=timeout_s,
    )


def test_both_queries_run_without_errors_and_have_latency(
    clickhouse: ClickHouseServer, tmp_path: Path
) -> None:
    summary = _run(_input(clickhouse, tmp_path), tmp_path, CH_PASSWORD)

    assert [query.name for query in summary.queries] == ["one", "numbers"]
    for query in summary.queries:
        assert query.count > 0
        assert query.errors == 0
        assert query.latency is not None
        assert 0 < query.latency.p50_ms <= query.latency.p95_ms <= query.latency.max_ms
    # Weight 2 against 1: the heavier query runs more often.
    assert summary.queries[1].count > summary.queries[0].count
    assert summary.duration_s is not None and 1.5 < summary.duration_s < 5


def test_wrong_password_counts_every_execution_as_an_error(
    clickhouse: ClickHouseServer, tmp_path: Path
) -> None:
    summary = _run(_input(clickhouse, tmp_path), tmp_path, "not-" + CH_PASSWORD)

    for query in summary.queries:
        assert query.count > 0
        assert query.errors == query.count
        assert query.latency is None


def test_password_is_in_neither_the_input_nor_k6_output(
    clickhouse: ClickHouseServer, tmp_path: Path
) -> None:
    input_path = _input(clickhouse, tmp_path)

    summary = _run(input_path, tmp_path, CH_PASSWORD)

    assert summary.queries[0].errors == 0  # the password did reach ClickHouse
    for text in (input_path.read_text(), summary.stdout, summary.stderr, " ".join(summary.command)):
        assert CH_PASSWORD not in text
    assert CH_PASSWORD not in (tmp_path / "summary.json").read_text()


def test_k6_runs_without_usage_report(clickhouse: ClickHouseServer, tmp_path: Path) -> None:
    summary = _run(_input(clickhouse, tmp_path), tmp_path, CH_PASSWORD)

    assert summary.command[1:3] == ("run", "--no-usage-report")


def test_run_past_its_timeout_is_stopped_with_run_error(
    clickhouse: ClickHouseServer, tmp_path: Path
) -> None:
    input_path = _input(clickhouse, tmp_path, hold_for_s=60)
    started = time.monotonic()

    with pytest.raises(RunError, match="did not finish within 1 s"):
        _run(input_path, tmp_path, CH_PASSWORD, timeout_s=1)

    assert time.monotonic() - started < 10
