"""How a virtual user picks its next query and makes that query's arguments.

Every choice and every value comes from a `random.Random` seeded per shard and per virtual
user, using only `random()`, whose sequence Python keeps the same for a seed across versions.
The same seed therefore gives every virtual user the same queries with the same arguments.
"""

import bisect
import itertools
import random
from collections.abc import Callable, Sequence
from itertools import accumulate

from crucible_dagster.engine.model import EngineQuery
from crucible_dagster.params import make_generator

RANDOM = "random"
SEQUENCE = "sequence"

Chooser = Callable[[], int]
Arguments = Callable[[], list[object]]


def query_chooser(
    weights: Sequence[float], mode: str, rng: random.Random, *, start: int = 0, stride: int = 1
) -> Chooser:
    """A function returning the index of the next query.

    `random` picks by weight (uniformly when all weights are equal); `sequence` walks the
    queries in order, a query of weight N appearing N times in a row, and takes every
    `stride`-th entry from `start`, so shards sharing one global order each take their part.
    """
    if mode == SEQUENCE:
        order = [index for index, weight in enumerate(weights) for _ in range(int(weight))]
        if not order:
            raise ValueError("a sequence needs a query of weight 1 or more")
        walk = itertools.islice(itertools.cycle(order), start % len(order), None, stride)
        return walk.__next__
    if not weights or max(weights) <= 0:
        raise ValueError("random choice needs a query of weight above 0")
    pick = rng.random
    n = len(weights)
    if n == 1:
        return lambda: 0
    if min(weights) == max(weights):
        return lambda: int(pick() * n)
    cumulative = list(accumulate(weights))
    total = cumulative[-1]
    last = max(index for index, weight in enumerate(weights) if weight > 0)
    find = bisect.bisect_right

    def weighted() -> int:
        # random() < 1, but the product may round up to `total`; the last weighted query
        # takes that case.
        return min(find(cumulative, pick() * total), last)

    return weighted


def argument_makers(queries: Sequence[EngineQuery], rng: random.Random) -> list[Arguments | None]:
    """Per query, a function making one execution's arguments (None for a query without
    parameters). Each parameter draws one value per execution, however often the SQL uses it."""
    return [_arguments(query, rng) for query in queries]


def _arguments(query: EngineQuery, rng: random.Random) -> Arguments | None:
    makers = tuple(make_generator(param.spec, rng, param.values) for param in query.params)
    if not makers:
        return None
    positions = query.positions
    if positions is None:
        return lambda: [make() for make in makers]

    def by_position() -> list[object]:
        values = [make() for make in makers]
        return [values[index] for index in positions]

    return by_position


def statements(
    queries: Sequence[EngineQuery], mode: str, seed: int, stream: str, count: int
) -> list[tuple[str, tuple[object, ...]]]:
    """The first `count` (query name, arguments) a stream of that seed sends; for tests and
    for explaining a run."""
    choose = query_chooser([q.weight for q in queries], mode, random.Random(f"{seed}-{stream}"))
    makers = argument_makers(queries, random.Random(f"{seed}-{stream}-params"))
    sent = []
    for _ in range(count):
        q = choose()
        make = makers[q]
        sent.append((queries[q].name, tuple(make()) if make is not None else ()))
    return sent
