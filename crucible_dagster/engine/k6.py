"""The k6 engine's first piece: the driver's input file, and one k6 run read back per query.

`write_k6_input` turns parsed queries, a ClickHouse HTTP transport and a closed load shape into
the JSON that `k6_driver/crucible.js` reads; `run_k6` runs the k6 binary on it and parses the
summary k6 exports. The password never enters the JSON: k6 gets it in its environment only.

Limitation: results are k6's own percentiles in milliseconds, not HDR histograms, so they cannot
be merged across shards or intervals into the engine's result model yet.
Limitation: in-flight requests at the end get k6's default graceful stop of 30 s, not the
shape's `graceful_stop_s`.
"""

import json
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible_dagster.engine.model import CLOSED, EngineQuery, LoadShape
from crucible_dagster.errors import Location, Problem, RunError, ValidationError
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.workload import QUERY_NAME, Query

DRIVER_SCRIPT = Path(__file__).resolve().parents[2] / "k6_driver" / "crucible.js"
INPUT_VERSION = 1
INPUT_ENV = "CRUCIBLE_K6_INPUT"
PASSWORD_ENV = "CRUCIBLE_K6_PASSWORD"
ERRORS_METRIC = "crucible_errors"
TREND_STATS = ("p(50)", "p(90)", "p(95)", "p(99)", "max")
# k6 exports a submetric only when a threshold names it; these always pass.
_ALWAYS_PASSES = {"trend": ["max>=0"], "counter": ["count>=0"]}
_STDERR_TAIL = 2000
_STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ClickHouseHttpTransport:
    """Where the driver sends queries: ClickHouse's HTTP interface at `url`, as `user`."""

    url: str
    database: str
    user: str


@dataclass(frozen=True)
class K6Latency:
    """Percentiles of one query's successful executions, in milliseconds, as k6 measured them."""

    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class K6QuerySummary:
    """One query over the whole k6 run: executions (errors included), errors, and the latency
    of the successful ones (None when none succeeded)."""

    name: str
    count: int
    errors: int
    latency: K6Latency | None


@dataclass(frozen=True)
class K6Summary:
    """What one k6 run gave back: per-query summaries in input order, the run's length (None
    when nothing was sent), the exact command line, and k6's output as it printed it."""

    queries: tuple[K6QuerySummary, ...]
    duration_s: float | None
    command: tuple[str, ...]
    stdout: str
    stderr: str


def clickhouse_transport(target: SutTarget) -> ClickHouseHttpTransport:
    """The HTTP transport for a ClickHouse target; TLS is refused (not supported yet)."""
    if target.tls is not None:
        raise RunError(
            f"{target.identity.key}: the k6 engine does not support TLS to ClickHouse yet; "
            "use the native engine or a plain HTTP port"
        )
    host = f"[{target.host}]" if ":" in target.host else target.host
    return ClickHouseHttpTransport(f"http://{host}:{target.port}/", target.database, target.user)


def write_k6_input(
    queries: Sequence[Query | EngineQuery],
    transport: ClickHouseHttpTransport,
    shape: LoadShape,
) -> dict[str, Any]:
    """The driver's input for these queries, transport and closed load shape, as a dict ready
    for `json.dump`; raises ValidationError for what the k6 engine cannot run yet."""
    problems = [problem for query in queries for problem in _query_problems(query)]
    weights = [1.0 if query.weight is None else float(query.weight) for query in queries]
    if not queries:
        problems.append(Problem(Location("<workload>"), "the k6 engine needs at least one query"))
    elif max(weights) <= 0:
        where = Location(queries[0].source, queries[0].line)
        problems.append(Problem(where, "every query has weight 0: give one a weight above 0"))
    problems += _shape_problems(shape)
    if problems:
        raise ValidationError(problems)

    thresholds: dict[str, list[str]] = {}
    for query in queries:
        thresholds[_latency_metric(query.name)] = list(_ALWAYS_PASSES["trend"])
        thresholds[_count_metric(query.name)] = list(_ALWAYS_PASSES["counter"])
        thresholds[_errors_metric(query.name)] = list(_ALWAYS_PASSES["counter"])
    return {
        "version": INPUT_VERSION,
        "queries": [
            {"name": query.name, "sql": query.sql, "weight": weight}
            for query, weight in zip(queries, weights, strict=True)
        ],
        "transport": {
            "kind": "clickhouse_http",
            "url": transport.url,
            "database": transport.database,
            "user": transport.user,
        },
        "options": {
            "vus": shape.concurrency,
            "duration": f"{_duration_ms(shape.hold_for_s)}ms",
            "thresholds": thresholds,
        },
    }


