"""Query choice and arguments: weights, sequences, and reproducible streams of statements."""

import random
from collections import Counter

import pytest

from crucible_dagster.engine.choice import query_chooser, statements
from crucible_dagster.engine.model import EngineParam, EngineQuery
from crucible_dagster.params import parse_param


def query(name: str, weight: float = 1.0, *params: str) -> EngineQuery:
    declared = tuple(EngineParam(*parse_param(text)) for text in params)
    return EngineQuery(name, "SELECT 1", "w.sql", 1, weight, declared)


def test_uniform_choice_picks_every_query_about_equally() -> None:
    choose = query_chooser([1, 1, 1, 1], "random", random.Random(1))

    counts = Counter(choose() for _ in range(40_000))

    assert sorted(counts) == [0, 1, 2, 3]
    assert all(abs(c / 40_000 - 0.25) < 0.01 for c in counts.values())


def test_weighted_choice_follows_the_weights_and_skips_weight_zero() -> None:
    choose = query_chooser([3, 0, 1], "random", random.Random(2))

    counts = Counter(choose() for _ in range(40_000))

    assert counts[1] == 0
    assert abs(counts[0] / 40_000 - 0.75) < 0.01
    assert abs(counts[2] / 40_000 - 0.25) < 0.01


def test_weighted_choice_never_returns_a_trailing_zero_weight() -> None:
    class AlmostOne(random.Random):
        def random(self) -> float:
            return 1.0 - 2**-53

    choose = query_chooser([1, 2, 0], "random", AlmostOne())

    assert choose() == 1


def test_sequence_runs_queries_in_order_repeating_by_weight() -> None:
    choose = query_chooser([2, 0, 1], "sequence", random.Random(0))

    assert [choose() for _ in range(7)] == [0, 0, 2, 0, 0, 2, 0]


def test_shards_of_a_sequence_take_their_part_of_one_global_order() -> None:
    weights = [1, 1, 1, 1, 1]
    global_order = [i % 5 for i in range(12)]
    shards = 3

    taken = []
    for shard in range(shards):
        choose = query_chooser(weights, "sequence", random.Random(0), start=shard, stride=shards)
        taken.append([choose() for _ in range(4)])

    assert taken == [global_order[shard::shards] for shard in range(shards)]


@pytest.mark.parametrize("mode", ["random", "sequence"])
def test_weights_that_allow_no_query_are_refused(mode: str) -> None:
    with pytest.raises(ValueError):
        query_chooser([0, 0], mode, random.Random(0))


QUERIES = [
    query("by_customer", 3, "cust {type: int, range: [1, 150000], distribution: zipfian}"),
    query(
        "by_status", 1, "status {type: choice, values: [O, F, P]}", "tag {type: string, length: 8}"
    ),
    query("count_all", 1),
]


@pytest.mark.parametrize("mode", ["random", "sequence"])
def test_the_same_seed_gives_the_same_statements(mode: str) -> None:
    first = statements(QUERIES, mode, seed=42, stream="0", count=2_000)
    again = statements(QUERIES, mode, seed=42, stream="0", count=2_000)

    assert first == again
    assert {name for name, _ in first} == {"by_customer", "by_status", "count_all"}


def test_another_seed_or_stream_gives_other_statements() -> None:
    first = statements(QUERIES, "random", seed=42, stream="0", count=200)

    assert statements(QUERIES, "random", seed=43, stream="0", count=200) != first
    assert statements(QUERIES, "random", seed=42, stream="1", count=200) != first


def test_arguments_follow_their_declarations() -> None:
    sent = statements(QUERIES, "sequence", seed=7, stream="0", count=5)

    assert [name for name, _ in sent] == [
        "by_customer",
        "by_customer",
        "by_customer",
        "by_status",
        "count_all",
    ]
    assert all(1 <= args[0] <= 150_000 for name, args in sent if name == "by_customer")
    status, tag = sent[3][1]
    assert status in {"O", "F", "P"} and isinstance(tag, str) and len(tag) == 8
    assert sent[4][1] == ()
