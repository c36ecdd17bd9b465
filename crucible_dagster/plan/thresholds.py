"""Threshold expressions of a plan, in k6 syntax: `<aggregation> <operator> <number>`.

Latency aggregations are in milliseconds over successful executions: `p(N)` (0 < N <= 100),
`avg`, `med`, `min`, `max`; `rate` is errors over finished executions, `qps` finished executions
per second of the load window, `count` finished executions, `dropped` open-model starts that
found no free VU. Operators are `<`, `<=`, `>`, `>=`, `==`, `!=`; whitespace is allowed. How a
threshold is evaluated against a result lives in `crucible_dagster.results.thresholds`.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from crucible_dagster.errors import CrucibleError

TOTAL = "total"
"""The target that means all queries together."""


AGGREGATIONS = ("p(N)", "avg", "med", "min", "max", "rate", "qps", "count", "dropped")
OPERATORS = ("<", "<=", ">", ">=", "==", "!=")
_LATENCY = frozenset({"p", "avg", "med", "min", "max"})
_PLAIN = frozenset({"avg", "med", "min", "max", "rate", "qps", "count", "dropped"})

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(rf"{_NUMBER}\Z")
_AGGREGATION_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(\s*([^)]*?)\s*\))?")
_OPERATOR_RE = re.compile(r"\s*(<=|>=|==|!=|<|>)\s*")
_PERCENTILE_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")

_EXPECTED = "expected one of " + ", ".join(AGGREGATIONS)


class ThresholdSyntaxError(CrucibleError, ValueError):
    """A threshold expression does not follow `<aggregation> <operator> <number>`."""


@dataclass(frozen=True)
class Threshold:
    """One parsed expression; `percentile` is set only for `p(N)`."""

    text: str
    aggregation: str
    operator: str
    value: float
    percentile: float | None = None

    def holds(self, observed: float) -> bool:
        return _COMPARE[self.operator](observed, self.value)

    @property
    def is_latency(self) -> bool:
        return self.aggregation in _LATENCY

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ThresholdSpec:
    """A threshold with k6's `abortOnFail` and `delayAbortEval` (in seconds)."""

    expression: Threshold
    abort_on_fail: bool = False
    delay_abort_eval_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.delay_abort_eval_s >= 0:
            raise ValueError(f"delay_abort_eval_s must be >= 0, got {self.delay_abort_eval_s}")


def parse_threshold(text: str) -> Threshold:
    """Parses `p(95)<200` and friends; raises `ThresholdSyntaxError` saying what was expected."""
    source = text.strip()
    if not source:
        raise ThresholdSyntaxError(
            "empty threshold: expected '<aggregation> <operator> <number>' such as 'p(95)<200', "
            f"with the aggregation one of {', '.join(AGGREGATIONS)}"
        )

    head = _AGGREGATION_RE.match(source)
    if head is None:
        raise ThresholdSyntaxError(
            f"threshold {source!r} does not start with an aggregation: {_EXPECTED}"
        )
    aggregation, percentile = _aggregation(source, head.group(1), head.group(2))

    rest = source[head.end() :]
    operator = _OPERATOR_RE.match(rest)
    if operator is None:
        found = f"found {rest.strip()!r}" if rest.strip() else "found nothing"
        raise ThresholdSyntaxError(
            f"threshold {source!r}: expected an operator ({', '.join(OPERATORS)}) after "
            f"{head.group(0).strip()!r}, {found}"
        )

    value_text = rest[operator.end() :].strip()
    if not _NUMBER_RE.match(value_text) or not math.isfinite(float(value_text)):
        found = f"found {value_text!r}" if value_text else "found nothing"
        unit = " (milliseconds, no unit)" if aggregation in _LATENCY else ""
        raise ThresholdSyntaxError(
            f"threshold {source!r}: expected a number{unit} after {operator.group(1)!r}, {found}"
        )
    return Threshold(source, aggregation, operator.group(1), float(value_text), percentile)


def _aggregation(source: str, name: str, argument: str | None) -> tuple[str, float | None]:
    if name == "p":
        if argument is None:
            raise ThresholdSyntaxError(
                f"threshold {source!r}: a percentile is written p(N) with 0 < N <= 100, e.g. p(95)"
            )
        if not _PERCENTILE_RE.match(argument) or not 0 < float(argument) <= 100:
            raise ThresholdSyntaxError(
                f"threshold {source!r}: invalid percentile p({argument}): expected a number "
                "greater than 0 and at most 100, e.g. p(95) or p(99.9)"
            )
        return name, float(argument)
    if name not in _PLAIN:
        shown = name if argument is None else f"{name}({argument})"
        raise ThresholdSyntaxError(f"unknown aggregation {shown!r} in {source!r}: {_EXPECTED}")
    if argument is not None:
        raise ThresholdSyntaxError(
            f"threshold {source!r}: {name!r} takes no argument; only p(N) has one"
        )
    return name, None