def _query_problems(query: Query | EngineQuery) -> list[Problem]:
    where = Location(query.source, query.line)
    problems: list[Problem] = []
    if not QUERY_NAME.match(query.name):
        problems.append(
            Problem(
                where,
                f"query name {query.name!r} cannot name a k6 metric: expected letters, "
                "digits and underscores",
            )
        )
    # Limitation: parameters need a value generator inside the driver, which is not built yet.
    if query.params or (isinstance(query, Query) and query.placeholders):
        problems.append(
            Problem(
                where,
                f"query {query.name!r} has parameters, which the k6 engine does not support "
                "yet: use the native engine, or write the values into the SQL",
            )
        )
    return problems


def _shape_problems(shape: LoadShape) -> list[Problem]:
    where = Location("<load shape>")
    unsupported = {
        "model": shape.model != CLOSED,
        "ramp_up_s": shape.ramp_up_s != 0,
        "warm_up_s": shape.warm_up_s != 0,
        "shards": shape.shards != 1,
        "seed": shape.seed is not None,
        "query_choice": shape.query_choice != "random",
    }
    problems = [
        Problem(
            where,
            f"the k6 engine runs only a closed model of fixed virtual users for a fixed time, "
            f"unseeded, with random choice, in one shard (got {name}="
            f"{getattr(shape, name)!r}); use the native engine for it",
            name,
        )
        for name, refused in unsupported.items()
        if refused
    ]
    if problems:
        return problems  # the closed model's own fields mean nothing for the shape given
    if shape.concurrency < 1:
        problems.append(Problem(where, "expected 1 or more virtual users", "concurrency"))
    if not math.isfinite(shape.hold_for_s) or _duration_ms(shape.hold_for_s) < 1:
        problems.append(Problem(where, "expected a duration of 1 ms or more", "hold_for_s"))
    return problems


def _duration_ms(seconds: float) -> int:
    return round(seconds * 1000) if math.isfinite(seconds) else 0


def _latency_metric(name: str) -> str:
    # Only expected responses: latency describes successful executions, like the native engine.
    return f"http_req_duration{{query:{name},expected_response:true}}"


def _count_metric(name: str) -> str:
    return f"http_reqs{{query:{name}}}"


def _errors_metric(name: str) -> str:
    return f"{ERRORS_METRIC}{{query:{name}}}"


def run_k6(
    input_path: Path,
    *,
    k6_binary: Path,
    password: str,
    summary_path: Path,
    timeout_s: float,
    script_path: Path = DRIVER_SCRIPT,
) -> K6Summary:
    """Runs k6 on the driver with `input_path` (written from `write_k6_input`) and reads its
    summary back. k6 is killed by its PID after `timeout_s`; then, or when k6 fails, RunError."""
    data = json.loads(input_path.read_text())
    names = [query["name"] for query in data["queries"]]
    command = (
        str(k6_binary),
        "run",
        "--no-usage-report",
        "--no-color",
        "--quiet",
        # No REST API listener: concurrent runs would fight over its port.
        "--address",
        "",
        "--summary-export",
        str(summary_path),
        "--summary-trend-stats",
        ",".join(TREND_STATS),
        str(script_path),
    )
    # A minimal environment: no proxy variables can send requests off loopback, and the
    # password travels here rather than on the command line, where `ps` shows it.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "K6_NO_USAGE_REPORT": "true",
        INPUT_ENV: str(input_path.resolve()),
        PASSWORD_ENV: password,
    }
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise RunError(f"k6 did not finish within {timeout_s:g} s and was stopped") from None
    except BaseException:
        _stop(process)
        raise
    if process.returncode != 0:
        tail = _scrub(stderr[-_STDERR_TAIL:], password)
        raise RunError(f"k6 exited with code {process.returncode}: {tail}")
    summary = json.loads(summary_path.read_text())
    return K6Summary(
        queries=tuple(_query_summary(summary["metrics"], name) for name in names),
        duration_s=_run_duration_s(summary["metrics"]),
        command=command,
        stdout=stdout,
        stderr=stderr,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM lets k6 end its iterations; SIGKILL, by the same PID, if it does not."""
    if process.poll() is None:
        process.terminate()
        try:
            process.communicate(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _scrub(text: str, password: str) -> str:
    # k6 is never given the password in a way it prints; this guards the error message anyway.
    return text.replace(password, "***") if password else text


def _run_duration_s(metrics: dict[str, Any]) -> float | None:
    # The exported summary has no run length, but k6 computes every rate over it.
    requests = metrics.get("http_reqs", {})
    if requests.get("rate"):
        return float(requests["count"]) / float(requests["rate"])
    return None


def _query_summary(metrics: dict[str, Any], name: str) -> K6QuerySummary:
    count = int(metrics.get(_count_metric(name), {}).get("count", 0))
    errors = int(metrics.get(_errors_metric(name), {}).get("count", 0))
    trend = metrics.get(_latency_metric(name))
    latency = None
    if trend is not None and all(stat in trend for stat in TREND_STATS):
        latency = K6Latency(*(float(trend[stat]) for stat in TREND_STATS))
    # A trend with no samples is exported as zeros; without a success there is no latency.
    if errors >= count:
        latency = None
    return K6QuerySummary(name, count, errors, latency)
