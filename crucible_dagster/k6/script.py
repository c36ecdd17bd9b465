"""The driver's input: parsed queries, the transport and the load shape as k6 options.

`k6_driver/crucible.js` reads this JSON and never parses SQL. Each query arrives as `segments`
of SQL text with `slots` between them; a query with parameters also brings a `pool` of argument
rows, every value already a literal of the SUT's dialect, drawn from the parameter's seeded
generator. The driver joins segments and one pool row per execution.

Limitation: a query's values come from a pool of `POOL_ROWS` rows drawn once per run, not from
an endless stream, so over a long run the same rows repeat (in a random order).
"""

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crucible_dagster.engine.model import (
    CLOSED,
    CONSTANT_ARRIVAL_RATE,
    EngineParam,
    LoadShape,
)
from crucible_dagster.errors import Location, Problem, ValidationError
from crucible_dagster.k6.literals import literal_for
from crucible_dagster.params import make_generator
from crucible_dagster.workload import QUERY_NAME, Query, QueryParam

INPUT_VERSION = 2
POOL_ROWS = 1024
SCENARIO = "crucible"
ERRORS_METRIC = "crucible_errors"
# k6 exports a submetric only when a threshold names it; these always pass. Crucible judges
# the plan's thresholds itself, on the histograms, as for the native engine.
_ALWAYS_PASSES = {"trend": ["max>=0"], "counter": ["count>=0"], "rate": ["rate>=0"]}


@dataclass(frozen=True)
class K6Query:
    """One query as the driver runs it: SQL `segments` around parameter `slots` (indexes into
    `params`), its weight, and where it was written."""

    name: str
    source: str
    line: int
    weight: float
    segments: tuple[str, ...]
    slots: tuple[int, ...]
    params: tuple[EngineParam, ...] = ()


def k6_query(
    query: Query,
    weight: float,
    sample: Callable[[QueryParam], tuple[object, ...] | None] = lambda _: None,
) -> K6Query:
    """Splits the query's SQL at its placeholders; `sample` gives a column parameter's values."""
    segments: list[str] = []
    names: list[str] = []
    slots: list[int] = []
    position = 0
    for placeholder in query.placeholders:
        segments.append(query.sql[position : placeholder.offset])
        if placeholder.name not in names:
            names.append(placeholder.name)
        slots.append(names.index(placeholder.name))
        position = placeholder.end
    segments.append(query.sql[position:])
    declared = {p.name: p for p in query.params}
    params = tuple(EngineParam(n, declared[n].spec, sample(declared[n])) for n in names)
    return K6Query(
        query.name, query.source, query.line, weight, tuple(segments), tuple(slots), params
    )


def query_problems(queries: Sequence[K6Query], sut_type: str) -> list[Problem]:
    """What the k6 engine cannot run in these queries, each at its `-- @name:` line."""
    problems: list[Problem] = []
    for query in queries:
        where = Location(query.source, query.line)
        if not QUERY_NAME.match(query.name):
            problems.append(
                Problem(
                    where,
                    f"query name {query.name!r} cannot name a k6 metric: expected letters, "
                    "digits and underscores",
                )
            )
        if query.params and literal_for(sut_type) is None:
            problems.append(
                Problem(
                    where,
                    f"query {query.name!r} has parameters, which the k6 engine cannot send to "
                    f"{sut_type} yet: use executor: native, or write the values into the SQL",
                )
            )
    if not queries:
        problems.append(Problem(Location("<workload>"), "the k6 engine needs at least one query"))
    elif max(q.weight for q in queries) <= 0:
        where = Location(queries[0].source, queries[0].line)
        problems.append(Problem(where, "every query has weight 0: give one a weight above 0"))
    return problems


def driver_input(
    queries: Sequence[K6Query],
    *,
    sut_type: str,
    transport: dict[str, Any],
    shape: LoadShape,
    seed: int,
) -> dict[str, Any]:
    """The driver's input as a dict ready for `json.dump`; raises ValidationError for what the
    k6 engine cannot run."""
    problems = query_problems(queries, sut_type)
    if problems:
        raise ValidationError(problems)
    rng = random.Random(seed)
    literal = literal_for(sut_type)
    return {
        "version": INPUT_VERSION,
        "queries": [
            {
                "name": q.name,
                "weight": q.weight,
                "segments": list(q.segments),
                "slots": list(q.slots),
                "pool": _pool(q, rng, literal) if q.params and literal is not None else [],
            }
            for q in queries
        ],
        "choice": shape.query_choice,
        # The driver seeds its own generator with it (k6 has no seed for Math.random).
        "seed": seed % 2**31,
        "sequence": _sequence(queries) if shape.query_choice == "sequence" else [],
        "transport": transport,
        "options": k6_options(shape, [q.name for q in queries]),
    }


def _pool(query: K6Query, rng: random.Random, literal: Callable[[object], str]) -> list[list[str]]:
    stream = random.Random(f"{rng.random()}:{query.name}")
    makers = [make_generator(p.spec, stream, p.values) for p in query.params]
    return [[literal(make()) for make in makers] for _ in range(POOL_ROWS)]


def _sequence(queries: Sequence[K6Query]) -> list[int]:
    # Weights are whole repeat counts in a sequence (checked with the plan).
    return [index for index, q in enumerate(queries) for _ in range(int(q.weight))]


def k6_options(shape: LoadShape, names: Sequence[str]) -> dict[str, Any]:
    """k6 options for the shape: one scenario, k6's own executors, and the per-query
    submetrics Crucible reads back."""
    thresholds: dict[str, list[str]] = {}
    for name in names:
        thresholds[f"http_req_duration{{query:{name}}}"] = list(_ALWAYS_PASSES["trend"])
        thresholds[f"{ERRORS_METRIC}{{query:{name}}}"] = list(_ALWAYS_PASSES["rate"])
    return {
        "scenarios": {SCENARIO: scenario(shape)},
        "thresholds": thresholds,
        "summaryTrendStats": ["min", "avg", "med", "p(90)", "p(95)", "p(99)", "max"],
    }


def scenario(shape: LoadShape) -> dict[str, Any]:
    """The k6 scenario that runs `shape` (warm-up included: Crucible excludes it on reading)."""
    graceful = _duration(shape.graceful_stop_s)
    if shape.model == CLOSED:
        if shape.ramp_up_s == 0:
            return {
                "executor": "constant-vus",
                "vus": shape.concurrency,
                "duration": _duration(shape.hold_for_s),
                "gracefulStop": graceful,
            }
        return {
            "executor": "ramping-vus",
            "startVUs": 0,
            "stages": [
                {"duration": _duration(shape.ramp_up_s), "target": shape.concurrency},
                {"duration": _duration(shape.hold_for_s), "target": shape.concurrency},
            ],
            "gracefulRampDown": "0s",
            "gracefulStop": graceful,
        }
    vus = {"preAllocatedVUs": shape.pre_allocated_vus, "maxVUs": shape.vus_limit}
    time_unit = _duration(shape.time_unit_s)
    if shape.model == CONSTANT_ARRIVAL_RATE:
        return {
            "executor": "constant-arrival-rate",
            "rate": _whole_rate(shape.rate),
            "timeUnit": time_unit,
            "duration": _duration(shape.duration_s),
            "gracefulStop": graceful,
            **vus,
        }
    return {
        "executor": "ramping-arrival-rate",
        "startRate": _whole_rate(shape.start_rate),
        "timeUnit": time_unit,
        "stages": [
            {"target": _whole_rate(target), "duration": _duration(seconds)}
            for target, seconds in shape.stages
        ],
        "gracefulStop": graceful,
        **vus,
    }


def shape_problems(shape: LoadShape) -> list[Problem]:
    """What k6 cannot express of a shape the native engine runs."""
    where = Location("<load shape>")
    problems = []
    rates = [shape.rate, shape.start_rate, *(target for target, _ in shape.stages)]
    if shape.is_open and any(rate != int(rate) for rate in rates):
        problems.append(
            Problem(
                where,
                "k6 takes whole arrival rates: express a fractional rate with time_unit "
                "(for example rate: 5 per 2s instead of 2.5 per 1s)",
                "rate",
            )
        )
    if shape.planned_s < 1:
        problems.append(
            Problem(where, f"k6 runs a load of 1s or more (got {shape.planned_s:g}s)", "hold_for")
        )
    return problems


def _whole_rate(rate: float) -> int:
    return int(rate)


def _duration(seconds: float) -> str:
    milliseconds = round(seconds * 1000) if math.isfinite(seconds) else 0
    return f"{milliseconds}ms"


def execution_segments(shards: int) -> tuple[str, list[str]]:
    """k6's execution-segment sequence for `shards` equal parts, and each shard's segment:
    k6 then splits virtual users and arrival rates between them exactly."""
    bounds = ["0", *(f"{i}/{shards}" for i in range(1, shards)), "1"]
    segments = [f"{bounds[i]}:{bounds[i + 1]}" for i in range(shards)]
    return ",".join(bounds), segments
